"""Experiments: which (target, pool, method) runs to make, and their test scores as one table.

As the paper runs them (docs/methods.md §1):

    ood          for each target task, a small related pool (``pool: related``: the zoo's preset,
                 or ``pools: {target: [adapter, ...]}``), or the full pool minus the target's
                 own adapter (``pool: full``); searched on the target's validation split
    id           ONE multi-task merge of the experts (<= 10), searched on their pooled
                 validation sets, tested on every expert's test split
    distractors  id with interference adapters and auxiliary adapters added to the pool
                 (``extra_adapters`` by name, plus ``num_distractors`` drawn at random)
    pool_size    ood with random pools of N adapters, for each N
    val_size     ood with V validation examples, for each V
    ablation     ood with the Evo-Merging variants of methods.md §1
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.data.batching import encode_examples
from evojax_merge.errors import EvoMergeInputError
from evojax_merge.eval.evaluate import generate_for_population, score
from evojax_merge.lora.pool import LoraPool
from evojax_merge.models.delta import fold_into_params
from evojax_merge.runner.methods import EVO_VARIANTS, MethodSettings, Outcome, run_method
from evojax_merge.runner.world import World
from evojax_merge.search.fitness import MergeEvaluator, ValidationConfig
from evojax_merge.search.grid import single_adapter_losses

log = logging.getLogger(__name__)
SETTINGS = ("ood", "id", "distractors")


@dataclasses.dataclass(frozen=True)
class ExperimentSpec:
    name: str = "ood"
    setting: str = "ood"
    targets: tuple[str, ...] = ()
    num_targets: int = 6  # when targets is empty: spread over task types and domains
    experts: tuple[str, ...] = ()
    num_distractors: int = 0
    extra_adapters: tuple[str, ...] = ()  # distractors: named interference / auxiliary adapters
    pool: str = "full"  # ood: full (every adapter but the target's own) | related (small preset pools)
    pools: dict | None = None  # ood: explicit {target: [adapter names]} (user worlds; overrides the zoo's)
    methods: tuple[str, ...] = ("evo_merging", "lorahub", "ties", "task_arithmetic", "dare", "uniform",
                                "best_single", "base")
    variants: tuple[str, ...] = ("full",)  # Evo-Merging variants (ablation)
    pool_sizes: tuple[int, ...] = ()  # pool_size experiment; empty = the whole pool
    val_sizes: tuple[int, ...] = ()  # val_size experiment; empty = validation.num_batches x batch_size
    test_examples: int = 100
    max_len: int = 128
    max_new_tokens: int = 48
    seed: int = 0


@dataclasses.dataclass
class Run:
    """One cell of the results table: a method (label) on one target with one pool."""

    label: str
    method: str
    target: str
    pool: LoraPool
    variant: str = "full"
    num_val: int | None = None
    # id/distractors: one merge searched on these tasks' pooled validation records and tested on
    # each of test_tasks; empty = the target alone
    validation_tasks: tuple[str, ...] = ()
    test_tasks: tuple[str, ...] = ()


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


def _ood_pool_indices(world: World, target: str, spec: ExperimentSpec) -> list[int]:
    names = world.pool.names
    own = world.own_adapter(target)
    if spec.pool == "full":
        return [i for i, n in enumerate(names) if n != own]
    if spec.pool != "related":
        raise EvoMergeInputError(f"experiment.pool: {spec.pool!r} is not related or full")
    presets = (spec.pools or {}) or world.info.get("pools") or {}
    if target not in presets:
        raise EvoMergeInputError(f"experiment.pools: no related pool for target {target!r} "
                                 "(name one, or set experiment.pool=full)")
    unknown = [n for n in presets[target] if n not in names]
    if unknown:
        raise EvoMergeInputError(f"experiment.pools.{target}: unknown adapter {unknown[0]!r}")
    if own in presets[target]:
        raise EvoMergeInputError(f"experiment.pools.{target}: holds the target's own adapter {own!r}")
    return sorted(names.index(n) for n in presets[target])


def plan_runs(world: World, spec: ExperimentSpec) -> list[Run]:
    if spec.setting not in SETTINGS:
        raise EvoMergeInputError(f"experiment.setting: {spec.setting!r} is not one of {', '.join(SETTINGS)}")
    pool, names = world.pool, world.pool.names
    rng = np.random.default_rng(spec.seed)
    runs: list[Run] = []
    if spec.setting == "ood":
        targets = pick_targets(world.records, spec)
        for target in targets:
            ood_idx = _ood_pool_indices(world, target, spec)
            sizes = spec.pool_sizes or (len(ood_idx),)
            for size in sizes:
                if size > len(ood_idx):
                    raise EvoMergeInputError(f"experiment.pool_sizes: {size} > the {len(ood_idx)} OOD adapters")
                idx = sorted(rng.choice(ood_idx, size, replace=False).tolist()) if size < len(ood_idx) else ood_idx
                sub = pool.subset(idx)
                for v in spec.val_sizes or (None,):
                    for method in spec.methods:
                        for variant in spec.variants if method == "evo_merging" else ("full",):
                            runs.append(Run(_label(method, variant, spec, size, v), method, target, sub, variant, v))
        return runs
    experts = list(spec.experts)
    if not experts or len(experts) > 10:
        raise EvoMergeInputError(f"experiment.experts: the {spec.setting} setting needs 1 to 10 experts")
    unknown = [t for t in experts if t not in world.records]
    if unknown:
        raise EvoMergeInputError(f"experiment.experts: unknown task {unknown[0]!r}")
    idx = [names.index(world.own_adapter(t) or t) for t in experts]
    if spec.setting == "distractors":
        bad = [n for n in spec.extra_adapters if n not in names]
        if bad:
            raise EvoMergeInputError(f"experiment.extra_adapters: unknown adapter {bad[0]!r}")
        idx += [names.index(n) for n in spec.extra_adapters if names.index(n) not in idx]
        others = [i for i in range(len(names)) if i not in idx]
        if spec.num_distractors > len(others):
            raise EvoMergeInputError(f"experiment.num_distractors: {spec.num_distractors} > the {len(others)} "
                                     "adapters left")
        if spec.num_distractors:
            idx += rng.choice(others, spec.num_distractors, replace=False).tolist()
    sub = pool.subset(sorted(idx))
    label = f"pooled_{len(experts)}"  # the one merge's name; cells are per expert task
    for method in spec.methods:
        for variant in spec.variants if method == "evo_merging" else ("full",):
            runs.append(Run(_label(method, variant, spec, None, None), method, label, sub, variant,
                            validation_tasks=tuple(experts), test_tasks=tuple(experts)))
    return runs


def _label(method: str, variant: str, spec: ExperimentSpec, size: int | None, num_val: int | None) -> str:
    label = method if variant == "full" else f"{method}[{variant}]"
    if spec.pool_sizes:
        label += f"@N={size}"
    if num_val is not None:
        label += f"@V={num_val}"
    return label


def pooled_validation(world: World, tasks: tuple[str, ...]) -> list[dict]:
    """The tasks' validation records interleaved round-robin (any prefix is balanced across tasks)."""
    lists = [world.records[t]["validation"] for t in tasks]
    return [lst[i] for i in range(max(map(len, lists))) for lst in lists if i < len(lst)]


