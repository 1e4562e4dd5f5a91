"""Experiments: which (target, pool, validation set) cells to make, every method on each, and their
test scores as one table. One engine for local and remote runs: the backend decides where.

    ood          for each target task: the full pool minus the target's own adapter
    id           a few experts (<= 10), the pool: one multi-task merge found on the experts' pooled
                 validation records and scored on each expert's test set (``multitask: false``: one
                 merge per expert, on its own validation set)
    distractors  id plus unrelated adapters in the pool: ``num_distractors`` random ones, or the adapters
                 of ``distractor_kinds`` (an IE world's ``distractor`` / ``anti`` adapters)
    pool_size    ood with random pools of N adapters, for each N (null: the whole OOD pool)
    val_size     ood with V validation examples, for each V (null: all of the target's validation records)

The methods are the registry's (``conf/method/``); a variant such as an ablation is one more method.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.eval.evaluate import score
from evojax_merge.eval.predictions import write_predictions
from evojax_merge.methods.base import MergeMethod, MergeTask, Outcome
from evojax_merge.search.fitness import ValidationConfig

log = logging.getLogger(__name__)
SETTINGS = ("ood", "id", "distractors")


@dataclasses.dataclass(frozen=True)
class ExperimentSpec:
    name: str = "ood"
    setting: str = "ood"
    targets: tuple[str, ...] = ()
    num_targets: int = 6  # when targets is empty: spread over task types and domains
    experts: tuple[str, ...] = ()
    num_distractors: int = 0  # with distractor_kinds: 0 = every adapter of those kinds
    distractor_kinds: tuple[str, ...] = ()  # distractors: the adapters of these kinds, not random ones
    multitask: bool = True  # id / distractors: one merge on the experts' pooled validation records
    pool_sizes: tuple[int | None, ...] = ()  # pool_size experiment; empty or None = the whole OOD pool
    val_sizes: tuple[int | None, ...] = ()  # val_size experiment; empty = validation.num_batches x batch_size;
    # None = every validation record of the target
    test_examples: int = 100
    max_len: int | None = None  # None: what the data needs, up to data.max_len_cap
    max_new_tokens: int = 48
    seed: int = 0


@dataclasses.dataclass
class Run:
    """One cell of the experiment: a target, its pool (indices into the backend's adapters), and the
    validation size; every method runs on it. ``suffix`` tells cells of one target apart. A multi-task
    cell names its ``tasks``: their validation records are pooled and each one's test set is scored;
    ``target`` is then the cell's label (the setting's name)."""

    target: str
    pool_idx: list[int]
    num_val: int | None = None
    suffix: str = ""
    tasks: tuple[str, ...] = ()

    @property
    def scored_tasks(self) -> tuple[str, ...]:
        return self.tasks or (self.target,)


def pick_targets(task_names, spec: ExperimentSpec) -> list[str]:
    """Named targets, or ``num_targets`` tasks spread over task types and domains."""
    tasks = sorted(task_names)
    if spec.targets:
        unknown = [t for t in spec.targets if t not in tasks]
        if unknown:
            raise EvoMergeInputError(f"experiment.targets: unknown task {unknown[0]!r}")
        return list(spec.targets)
    by_type: dict[str, list[str]] = {}
    for t in tasks:
        by_type.setdefault(t.split("_", 1)[0], []).append(t)
    types = sorted(by_type)
    picked = []
    for i in range(min(spec.num_targets, len(tasks))):
        candidates = by_type[types[i % len(types)]]
        picked.append(candidates[(i // len(types) + 3 * i) % len(candidates)])
    return list(dict.fromkeys(picked))


def plan_runs(backend, spec: ExperimentSpec) -> list[Run]:
    """The cells of ``spec`` over the backend's adapters and tasks."""
    if spec.setting not in SETTINGS:
        raise EvoMergeInputError(f"experiment.setting: {spec.setting!r} is not one of {', '.join(SETTINGS)}")
    names = backend.names
    rng = np.random.default_rng(spec.seed)
    runs: list[Run] = []
    if spec.setting == "ood":
        for target in pick_targets(backend.records, spec):
            own = backend.own_adapter(target)
            ood_idx = [i for i, n in enumerate(names) if n != own]
            sizes = [len(ood_idx) if n is None else n for n in spec.pool_sizes] or [len(ood_idx)]
            for size in dict.fromkeys(sizes):
                if size < 1:
                    raise EvoMergeInputError(f"experiment.pool_sizes: {size} < 1")
                if size > len(ood_idx):
                    raise EvoMergeInputError(f"experiment.pool_sizes: {size} > the {len(ood_idx)} OOD adapters")
                idx = sorted(rng.choice(ood_idx, size, replace=False).tolist()) if size < len(ood_idx) else ood_idx
                num_val = len(backend.records[target]["validation"])
                for v in dict.fromkeys(num_val if v is None else v for v in spec.val_sizes) or (None,):
                    suffix = (f"@N={size}" if spec.pool_sizes else "") + (f"@V={v}" if v is not None else "")
                    runs.append(Run(target, idx, v, suffix))
        return runs
    experts = list(spec.experts)
    if not experts or len(experts) > 10:
        raise EvoMergeInputError(f"experiment.experts: the {spec.setting} setting needs 1 to 10 experts")
    missing = [t for t in experts if (backend.own_adapter(t) or t) not in names]
    if missing:
        raise EvoMergeInputError(f"experiment.experts: no adapter for task {missing[0]!r}")
    idx = [names.index(backend.own_adapter(t) or t) for t in experts]
    others = [i for i in range(len(names)) if i not in idx]
    if spec.distractor_kinds:
        idx += distractors_of_kinds(names, getattr(backend, "adapter_kinds", {}), others, spec, rng)
    elif spec.num_distractors:
        idx += sorted(rng.choice(others, spec.num_distractors, replace=False).tolist())
    if spec.multitask:
        return [Run(spec.setting, idx, tasks=tuple(experts))]
    return [Run(target, idx) for target in experts]


