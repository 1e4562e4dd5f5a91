"""Evo-Merging with another objective or another validation sample: rows of their own, never a replacement
of ``evo_merging`` (experiments/objective_diagnosis/README.md says why they exist).

    evo_merging_f1      F(x) = -F1(greedy answers on the validation batches) + λ · mean_i |x_i|
                        (evojax_merge/search/fitness_f1.py; the same records as the CE fitness)
    evo_merging_ce_all  F(x) = CE on every validation record of the cell + λ · mean_i |x_i|
                        (the paper's fitness on the whole validation split, whatever data.validation says)

The two stages, bounds, budgets and strategy are Evo-Merging's (:mod:`evojax_merge.methods.evo_merging`).

- ``fitness``: ``ce`` or ``f1``.
- ``validation``: null (the cell's own batches: ``data.validation``), or overrides of it for this row's
  search: ``batch_size``, ``num_batches`` (a number, or ``all``: every validation record of the cell, in
  batches of the largest size <= batch_size that divides their number, as ``setting.nested_subset`` does),
  ``resample`` (true: fresh batches per generation, shared by the population, as ``data.validation.resample``;
  ``candidate``: fresh batches for every candidate evaluation, the reference code's protocol:
  :class:`CandidateBatches`), ``seed``.

``val_ce`` is always the result's CE on the cell's own batches (so the table's CE column compares across
rows); ``val_fitness`` is what this search minimised; with ``fitness: f1``, ``val_f1`` is the result's F1 on
its search records. The row generates or encodes in this process, so it needs the pool's weights and the
model (no merge service), and ``f1`` a cell of one task (its metric scores the answers).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.methods.base import LORA_POOL, POOL_WEIGHTS, MergeTask, Outcome
from evojax_merge.methods.evo_merging import EvoMerging, search_record
from evojax_merge.search.evo_merging import evo_merging_search
from evojax_merge.search.fitness import MergeEvaluator, ValidationConfig, population_ce
from evojax_merge.search.fitness_f1 import F1Evaluator

FITNESSES = ("ce", "f1")
VALIDATION_KEYS = ("batch_size", "num_batches", "resample", "seed")


class CandidateBatches:
    """Every candidate evaluation on batches of its own (the reference code's ``core/evaluator.py``: shuffled
    batches drawn from the whole validation set for each evaluation), over an in-process ``MergeEvaluator``.

    Candidate ``p`` of generation ``g`` draws ``inner._draw_index`` from ``default_rng((seed, g, p, crc32 of its
    genome))``: a fresh draw for every evaluation (also across stages, whose genomes differ), yet a
    deterministic function of the search state, so a resumed search draws the same batches. One compiled
    call per candidate (the population's shape is 1), each with its own ``[num_batches, batch_size]`` index.
    """

    def __init__(self, inner: MergeEvaluator):
        self.inner = inner
        self.num_adapters = inner.num_adapters
        self.num_batches, self.batch_size, self.num_examples = inner.num_batches, inner.batch_size, inner.num_examples
        self.validation = inner.validation
        self.evaluations = 0

    def index(self, alpha: np.ndarray, beta: np.ndarray, generation: int, p: int) -> np.ndarray:
        crc = zlib.crc32(np.asarray(alpha, np.float32).tobytes() + np.asarray(beta, np.float32).tobytes())
        return self.inner._draw_index(np.random.default_rng((self.validation.seed, int(generation), int(p), crc)))

    def evaluate(self, alpha, beta, generation: int = 0) -> np.ndarray:
        alpha, beta = np.asarray(alpha, np.float32), np.asarray(beta, np.float32)
        out = np.empty(alpha.shape[0], np.float32)
        for p in range(alpha.shape[0]):
            index = self.index(alpha[p], beta[p], generation, p)
            out[p] = np.asarray(population_ce(self.inner.ce_fn, self.inner.ce_args, jnp.asarray(alpha[p:p + 1]),
                                              jnp.asarray(beta[p:p + 1]), jnp.asarray(index)))[0]
        self.evaluations += alpha.shape[0]
        return out


class EvoMergingObjective(EvoMerging):
    remote = False
    requires = frozenset({LORA_POOL, POOL_WEIGHTS})

    def __init__(self, fitness: str = "ce", validation: Mapping | None = None, max_len: int | None = None,
                 max_new_tokens: int = 48, generation_chunk: int = 16, **kw):
        super().__init__(**kw)
        if fitness not in FITNESSES:
            raise EvoMergeInputError(f"fitness: {fitness!r} is not one of {', '.join(FITNESSES)}")
        if max_new_tokens < 1 or generation_chunk < 1:
            raise EvoMergeInputError("max_new_tokens and generation_chunk must be >= 1")
        validation = dict(validation or {})
        unknown = sorted(set(validation) - set(VALIDATION_KEYS))
        if unknown:
            raise EvoMergeInputError(f"validation.{unknown[0]}: unknown key (known: {', '.join(VALIDATION_KEYS)})")
        nb = validation.get("num_batches")
        if nb is not None and nb != "all" and not (isinstance(nb, int) and nb >= 1):
            raise EvoMergeInputError(f"validation.num_batches: {nb!r} is not a positive integer or 'all'")
        if int(validation.get("batch_size", 1)) < 1:
            raise EvoMergeInputError("validation.batch_size must be >= 1")
        if validation.get("resample", False) not in (True, False, "candidate"):
            raise EvoMergeInputError(f"validation.resample: {validation['resample']!r} is not true, false or candidate")
        if fitness == "f1" and validation.get("resample") == "candidate":
            raise EvoMergeInputError("validation.resample: candidate draws are for the CE fitness (the F1 fitness "
                                     "scores a generation's candidates on shared batches)")
        self.fitness, self.validation = fitness, validation
        self.max_len = None if max_len is None else int(max_len)
        self.max_new_tokens, self.generation_chunk = int(max_new_tokens), int(generation_chunk)

    def describe(self) -> dict:
        return {**super().describe(), "fitness": self.fitness, "validation": self.validation,
                "max_len": self.max_len, "max_new_tokens": self.max_new_tokens}

    def _world(self, task: MergeTask):
        world = task.world
        if world is None or not hasattr(world, "model") or task.stack is None or task.val_records is None:
            raise EvoMergeInputError(f"{self.fitness} fitness on its own validation sample: needs the world's model, "
                                     "pool and validation records in this process (an in-process world)")
        return world

    def search_evaluator(self, task: MergeTask):
        """``(CE evaluator the search uses, its records in its order)``: the cell's, or one over ``validation``."""
        cell = task.evaluator_for(self.prune)
        if not self.validation:
            return cell, task.val_records
        from evojax_merge.data.batching import encode_records

        world = self._world(task)
        base = getattr(cell, "validation", ValidationConfig())
        per_candidate = self.validation.get("resample") == "candidate"
        val = dataclasses.replace(base, **{k: v for k, v in self.validation.items() if k != "num_batches"})
        if per_candidate:
            val = dataclasses.replace(val, resample=False)
        records = list(task.val_records)
        if self.validation.get("num_batches") == "all":  # setting.nested_subset at the whole set (no import:
            n = len(records)                                # setting is this layer's sibling)
            records = [records[i] for i in np.random.default_rng(val.seed).permutation(n)]
            size = max(d for d in range(1, min(val.batch_size, n) + 1) if n % d == 0)
            val = dataclasses.replace(val, batch_size=size, num_batches=n // size)
        elif self.validation.get("num_batches") is not None:
            val = dataclasses.replace(val, num_batches=int(self.validation["num_batches"]))
        enc = encode_records(records, world.tokenizer, self.max_len, **world.encoding(task.target, "validation"))
        evaluator = MergeEvaluator(world.model, task.stack, enc.arrays, val, prune=self.prune,
                                   population_chunk=getattr(cell, "population_chunk", "auto"))
        return (CandidateBatches(evaluator) if per_candidate else evaluator), records

    def run(self, task: MergeTask) -> Outcome:
        search_ce, records = self.search_evaluator(task)
        evaluator = search_ce
        if self.fitness == "f1":
            world = self._world(task)
            if task.target not in getattr(world, "task_types", {}):
                raise EvoMergeInputError(f"f1 fitness: cell {task.target!r} is not one task (a multi-task cell has "
                                         "no one metric to score its answers)")
            evaluator = F1Evaluator(search_ce, world.model, world.tokenizer, records, world.task_type(task.target),
                                    self.max_len, self.max_new_tokens,
                                    world.encoding(task.target, "validation", training=False), self.generation_chunk)
        result = evo_merging_search(evaluator, task.stack, self.config, seed=task.seed, prune=self.prune,
                                    runner=task.runner)
        cell = task.evaluator_for(self.prune)
        ce = float(cell.evaluate(result.alpha[None], result.beta[None])[0])
        details = {**search_record(result), "fitness": self.fitness}
        per_candidate = int(search_ce.num_batches * search_ce.batch_size)
        if search_ce is not cell:  # the engine counts only the cell's evaluator: count this row's search here
            resample = "candidate" if isinstance(search_ce, CandidateBatches) else search_ce.validation.resample
            details["validation"] = {"batch_size": search_ce.batch_size, "num_batches": search_ce.num_batches,
                                     "resample": resample, "seed": search_ce.validation.seed,
                                     "records": per_candidate}
        evaluations = sum(1 + self.config.population_size * len(s.history) for s in result.stages)
        if self.fitness == "f1":
            details["val_f1"] = float(evaluator.f1(result.alpha[None], result.beta[None])[0])
            details["generated_examples"] = evaluator.generated  # generated in this process (not before a resume)
            details["forward_examples"] = evaluator.generated + int(cell.num_batches * cell.batch_size)
        else:
            details["forward_examples"] = evaluations * per_candidate + int(cell.num_batches * cell.batch_size)
        details["backward_examples"] = 0
        return Outcome("evo_merging", adapter=result.adapter, genome=(result.alpha, result.beta), prune=self.prune,
                       val_ce=ce, val_fitness=result.best_fitness, details=details, search=result)
