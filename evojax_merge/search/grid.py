"""Grid search, and dense merges of a LoRA pool streamed module by module into the base weights.

The search knows no merge: it is given the grid's axes (``{"lambda": (...), "density": (...)}``,
or any other named values) and a scoring function, and returns the point with the lowest score:

    best = argmin_{p ∈ axis_1 × axis_2 × ...} score(p)        (first in grid order on ties; NaN never wins)

A white-box method scores a point by streaming it: for each module m, its merged update ``ΔW^m``
is computed from the selected adapters' factors by the method's module function (at most one
module's work alive) and folded into a copy of that module's base weight at once,
``W'^m = W^m + ΔW^m``, then the validation CE of ``W'`` is the score. The full set of dense task
vectors (N·|model| values: ~250 GB for Llama-8B with 9 adapters) is never built; the peak beyond
the base and the merged model is one module's work.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import LoraStack
from evojax_merge.search.fitness import MergeEvaluator, params_ce

# (module path, A [N, r, d_in], B [N, d_out, r], scale [N], out dtype) -> ΔW [d_out, d_in]
ModuleDelta = Callable[[str, jax.Array, jax.Array, jax.Array, jnp.dtype], jax.Array]


@dataclasses.dataclass
class GridResult:
    params: dict  # the chosen point: one value per axis
    score: float
    table: list[dict]  # every point in grid order, with its score under ``score_key``


def grid_search(axes: Mapping[str, Sequence], score: Callable[[dict], float],
                score_key: str = "score") -> GridResult:
    """Score every point of ``axis_1 × axis_2 × ...`` (in order, the last axis fastest); keep the lowest.

    Ties go to the earlier point; a NaN score never beats a number.
    """
    if not axes or any(len(v) == 0 for v in axes.values()):
        raise EvoMergeInputError(f"grid: every axis needs a value, got {dict(axes)}")
    names = list(axes)
    table, best = [], None
    for values in itertools.product(*(axes[n] for n in names)):
        row = {**dict(zip(names, values, strict=True)), score_key: float(score(dict(zip(names, values, strict=True))))}
        table.append(row)
        s = row[score_key]
        if best is None or s < best[score_key] or (math.isnan(best[score_key]) and not math.isnan(s)):
            best = row
    return GridResult({n: best[n] for n in names}, best[score_key], table)


# --------------------------------------------------------------------------- pre-selection


def single_adapter_losses(evaluator: MergeEvaluator) -> np.ndarray:
    """Validation CE of each adapter alone, in one batched call (alpha = 1, beta = e_i)."""
    n = evaluator.num_adapters
    return evaluator.evaluate(np.ones((n, n), np.float32), np.eye(n, dtype=np.float32))


def preselect(losses: np.ndarray, top_k: int) -> list[int]:
    """Indices of the ``top_k`` adapters with the lowest validation loss (all when top_k <= 0)."""
    order = np.argsort(losses, kind="stable")
    return sorted(order[: top_k if top_k > 0 else len(order)].tolist())


# --------------------------------------------------------------------------- streaming


def base_weights(evaluator: MergeEvaluator) -> dict[str, jax.Array]:
    """Module path -> the base weight ``[d_out, d_in]`` that a dense update is folded into."""
    from flax import nnx

    out = {}
    for path, var in nnx.to_flat_state(evaluator.params):
        name = ".".join(str(p) for p in path)
        if name.startswith("model.") and name.endswith(".weight"):
            out[name[6:-7]] = var[...]
    return out


def stream_deltas(stack: LoraStack, module_delta: ModuleDelta,
                  dtypes: Mapping[str, jnp.dtype]) -> Iterator[tuple[str, jax.Array]]:
    """``(m, ΔW^m)`` for every module of ``stack``, one module at a time, in ``dtypes[m]``:
    ``ΔW^m = module_delta(m, A^m, B^m, scale, dtypes[m])``."""
    for m in stack.A:
        yield m, module_delta(m, stack.A[m], stack.B[m], stack.scale, jnp.dtype(dtypes[m]))


def merged_params(evaluator: MergeEvaluator, deltas: Iterable[tuple[str, jax.Array]]):
    """The base parameters with every streamed ``ΔW^m`` folded in, ``W + ΔW`` (as
    ``fold_into_params``: the update in the weight's dtype, then added); each ``ΔW^m`` is dropped
    as soon as it is folded."""
    from flax import nnx

    weights = base_weights(evaluator)
    new = {m: weights[m] + d for m, d in deltas}
    leaves = []
    for path, var in nnx.to_flat_state(evaluator.params):
        name = ".".join(str(p) for p in path)
        if name.startswith("model.") and name.endswith(".weight") and name[6:-7] in new:
            var = var.replace(new[name[6:-7]])
        leaves.append((path, var))
    return nnx.from_flat_state(leaves)


def dense_ce(evaluator: MergeEvaluator, params, generation: int = 0) -> float:
    """Validation CE of the model with parameters ``params`` (e.g. ``merged_params``)."""
    return float(params_ce(evaluator.graphdef, params, {}, None, evaluator.data, evaluator.traced_index(generation)))


def streamed_ce(evaluator: MergeEvaluator, stack: LoraStack, module_delta: ModuleDelta) -> float:
    """Validation CE of the base with ``module_delta``'s update of every module of ``stack`` folded in."""
    weights = base_weights(evaluator)
    deltas = stream_deltas(stack, module_delta, {m: weights[m].dtype for m in stack.A})
    return dense_ce(evaluator, merged_params(evaluator, deltas))


def streamed_delta(evaluator: MergeEvaluator, stack: LoraStack, module_delta: ModuleDelta) -> dict[str, jax.Array]:
    """Every module's ``ΔW^m`` in its base weight's dtype (the ``Outcome.delta`` of a dense merge)."""
    weights = base_weights(evaluator)
    return dict(stream_deltas(stack, module_delta, {m: weights[m].dtype for m in stack.A}))