def distractors_of_kinds(names, kinds: dict[str, str], candidates: list[int], spec: ExperimentSpec,
                         rng: np.random.Generator) -> list[int]:
    """The interference adapters of ``spec.distractor_kinds`` among ``candidates`` (indices into ``names``):
    all of them, or ``num_distractors`` drawn at random."""
    if not kinds:
        raise EvoMergeInputError("experiment.distractor_kinds: the pool's adapters have no kinds (an IE zoo, "
                                 "zoo.kind=ie, has them; a merge service's come from service.adapter_kinds)")
    picked = [i for i in candidates if kinds.get(names[i]) in spec.distractor_kinds]
    if not picked:
        raise EvoMergeInputError(f"experiment.distractor_kinds: no adapter of kind {', '.join(spec.distractor_kinds)} "
                                 f"outside the experts (kinds: {', '.join(sorted(set(kinds.values())))})")
    if spec.num_distractors > len(picked):
        raise EvoMergeInputError(f"experiment.num_distractors: {spec.num_distractors} > the {len(picked)} adapters "
                                 f"of kind {', '.join(spec.distractor_kinds)}")
    if spec.num_distractors:
        return sorted(rng.choice(picked, spec.num_distractors, replace=False).tolist())
    return picked


def check_methods(methods: dict[str, MergeMethod], remote: bool) -> None:
    """A method a backend cannot honour is an error before anything runs, never a silent skip."""
    if remote:
        white_box = [label for label, m in methods.items() if not m.remote]
        if white_box:
            raise EvoMergeInputError(f"method.{white_box[0]}: needs the pool's weights; a remote run "
                                     f"(service=remote) cannot run it (white-box: {', '.join(white_box)})")


def pooled_records(per_task: list[list[dict]], limit: int | None = None) -> list[dict]:
    """The tasks' records interleaved (first of each task, then the second of each, ...), up to ``limit``:
    any prefix holds every task in equal shares, as far as each has records."""
    longest = max((len(r) for r in per_task), default=0)
    pooled = [records[i] for i in range(longest) for records in per_task if i < len(records)]
    return pooled[:limit] if limit is not None else pooled