def _validation_examples(world: World, target: str, spec: ExperimentSpec, val: ValidationConfig,
                         num_val: int | None, tasks: tuple[str, ...] = ()) -> tuple[dict, ValidationConfig]:
    records = pooled_validation(world, tasks) if tasks else world.records[target]["validation"]
    if num_val is not None:
        if num_val > len(records):
            raise EvoMergeInputError(f"experiment.val_sizes: {num_val} > {len(records)} validation records of {target}")
        records = records[:num_val]
        val = dataclasses.replace(val, num_batches=max(1, num_val // val.batch_size))
    return encode_examples(records, world.tokenizer, max_len=spec.max_len), val


def _test_scores(world: World, target: str, outcomes: list[Outcome], spec: ExperimentSpec) -> list[dict]:
    """Generate on the target's test split for every outcome, batching the adapter ones."""
    records = world.records[target]["test"][: spec.test_examples]
    task_type = world.task_type(target)
    texts: dict[int, list[str]] = {}
    lora_idx = [i for i, o in enumerate(outcomes) if o.adapter is not None]
    if lora_idx:
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[outcomes[i].adapter for i in lora_idx])
        outs = generate_for_population(world.model, world.tokenizer, stacked, records, spec.max_len,
                                       spec.max_new_tokens)
        texts.update(zip(lora_idx, outs, strict=True))
    graphdef_params = None
    for i, o in enumerate(outcomes):
        if o.adapter is not None:
            continue
        model = world.model
        if o.delta is not None:
            from flax import nnx

            graphdef_params = graphdef_params or nnx.split(world.model)
            model = nnx.merge(graphdef_params[0], fold_into_params(graphdef_params[1], o.delta))
        texts[i] = generate_for_population(model, world.tokenizer, None, records, spec.max_len,
                                           spec.max_new_tokens)[0]
    return [score(texts[i], records, task_type) for i in range(len(outcomes))]


def _evaluator_cache(world: World, pool: LoraPool, examples: dict, val: ValidationConfig, chunk: int | None):
    """``prune -> MergeEvaluator`` for one (target, pool), built on first use."""
    evaluators: dict[str, MergeEvaluator] = {}

    def evaluator_for(prune: str) -> MergeEvaluator:
        if prune not in evaluators:
            evaluators[prune] = MergeEvaluator(world.model, pool.stack, examples, val, prune=prune,
                                               population_chunk=chunk)
        return evaluators[prune]

    return evaluator_for


def run_experiment(
    world: World,
    spec: ExperimentSpec,
    settings: MethodSettings,
    validation: ValidationConfig,
    runner_for: Callable[[str], object] | None = None,
    on_result: Callable[[Run, Outcome, dict], None] | None = None,
    population_chunk: int | None = None,
) -> dict:
    """Run every planned cell; returns ``{"methods": {label: {precision, recall, f1, per_task}}}``."""
    runs = plan_runs(world, spec)
    log.info("%s: %d runs over %d targets", spec.name, len(runs), len({r.target for r in runs}))
    results: dict[str, dict] = {}
    groups: dict[tuple, list[Run]] = {}
    for r in runs:  # one evaluator (validation set, pool) per group; the pool is shared by its runs
        groups.setdefault((r.target, id(r.pool), r.num_val), []).append(r)
    for (target, _, num_val), group in groups.items():
        examples, val = _validation_examples(world, target, spec, validation, num_val, group[0].validation_tasks)
        evaluator_for = _evaluator_cache(world, group[0].pool, examples, val, population_chunk)

        singles, tv_cache = None, {}  # shared by the group's runs: one pool, one validation set
        if any(r.method in ("best_single", "ties", "task_arithmetic", "dare", "dare_ties") for r in group):
            singles = single_adapter_losses(evaluator_for(settings.prune))
        outcomes = []
        for r in group:
            t0 = time.perf_counter()
            prune = EVO_VARIANTS.get(r.variant, {}).get("prune", settings.prune) if r.method == "evo_merging" else "A"
            searches = r.method in ("evo_merging", "lorahub")  # only CMA-ES runs have stages to checkpoint
            stage_runner = runner_for(f"{target}/{r.label}") if runner_for and searches else None
            o = run_method(r.method, evaluator_for(prune), r.pool, settings, stage_runner, r.variant, singles,
                           tv_cache)
            o.details["search_s"] = time.perf_counter() - t0
            outcomes.append(o)
        test_tasks = group[0].test_tasks or (target,)
        for test_task in test_tasks:  # id: the one merge on every expert's test set
            scores = _test_scores(world, test_task, outcomes, spec)
            for r, o, s in zip(group, outcomes, scores, strict=True):
                cell = {**s, "val_fitness": o.val_fitness, "pool_size": r.pool.num_adapters, **o.details}
                results.setdefault(r.label, {"per_task": {}})["per_task"][test_task] = cell
                log.info("%-28s %-18s F1 %.3f (val %.4f)", r.label, test_task, s["f1"], o.val_fitness or float("nan"))
                if on_result is not None and test_task == test_tasks[0]:  # once per run
                    on_result(r, o, cell)
    for res in results.values():
        cells = list(res["per_task"].values())
        for key in ("precision", "recall", "f1"):
            res[key] = float(np.mean([c[key] for c in cells]))
    return {"methods": results}
