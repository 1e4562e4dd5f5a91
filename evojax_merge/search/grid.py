"""White-box baselines given their best chance (docs/methods.md §1): a pre-selection of the top
adapters on the validation set, then a grid over λ and density scored by validation loss.

    task arithmetic: λ · Σ τ_i                       λ ∈ lambdas
    TIES / DARE / DARE-TIES: merge(τ, density, λ)     λ ∈ lambdas, density ∈ densities
"""

from __future__ import annotations

import dataclasses
import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import LoraStack
from evojax_merge.merge import dare, dare_ties, linear, task_arithmetic, task_vectors, ties
from evojax_merge.search.fitness import MergeEvaluator

GRID_METHODS = ("task_arithmetic", "ties", "dare", "dare_ties", "uniform_dense")


@dataclasses.dataclass(frozen=True)
class BaselineGridConfig:
    lambdas: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 1.0)
    densities: tuple[float, ...] = (0.5, 0.7, 0.9, 1.0)
    preselect_top_k: int = 9  # "fewer than 10" adapters, chosen by validation loss; 0 keeps all
    seed: int = 0  # DARE's drop masks


@dataclasses.dataclass
class GridResult:
    method: str
    params: dict  # the chosen λ (and density)
    val_ce: float
    selected: list[int]  # pool indices the merge used
    delta: dict[str, jax.Array]  # the merged dense update per module
    table: list[dict]  # every grid point with its validation CE


def single_adapter_losses(evaluator: MergeEvaluator) -> np.ndarray:
    """Validation CE of each adapter alone, in one batched call (alpha = 1, beta = e_i)."""
    n = evaluator.num_adapters
    return evaluator.evaluate(np.ones((n, n), np.float32), np.eye(n, dtype=np.float32))


def preselect(losses: np.ndarray, top_k: int) -> list[int]:
    """Indices of the ``top_k`` adapters with the lowest validation loss (all when top_k <= 0)."""
    order = np.argsort(losses, kind="stable")
    return sorted(order[: top_k if top_k > 0 else len(order)].tolist())


@partial(jax.jit, static_argnames=("method", "density"))
def _merge_dense(tv, method: str, lam, density: float, key):
    # density is static: TIES trims floor(density * numel) entries, computed in float64 as peft does
    if method == "task_arithmetic":
        return task_arithmetic(tv, lam)
    if method == "ties":
        return ties(tv, density, lam)
    if method == "dare":
        return dare(tv, density, lam, key)
    if method == "dare_ties":
        return dare_ties(tv, density, lam, key)
    if method == "uniform_dense":
        return linear(tv)
    raise EvoMergeInputError(f"method: unknown grid method {method!r}; known: {', '.join(GRID_METHODS)}")


def grid_search(
    evaluator: MergeEvaluator,
    stack: LoraStack,
    method: str,
    cfg: BaselineGridConfig = BaselineGridConfig(),
    single_losses: np.ndarray | None = None,
    tv_cache: dict | None = None,
) -> GridResult:
    """Pick λ (and density) for ``method`` by validation CE on the pre-selected adapters.

    ``tv_cache`` (one dict per pool) keeps the dense task vectors of a pre-selection, so TA, TIES
    and DARE on the same target build them once.
    """
    if method not in GRID_METHODS:
        raise EvoMergeInputError(f"method: unknown grid method {method!r}; known: {', '.join(GRID_METHODS)}")
    losses = single_adapter_losses(evaluator) if single_losses is None else single_losses
    selected = preselect(losses, cfg.preselect_top_k)
    cache = {} if tv_cache is None else tv_cache
    key = tuple(selected)
    if key not in cache:
        cache[key] = task_vectors(stack.take(selected))
    tv = cache[key]
    lambdas = cfg.lambdas if method != "uniform_dense" else (1.0,)
    densities = cfg.densities if method in ("ties", "dare", "dare_ties") else (1.0,)
    key = jax.random.key(cfg.seed)
    table, best = [], None
    for lam, density in itertools.product(lambdas, densities):
        delta = _merge_dense(tv, method, jnp.float32(lam), float(density), key)
        ce = evaluator.evaluate_dense(delta)
        point = {"lambda": lam, "density": density, "val_ce": ce}
        table.append(point)
        if best is None or ce < best[0]["val_ce"]:
            best = (point, delta)
    point, delta = best
    params = {"lambda": point["lambda"]} | ({"density": point["density"]} if len(densities) > 1 else {})
    return GridResult(method, params, point["val_ce"], selected, delta, table)
