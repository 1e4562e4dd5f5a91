"""Each merging method as one function: (evaluator, pool, settings) -> what to evaluate on test.

A method yields either a rank-r adapter (Evo-Merging, LoraHub, the uniform factor-wise average,
the best single adapter), a dense update (task arithmetic, TIES, DARE, DARE-TIES), or nothing
(the base model alone).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import LoraAdapter
from evojax_merge.lora.pool import LoraPool
from evojax_merge.search.evo_merging import (
    EvoMergingConfig,
    LoraHubConfig,
    StageRunner,
    evo_merging_search,
    lorahub_search,
    merged_adapter,
)
from evojax_merge.search.fitness import MergeEvaluator
from evojax_merge.search.grid import BaselineGridConfig, grid_search, single_adapter_losses

METHODS = ("evo_merging", "lorahub", "ties", "task_arithmetic", "dare", "dare_ties", "uniform", "best_single",
           "base")
EVO_VARIANTS = {  # methods.md §1 ablations, as overrides of EvoMergingConfig (+ the pruned factor)
    "full": {},
    "no_denoise": {"denoise": False},
    "no_scale": {"scale": False},
    "no_sign_flip": {"sign_flip": False},
    "neither": {"denoise": False, "scale": False},
    "prune_B": {"prune": "B"},
    "prune_both": {"prune": "both"},
}


@dataclasses.dataclass
class Outcome:
    method: str
    adapter: LoraAdapter | None = None
    delta: dict[str, jax.Array] | None = None
    val_fitness: float | None = None
    details: dict = dataclasses.field(default_factory=dict)
    search: object | None = None  # the MergeSearchResult of a CMA-ES method


@dataclasses.dataclass(frozen=True)
class MethodSettings:
    evo_merging: EvoMergingConfig = EvoMergingConfig()
    prune: str = "A"
    lorahub: LoraHubConfig = LoraHubConfig()
    grid: BaselineGridConfig = BaselineGridConfig()
    seed: int = 0


def _history(result) -> dict:
    return {
        "alpha": result.alpha.tolist(),
        "beta": result.beta.tolist(),
        "stages": {s.name: {"best_fitness": s.best_fitness, "history": s.history_rows()} for s in result.stages},
    }


def run_method(
    method: str,
    evaluator: MergeEvaluator,
    pool: LoraPool,
    settings: MethodSettings,
    runner: StageRunner | None = None,
    variant: str = "full",
    single_losses: np.ndarray | None = None,
    tv_cache: dict | None = None,
) -> Outcome:
    """Run ``method`` on ``pool``, scoring candidates with ``evaluator`` (validation CE)."""
    stack = pool.stack
    n = pool.num_adapters
    if method == "evo_merging":
        if variant not in EVO_VARIANTS:
            known = ", ".join(EVO_VARIANTS)
            raise EvoMergeInputError(f"experiment.variants: unknown variant {variant!r}; known: {known}")
        overrides = dict(EVO_VARIANTS[variant])
        prune = overrides.pop("prune", settings.prune)
        cfg = dataclasses.replace(settings.evo_merging, **overrides)
        if prune != evaluator.prune:
            raise EvoMergeInputError(f"variant {variant!r} prunes {prune} but the evaluator prunes {evaluator.prune}")
        result = evo_merging_search(evaluator, stack, cfg, seed=settings.seed, prune=prune, runner=runner)
        return Outcome(method, adapter=result.adapter, val_fitness=result.best_fitness, details=_history(result),
                       search=result)
    if method == "lorahub":
        result = lorahub_search(evaluator, stack, settings.lorahub, seed=settings.seed, runner=runner)
        return Outcome(method, adapter=result.adapter, val_fitness=result.best_fitness, details=_history(result),
                       search=result)
    if method == "uniform":  # factor-wise average: alpha = 1, beta = 1/N ("neither")
        alpha, beta = np.ones(n, np.float32), np.full(n, 1.0 / n, np.float32)
        ce = float(evaluator.evaluate(alpha[None], beta[None])[0])
        return Outcome(method, adapter=merged_adapter(stack, alpha, beta, "none"), val_fitness=ce)
    if method == "best_single":
        losses = single_adapter_losses(evaluator) if single_losses is None else single_losses
        best = int(np.argmin(losses))
        return Outcome(method, adapter=stack.adapter(best), val_fitness=float(losses[best]),
                       details={"adapter": pool.names[best]})
    if method in ("ties", "task_arithmetic", "dare", "dare_ties"):
        res = grid_search(evaluator, stack, method, settings.grid, single_losses, tv_cache)
        return Outcome(method, delta=res.delta, val_fitness=res.val_ce,
                       details={"params": res.params, "selected": [pool.names[i] for i in res.selected],
                                "grid": res.table})
    if method == "base":
        return Outcome(method, val_fitness=evaluator.evaluate_adapter(None))
    raise EvoMergeInputError(f"method: unknown method {method!r}; known: {', '.join(METHODS)}")


