"""The one experiment loop: world seeds x search seeds x a setting's cells x methods, for every world
and every method family, under one run contract (``runner/run_dir.py``).

    for world_seed in experiment.world_seeds:        (the world's own seed when empty)
      backend = world.with_seed(world_seed).open()   (built or reused from the cache)
      for seed in experiment.seeds:                  (``seed`` when empty)
        for cell in setting.cells(backend, seed):
          for method in methods:                     (its CMA-ES stages or training loop checkpointed)
            outcome = method.run(MergeTask(cell))
          score every outcome on the cell's test sets

Each (world seed, seed) writes a run directory of its own; with one of each it is the run's own
directory. Every evaluator is wrapped to count the examples it forwards (and methods that train report
their backward passes), so gradient and black-box methods share one cost axis.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping

import jax
import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.eval.predictions import write_predictions
from evojax_merge.hostmem import peak_rss_gb, release_freed_memory
from evojax_merge.methods.base import MergeMethod, MergeTask, Outcome
from evojax_merge.search.fitness import ValidationConfig
from evojax_merge.setting.cells import CellPlan, Setting

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExperimentSpec:
    """The ``experiment`` block: its name, the replicates, and how test answers are generated."""

    name: str = "default"
    seeds: tuple[int, ...] = ()  # search seeds in this job; empty: the root ``seed``
    world_seeds: tuple[int, ...] = ()  # world realizations; empty: the world's configured seed
    test_examples: int = 100
    max_len: int | None = None  # None: what the data needs, up to data.max_len_cap
    max_new_tokens: int = 48
    test_batch_size: int | None = None  # test prompts per generation call, by length (None: all at once)
    # drop every compiled program after each method (jax.clear_caches): on a CPU each one keeps about 0.25 GB
    # resident on SmolLM2, so a 10-row unit grows by gigabytes; later methods compile again (or load them from
    # JAX's persistent cache). The results are the same.
    clear_compiled: bool = False


class CountingEvaluator:
    """An evaluator that counts the examples it forwards (explicit calls; traced stages are added apart)."""

    def __init__(self, inner):
        self._inner = inner
        self.examples = 0

    @property
    def per_candidate(self) -> int:
        return int(getattr(self._inner, "num_batches", 0) * getattr(self._inner, "batch_size", 0))

    def evaluate(self, alpha, beta, generation: int = 0):
        self.examples += int(np.asarray(alpha).shape[0]) * self.per_candidate
        return self._inner.evaluate(alpha, beta, generation)

    def evaluate_dense(self, delta, adapter=None, generation: int = 0):
        self.examples += self.per_candidate
        return self._inner.evaluate_dense(delta, adapter, generation)

    def evaluate_adapter(self, adapter, generation: int = 0):
        self.examples += self.per_candidate
        return self._inner.evaluate_adapter(adapter, generation)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def traced_examples(outcome: Outcome, per_candidate: int, population: int) -> int:
    """Examples forwarded inside traced CMA-ES stages: (x0 + population x generations) per stage."""
    stages = getattr(outcome.search, "stages", None)
    if outcome.search is None or not population or stages is None:
        return 0
    return sum((1 + population * len(st.history)) * per_candidate for st in stages)


def check_methods(methods: Mapping[str, MergeMethod], provides: frozenset[str], world_kind: str) -> None:
    """A method the world cannot serve is a one-line error before anything is built, never a silent skip."""
    for label, method in methods.items():
        missing = method.missing(provides)
        if missing:
            raise EvoMergeInputError(
                f"method.{label}: needs {', '.join(sorted(missing))}, which world {world_kind!r} does not provide "
                f"(it provides {', '.join(sorted(provides)) or 'nothing'})")


def _cell_result(backend, plan: CellPlan, pool_names, task: str, label: str, outcome: Outcome,
                 test: list[dict], answers: list[str], predictions_dir) -> dict:
    """One method's scores on one task's test set, with what its merge was and how it was found."""
    s = backend.score(task, answers, test)
    if predictions_dir is not None:
        write_predictions(predictions_dir, task, label, test, answers, backend.task_type(task))
    result = {**s, "val_ce": outcome.val_ce, "val_fitness": outcome.val_fitness, "pool_size": len(plan.pool_idx),
              "prompt": backend.prompt_stats(plan.target, task), **outcome.details}
    if plan.tasks:
        result["merged_for"] = list(plan.tasks)  # one multi-task merge, scored on each of these
    result["wall_s"] = outcome.details.get("search_s")
    history = outcome.details.get("history")
    if history and "coefficients" in outcome.details:  # a gradient method's loss curve
        result.setdefault("train_history", history)
    elif history and "stages" not in result:  # one CMA-ES stage's curve (Sakana PS / DFS) for the report
        stages = {"ps": {"history": outcome.details["ps_history"]}} if outcome.details.get("ps_history") else {}
        stages["dfs" if "path" in outcome.details else "cmaes"] = {"history": history}
        result["stages"] = stages
    if outcome.genome is not None:
        result.setdefault("alpha", np.asarray(outcome.genome[0]).tolist())
        result.setdefault("beta", np.asarray(outcome.genome[1]).tolist())
        result.setdefault("adapters", list(pool_names))  # what each genome entry weighs
    log.info("%-28s %-18s F1 %.2f (val CE %s)", label, task, 100 * s["f1"],  # x100, as in the tables
             "n/a" if outcome.val_ce is None else f"{outcome.val_ce:.4f}")
    return result


def run_cells(
    backend,
    setting: Setting,
    methods: Mapping[str, MergeMethod],
    validation: ValidationConfig,
    spec: ExperimentSpec,
    seed: int,
    runner_for: Callable[[str], object] | None = None,
    on_result: Callable[[CellPlan, str, Outcome], None] | None = None,
    progress: bool = True,
    predictions_dir=None,
) -> dict:
    """Every method on every cell of ``setting``; ``{"methods": {label: {precision, recall, f1, per_task}}}``."""
    from evojax_merge.logs import progress_iter

    if backend.remote:
        white_box = [label for label, m in methods.items() if not m.remote]
        if white_box:
            raise EvoMergeInputError(f"method.{white_box[0]}: needs the pool's weights; a remote world cannot "
                                     f"run it (white-box: {', '.join(white_box)})")
    plans = setting.cells(backend, seed)
    scored = {t for p in plans for t in p.scored_tasks}
    backend.check(scored, spec.max_len, spec.test_examples)  # splits exist and fit, up front
    if spec.test_batch_size is not None:
        if int(spec.test_batch_size) < 1:
            raise EvoMergeInputError(f"experiment.test_batch_size: {spec.test_batch_size} < 1")
        backend.test_batch_size = int(spec.test_batch_size)  # read by LocalBackend.answers
    log.info("%s: %d cells x %d methods over %d targets", spec.name, len(plans), len(methods), len(scored))
    results: dict[str, dict] = {}
    memory: dict[str, float] = {"start": round(peak_rss_gb(), 3)}  # the peak RSS (GB) after each phase, in order
    # With test_batch_size every outcome generates alone (the same answers whenever it runs), so each one
    # answers right after its search and a dense merge's delta (a copy of the merged weights) is then freed,
    # instead of every row's delta waiting in memory for the test at the end.
    answer_each = spec.test_batch_size is not None
    for plan in plans:
        val_records, val = setting.validation(backend, plan, validation)
        cell = backend.open_cell(plan.target, plan.pool_idx, val_records, val, spec.max_len)
        counters: dict[str, CountingEvaluator] = {}

        def evaluator_for(prune: str, cell=cell, counters=counters):
            if prune not in counters:
                counters[prune] = CountingEvaluator(cell.evaluator_for(prune))
            return counters[prune]

        try:
            task = MergeTask(target=plan.target, pool_names=cell.pool_names, evaluator_for=evaluator_for,
                             stack=cell.stack, world=getattr(backend, "world", None), sources=cell.sources,
                             seed=seed, progress=progress, val_records=val_records)
            outcomes, labels = [], []
            tests = {t: backend.records[t]["test"][: spec.test_examples] for t in plan.scored_tasks}
            texts: dict[str, list] = {t: [] for t in tests}
            for label, method in progress_iter(methods.items(), f"{plan.target}: methods", progress):
                full = label + plan.suffix
                task.runner = runner_for(f"{plan.target}/{full}") if (runner_for and method.searches) else None
                before = {k: c.examples for k, c in counters.items()}
                t0 = time.perf_counter()
                try:
                    outcome = method.run(task)
                finally:
                    if hasattr(task.runner, "close"):
                        task.runner.close()
                outcome.method = full
                # + the seconds earlier (preempted) segments of this search ran, saved in its checkpoints
                outcome.details["search_s"] = time.perf_counter() - t0 + getattr(task.runner, "prior_elapsed_s", 0.0)
                if "forward_examples" not in outcome.details:  # a method that counts its own passes keeps them
                    counted = sum(c.examples - before.get(k, 0) for k, c in counters.items())
                    per_candidate = max((c.per_candidate for c in counters.values()), default=0)
                    population = getattr(getattr(method, "config", None), "population_size", 0)
                    outcome.details["forward_examples"] = counted + traced_examples(outcome, per_candidate, population)
                    outcome.details.setdefault("backward_examples", 0)
                outcomes.append(outcome)
                labels.append(full)
                log.info("%-28s %-18s searched in %.0f s (val CE %s)", full, plan.target, outcome.details["search_s"],
                         "n/a" if outcome.val_ce is None else f"{outcome.val_ce:.4f}")  # one line per phase in logs
                if answer_each:
                    for t, test in tests.items():
                        texts[t] += backend.answers(cell, [outcome], test, spec.max_len, task=t)
                    outcome.delta = None
                if spec.clear_compiled:
                    jax.clear_caches()
                release_freed_memory()  # the search's freed XLA buffers back to the OS (evojax_merge.hostmem)
                memory[f"{plan.target}{plan.suffix}/{full}"] = round(peak_rss_gb(), 3)
            if not answer_each:
                texts = {t: backend.answers(cell, outcomes, test, spec.max_len, task=t) for t, test in tests.items()}
                memory[f"{plan.target}{plan.suffix}/test generation"] = round(peak_rss_gb(), 3)
        finally:
            cell.close()
        for i, (label, outcome) in enumerate(zip(labels, outcomes, strict=True)):
            for t, test in tests.items():
                results.setdefault(label, {"per_task": {}})["per_task"][t] = _cell_result(
                    backend, plan, cell.pool_names, t, label, outcome, test, texts[t][i], predictions_dir)
            if on_result is not None:
                on_result(plan, label, outcome)
    for res in results.values():
        cells = list(res["per_task"].values())
        for key in ("precision", "recall", "f1"):
            res[key] = float(np.mean([c[key] for c in cells]))
    log.info("peak RSS %.2f GB (after each phase: %s)", peak_rss_gb(),
             ", ".join(f"{k} {v:.2f}" for k, v in memory.items()))
    return {"methods": results, "memory": {"peak_rss_gb": round(peak_rss_gb(), 3), "after": memory}}
