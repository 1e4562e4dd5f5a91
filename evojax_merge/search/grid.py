"""White-box baselines given their best chance (docs/methods.md §1): a pre-selection of the top
adapters on the validation set, then a grid over λ and density scored by validation loss.

    task arithmetic: λ · Σ τ_i                       λ ∈ lambdas
    TIES / DARE / DARE-TIES: merge(τ, density, λ)     λ ∈ lambdas, density ∈ densities

Streamed module by module: for one grid point, each module's merged update is computed from the
selected adapters' factors (``merge_module_factors``: at most one module's ``[n, d_out, d_in]``
stack alive) and folded into a copy of that module's base weight at once, ``W'^m = W^m + ΔW^m``.
The full set of dense task vectors (N·|model| values: ~250 GB for Llama-8B with 9 adapters) is
never built; the peak beyond the base and the merged model is one module's stack.
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
from evojax_merge.merge.task_vectors import merge_module_factors, module_key
from evojax_merge.search.fitness import MergeEvaluator, params_ce

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


_STREAMED_NAME = {"uniform_dense": "linear"}


@partial(jax.jit, static_argnames=("method", "density", "out_dtype"))
def _module_delta(a, b, scale, method: str, lam, density: float, key, out_dtype):
    # density is static: TIES trims floor(density * numel) entries, computed in float64 as peft does
    delta = merge_module_factors(a, b, scale, _STREAMED_NAME.get(method, method), lam, density, key)
    return delta.astype(out_dtype)


def _base_weights(evaluator: MergeEvaluator) -> dict[str, jax.Array]:
    """Module path -> the base weight ``[d_out, d_in]`` that a dense update is folded into."""
    from flax import nnx

    out = {}
    for path, var in nnx.to_flat_state(evaluator.params):
        name = ".".join(str(p) for p in path)
        if name.startswith("model.") and name.endswith(".weight"):
            out[name[6:-7]] = var[...]
    return out


def stream_deltas(stack: LoraStack, method: str, lam: float, density: float, key: jax.Array,
                  dtypes: dict[str, jnp.dtype]):
    """``(m, ΔW^m)`` for every module of ``stack``, one module at a time, in ``dtypes[m]``.

    ``ΔW^m = merge(τ^m, density, λ)`` of ``_merge_dense``'s method on ``τ^m[i] = s_i B_i^m A_i^m``;
    module m's DARE masks come from ``module_key(key, m)``, as in the dict form.
    """
    for m in stack.A:
        yield m, _module_delta(stack.A[m], stack.B[m], stack.scale, method, jnp.float32(lam), float(density),
                               module_key(key, m), jnp.dtype(dtypes[m]))


def merged_params(evaluator: MergeEvaluator, stack: LoraStack, method: str, lam: float, density: float,
                  key: jax.Array):
    """The base parameters with every module's streamed ``ΔW^m`` folded in, ``W + ΔW`` (as
    ``fold_into_params``: the update cast to the weight's dtype, then added)."""
    from flax import nnx

    weights = _base_weights(evaluator)
    new = {m: weights[m] + d for m, d in stream_deltas(stack, method, lam, density, key,
                                                      {m: weights[m].dtype for m in stack.A})}
    leaves = []
    for path, var in nnx.to_flat_state(evaluator.params):
        name = ".".join(str(p) for p in path)
        if name.startswith("model.") and name.endswith(".weight") and name[6:-7] in new:
            var = var.replace(new[name[6:-7]])
        leaves.append((path, var))
    return nnx.from_flat_state(leaves)


def dense_ce(evaluator: MergeEvaluator, params, generation: int = 0) -> float:
    """Validation CE of the model with parameters ``params`` (e.g. ``merged_params``)."""
    index = jnp.asarray(evaluator.batch_index(generation))
    return float(params_ce(evaluator.graphdef, params, {}, None, evaluator.data, index))


def grid_search(
    evaluator: MergeEvaluator,
    stack: LoraStack,
    method: str,
    cfg: BaselineGridConfig = BaselineGridConfig(),
    single_losses: np.ndarray | None = None,
    tv_cache: dict | None = None,
) -> GridResult:
    """Pick λ (and density) for ``method`` by validation CE on the pre-selected adapters.

    Every grid point is streamed module by module (``merged_params``); ``result.delta`` holds the
    chosen point's update per module, in the base weights' dtype. ``tv_cache`` (one dict per pool)
    keeps the gathered factors of a pre-selection (not dense task vectors: those are never built
    whole), so TA, TIES and DARE on the same target gather them once.
    """
    if method not in GRID_METHODS:
        raise EvoMergeInputError(f"method: unknown grid method {method!r}; known: {', '.join(GRID_METHODS)}")
    losses = single_adapter_losses(evaluator) if single_losses is None else single_losses
    selected = preselect(losses, cfg.preselect_top_k)
    cache = {} if tv_cache is None else tv_cache
    key = tuple(selected)
    if key not in cache:
        cache[key] = stack.take(selected)
    sub = cache[key]
    lambdas = cfg.lambdas if method != "uniform_dense" else (1.0,)
    densities = cfg.densities if method in ("ties", "dare", "dare_ties") else (1.0,)
    key = jax.random.key(cfg.seed)
    table, point = [], None
    for lam, density in itertools.product(lambdas, densities):
        ce = dense_ce(evaluator, merged_params(evaluator, sub, method, lam, density, key))
        table.append({"lambda": lam, "density": density, "val_ce": ce})
        if point is None or ce < point["val_ce"]:
            point = table[-1]
    weights = _base_weights(evaluator)
    delta = dict(stream_deltas(sub, method, point["lambda"], point["density"], key,
                               {m: weights[m].dtype for m in sub.A}))
    params = {"lambda": point["lambda"]} | ({"density": point["density"]} if len(densities) > 1 else {})
    return GridResult(method, params, point["val_ce"], selected, delta, table)
