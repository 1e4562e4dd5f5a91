"""A fitness by the metric the tables report: the F1 of greedily generated answers on validation records.

    fitness(alpha, beta) = -F1(generate(base + merge(pool, alpha, beta), records[index]), gold)

The search adds its own penalty on top (``stage_fitness``: ``+ λ · mean_i |x_i|``), so a stage minimises
``-F1 + λ · mean|x|``. ``F1`` is the task's declared metric (:func:`evojax_merge.eval.evaluate.score`:
micro P/R/F1 over the extracted items, or exact match), over the same records, in the same batches, that
the CE evaluator it wraps scores: ``ce_evaluator.batch_index(generation)`` (a fixed seeded subset, or
fresh batches per generation with ``data.validation.resample=true``). Only the objective differs from the
CE fitness, never the records.

Answers are generated as the test answers are (:func:`evojax_merge.eval.evaluate.generate_for_population`:
greedy, KV cache, one vmapped call per ``chunk`` candidates), so a candidate's fitness is minus exactly the
F1 it would score on those records as a test set. Generating is far dearer than one CE forward (every
answer token is a decode step), which is why this is an option (``conf/method/evo_merging_f1.yaml``) and
not the default. It needs the model in this process (no merge service).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.eval.evaluate import generate_for_population, score
from evojax_merge.merge import evo_merge
from evojax_merge.search.genome import check_alpha_beta


class F1Evaluator:
    """An :class:`~evojax_merge.search.fitness.Evaluator` whose "loss" is minus the generated answers' F1.

    Args:
      ce_evaluator: the cell's CE evaluator (a ``MergeEvaluator``): its stack, sorted magnitudes, prune
        mode and batches (``batch_index``) are reused, so both fitnesses see the same records.
      model, tokenizer: the world's base model and tokenizer.
      records: the validation records the CE evaluator encoded, in its order (``MergeTask.val_records``).
      task_type: the task's declared type (``ner``, ``et``, ..., ``exact``).
      max_len, max_new_tokens, gen_kw: as the test answers are generated (``World.encoding(task, "test",
        training=False)`` for ``gen_kw``).
      chunk: candidates generated in one vmapped call.
      generate: the generator (tests inject a fake one); the project's ``generate_for_population`` by default.
    """

    def __init__(self, ce_evaluator, model, tokenizer, records: Sequence[Mapping], task_type: str,
                 max_len: int | None = None, max_new_tokens: int = 48, gen_kw: Mapping | None = None,
                 chunk: int = 16, generate: Callable = generate_for_population):
        if len(records) != int(getattr(ce_evaluator, "num_examples", len(records))):
            raise EvoMergeInputError(f"F1 fitness: {len(records)} records, but the CE evaluator holds "
                                     f"{ce_evaluator.num_examples} examples")
        for attr in ("stack", "magnitudes", "prune", "batch_index"):
            if not hasattr(ce_evaluator, attr):
                raise EvoMergeInputError(f"F1 fitness: needs an in-process CE evaluator (it has no {attr!r}); "
                                         "a merge service cannot score generated answers")
        self.ce = ce_evaluator
        self.model, self.tokenizer = model, tokenizer
        self.records = list(records)
        self.task_type = task_type
        self.max_len, self.max_new_tokens = max_len, int(max_new_tokens)
        self.gen_kw = dict(gen_kw or {})
        self.chunk = int(chunk)
        self.generate = generate
        self.num_adapters = ce_evaluator.num_adapters
        self.generated = 0  # answers generated so far (the cost axis: one per record per candidate)

    def records_at(self, generation: int = 0) -> list[Mapping]:
        """The records generation ``generation`` scores: the CE evaluator's batches, flattened."""
        return [self.records[i] for i in np.asarray(self.ce.batch_index(generation)).reshape(-1)]

    def f1(self, alpha, beta, generation: int = 0) -> np.ndarray:
        """``[P]`` F1 (in [0, 1]) of each candidate's greedy answers on this generation's records."""
        alpha, beta = check_alpha_beta(alpha, beta, self.num_adapters)
        prune = self.ce.prune
        adapters = jax.vmap(lambda a, b: evo_merge(self.ce.stack, self.ce.magnitudes, a, b, prune=prune))(
            alpha, beta)
        recs = self.records_at(generation)
        answers = self.generate(self.model, self.tokenizer, adapters, recs, self.max_len, self.max_new_tokens,
                                chunk=self.chunk, **self.gen_kw)
        self.generated += len(recs) * alpha.shape[0]
        return np.asarray([score(a, recs, self.task_type)["f1"] for a in answers], np.float32)

    def evaluate(self, alpha, beta, generation: int = 0) -> np.ndarray:
        """``[P]``: minus the F1 (what the search minimises, before its L1 penalty)."""
        return -self.f1(alpha, beta, generation)