def _validation_records(backend, r: Run, val: ValidationConfig) -> tuple[list[dict], ValidationConfig]:
    if r.tasks:  # a multi-task merge: the validation budget split evenly over its tasks
        return pooled_records([backend.records[t]["validation"] for t in r.tasks],
                              val.batch_size * val.num_batches), val
    target, num_val = r.target, r.num_val
    records = backend.records[target]["validation"]
    if num_val is not None:
        if num_val > len(records):
            raise EvoMergeInputError(f"experiment.val_sizes: {num_val} > {len(records)} validation records of {target}")
        records = records[:num_val]
        val = dataclasses.replace(val, num_batches=max(1, num_val // val.batch_size))
    return records, val


def _cell_result(backend, r: Run, cell, task: str, label: str, outcome: Outcome, test: list[dict],
                 answers: list[str], predictions_dir) -> dict:
    """One method's scores on one task's test set, with what its merge was and how it was found."""
    s = score(answers, test, backend.task_type(task))
    if predictions_dir is not None:
        write_predictions(predictions_dir, task, label, test, answers, backend.task_type(task))
    result = {**s, "val_ce": outcome.val_ce, "val_fitness": outcome.val_fitness, "pool_size": len(r.pool_idx),
              "prompt": backend.prompt_stats(r.target), **outcome.details}
    if r.tasks:
        result["merged_for"] = list(r.tasks)  # one multi-task merge, scored on each of these
    if outcome.genome is not None:
        result.setdefault("alpha", np.asarray(outcome.genome[0]).tolist())
        result.setdefault("beta", np.asarray(outcome.genome[1]).tolist())
        result.setdefault("adapters", list(cell.pool_names))  # what each genome entry weighs
    log.info("%-28s %-18s F1 %.3f (val CE %s)", label, task, s["f1"],
             "n/a" if outcome.val_ce is None else f"{outcome.val_ce:.4f}")
    return result


def run_experiment(
    backend,
    spec: ExperimentSpec,
    methods: dict[str, MergeMethod],
    validation: ValidationConfig,
    runner_for: Callable[[str], object] | None = None,
    on_result: Callable[[Run, str, Outcome, dict], None] | None = None,
    progress: bool = True,
    predictions_dir=None,
) -> dict:
    """Every method on every planned cell; returns ``{"methods": {label: {precision, recall, f1, per_task}}}``."""
    check_methods(methods, backend.remote)
    from tqdm.auto import tqdm

    runs = plan_runs(backend, spec)
    scored = {t for r in runs for t in r.scored_tasks}
    backend.check(scored, spec.max_len, spec.test_examples)  # splits exist and fit, up front
    log.info("%s: %d cells x %d methods over %d targets", spec.name, len(runs), len(methods), len(scored))
    results: dict[str, dict] = {}
    for r in runs:
        val_records, val = _validation_records(backend, r, validation)
        cell = backend.open_cell(r.target, r.pool_idx, val_records, val, spec.max_len)
        try:
            task = MergeTask(target=r.target, pool_names=cell.pool_names, evaluator_for=cell.evaluator_for,
                             stack=cell.stack, world=getattr(backend, "world", None), seed=spec.seed,
                             progress=progress, val_records=val_records)
            outcomes, labels = [], []
            for label, method in tqdm(methods.items(), desc=f"{r.target}: methods", leave=False,
                                      dynamic_ncols=True, disable=not progress):
                full = label + r.suffix
                task.runner = runner_for(f"{r.target}/{full}") if (runner_for and method.searches) else None
                t0 = time.perf_counter()
                try:
                    outcome = method.run(task)
                finally:
                    if hasattr(task.runner, "close"):
                        task.runner.close()
                outcome.method = full
                # + the seconds earlier (preempted) segments of this search ran, saved in its checkpoints
                outcome.details["search_s"] = time.perf_counter() - t0 + getattr(task.runner, "prior_elapsed_s", 0.0)
                outcomes.append(outcome)
                labels.append(full)
            tests = {t: backend.records[t]["test"][: spec.test_examples] for t in r.scored_tasks}
            texts = {t: backend.answers(cell, outcomes, test, spec.max_len, task=t) for t, test in tests.items()}
        finally:
            cell.close()
        for i, (label, outcome) in enumerate(zip(labels, outcomes, strict=True)):
            for t, test in tests.items():
                results.setdefault(label, {"per_task": {}})["per_task"][t] = cell_result = _cell_result(
                    backend, r, cell, t, label, outcome, test, texts[t][i], predictions_dir)
            if on_result is not None:
                on_result(r, label, outcome, cell_result)
    for res in results.values():
        cells = list(res["per_task"].values())
        for key in ("precision", "recall", "f1"):
            res[key] = float(np.mean([c[key] for c in cells]))
    return {"methods": results}
