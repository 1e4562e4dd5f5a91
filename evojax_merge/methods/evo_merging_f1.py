"""Evo-Merging searched on the generated answers' F1 instead of the validation CE: its own row
(``conf/method/evo_merging_f1.yaml``, label ``evo_merging_f1``), never a replacement of ``evo_merging``.

    F(x) = -F1(greedy answers of base + merge(pool, alpha, beta) on the validation batches) + λ · mean_i |x_i|

The two stages, bounds, budgets, strategy and validation records are Evo-Merging's
(:mod:`evojax_merge.methods.evo_merging`); only the objective changes (:mod:`evojax_merge.search.fitness_f1`).
Why: on the default IE world the CE searches reach the lowest validation CE of every row but not the best
test F1 (experiments/objective_diagnosis/README.md). ``val_ce`` is still the result's CE on the same records
(so the table's CE column compares across rows); ``val_fitness`` is what this search minimised, and
``val_f1`` the result's F1 on its validation records.

It generates in this process, so it needs the pool's weights and the model (no merge service), and a cell
with one target task (its metric scores the answers).
"""

from __future__ import annotations

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.methods.base import LORA_POOL, POOL_WEIGHTS, MergeTask, Outcome
from evojax_merge.methods.evo_merging import EvoMerging, search_record
from evojax_merge.search.evo_merging import evo_merging_search
from evojax_merge.search.fitness_f1 import F1Evaluator


class EvoMergingF1(EvoMerging):
    remote = False
    requires = frozenset({LORA_POOL, POOL_WEIGHTS})

    def __init__(self, max_len: int | None = None, max_new_tokens: int = 48, generation_chunk: int = 16, **kw):
        super().__init__(**kw)
        if max_new_tokens < 1 or generation_chunk < 1:
            raise EvoMergeInputError("max_new_tokens and generation_chunk must be >= 1")
        self.max_len = None if max_len is None else int(max_len)
        self.max_new_tokens, self.generation_chunk = int(max_new_tokens), int(generation_chunk)

    def describe(self) -> dict:
        return {**super().describe(), "fitness": "-f1", "max_len": self.max_len,
                "max_new_tokens": self.max_new_tokens}

    def f1_evaluator(self, task: MergeTask) -> F1Evaluator:
        world = task.world
        if world is None or not hasattr(world, "model"):
            raise EvoMergeInputError("evo_merging_f1: needs the world's model in this process (an in-process world)")
        if task.target not in getattr(world, "task_types", {}):
            raise EvoMergeInputError(f"evo_merging_f1: cell {task.target!r} is not one task (a multi-task cell "
                                     "has no one metric to score its answers)")
        return F1Evaluator(task.evaluator_for(self.prune), world.model, world.tokenizer, task.val_records,
                           world.task_type(task.target), self.max_len, self.max_new_tokens,
                           world.encoding(task.target, "validation", training=False), self.generation_chunk)

    def run(self, task: MergeTask) -> Outcome:
        f1_eval = self.f1_evaluator(task)
        result = evo_merging_search(f1_eval, task.stack, self.config, seed=task.seed, prune=self.prune,
                                    runner=task.runner)
        ce_eval = task.evaluator_for(self.prune)
        ce = float(ce_eval.evaluate(result.alpha[None], result.beta[None])[0])
        val_f1 = float(f1_eval.f1(result.alpha[None], result.beta[None])[0])
        per_candidate = int(getattr(ce_eval, "num_batches", 0) * getattr(ce_eval, "batch_size", 0))
        details = {**search_record(result), "fitness": "-f1", "val_f1": val_f1,
                   "generated_examples": f1_eval.generated, "forward_examples": f1_eval.generated + per_candidate,
                   "backward_examples": 0}
        return Outcome("evo_merging_f1", adapter=result.adapter, genome=(result.alpha, result.beta),
                       prune=self.prune, val_ce=ce, val_fitness=result.best_fitness, details=details, search=result)
