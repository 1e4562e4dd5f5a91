"""Task-vector baselines (docs/methods.md §3) on dense updates ``τ_i^m = s_i · B_i^m A_i^m``.

Semantics follow ``peft.utils.merge_utils`` exactly (the test oracle), per module m, with the N task
vectors stacked on axis 0 and per-task weights ``w`` (``w = λ · 1`` for the λ-forms below):

- linear:          Σ_i w_i τ_i                      (uniform w_i = 1/N by default)
- task arithmetic: Σ_i λ τ_i
- TIES:            trim each τ_i to its top ``floor(density · numel)`` entries by |·|
                   (``density >= 1``: no trim); elect ``σ = +1 if Σ_i trimmed_i >= 0 else -1``
                   (on the UNweighted trimmed tensors); keep entries with ``sign(trimmed_i) == σ``;
                   ``Σ_i w_i trimmed_i [agree] / max(1, #agree)``
- DARE:            ``Σ_i w_i · τ_i · mask_i / density``, ``mask_i ~ Bernoulli(density)``
- DARE-TIES:       the DARE-pruned tensors, then TIES' election and disjoint mean

Every ``tv`` argument is either one stacked array ``[N, ...]`` or a dict ``module -> [N, ...]``;
the result has the same structure without the N axis. The random variants take a PRNG key in the
public function and explicit masks in the ``*_with_masks`` form (the peft oracle tests feed the
same masks to both). ``to_low_rank`` turns a merged dense update back into a rank-r adapter.
"""

from __future__ import annotations

import zlib
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import LoraAdapter, LoraStack

SignMethod = Literal["total", "frequency"]
TaskVectors = jax.Array | dict[str, jax.Array]

_HIGHEST = jax.lax.Precision.HIGHEST  # full f32 on GPU/TPU (no TF32/bf16 passes)


# --------------------------------------------------------------------------- dense updates


def task_vectors(stack: LoraStack) -> dict[str, jax.Array]:
    """``τ^m[i] = s_i · B_i^m @ A_i^m`` for every module m: ``[N, d_out, d_in]``."""
    return {
        m: stack.scale[:, None, None] * jnp.einsum("nor,nrd->nod", stack.B[m], stack.A[m], precision=_HIGHEST)
        for m in stack.A
    }


def adapter_delta(adapter: LoraAdapter) -> dict[str, jax.Array]:
    """``ΔW^m = scale · B^m @ A^m`` of one adapter: ``[d_out, d_in]`` per module."""
    return {m: adapter.scale * jnp.matmul(adapter.B[m], adapter.A[m], precision=_HIGHEST) for m in adapter.A}


# --------------------------------------------------------------------------- building blocks


def _weights(t: jax.Array, weights: jax.Array | None, lam: jax.Array | float) -> jax.Array:
    """Per-task weights ``lam · w`` broadcast against ``t`` [N, ...] (peft's reshape_weight...)."""
    n = t.shape[0]
    w = jnp.ones((n,), t.dtype) if weights is None else jnp.asarray(weights)
    if w.shape != (n,):
        raise EvoMergeInputError(f"weights has shape {w.shape}, expected ({n},)")
    return (lam * w).reshape((n,) + (1,) * (t.ndim - 1))


def _weighted_sum(t: jax.Array, w: jax.Array) -> jax.Array:
    # Multiply then reduce, in peft's order (no matmul: no reduced-precision dot on accelerators).
    return (t * w).sum(axis=0)


def trim_count(density: jax.Array | float, numel: int) -> jax.Array | int:
    """TIES' keep count: ``numel`` if ``density >= 1`` else ``floor(max(density, 0) · numel)``.

    A concrete (Python/numpy) density is evaluated in float64 like peft's
    ``int(density * numel)`` (float32 would turn 0.29 · 100 into 29, not 28); a traced density
    (a searched hyperparameter under jit) uses its own dtype.
    """
    if not isinstance(density, jax.core.Tracer):
        d = float(density)
        return numel if d >= 1 else int(max(d, 0.0) * numel)
    d = jnp.asarray(density)
    k = jnp.where(d >= 1, numel, jnp.floor(jnp.clip(d, 0.0, 1.0) * numel))
    return k.astype(jnp.int32)


def magnitude_prune(t: jax.Array, density: jax.Array | float) -> jax.Array:
    """Keep exactly the top-k |entries| of each task vector ``t[i]``, k = ``trim_count``, zero the rest.

    peft's ``magnitude_based_pruning`` per tensor. Ties at the cut are broken toward the lower
    flat index (``torch.topk``'s choice among ties is unspecified, so peft has no fixed rule).
    """
    n = t.shape[0]
    flat = jnp.abs(t).reshape(n, -1)
    numel = flat.shape[1]
    k = trim_count(density, numel)
    # Value sort + cumsum instead of an argsort and a scatter: no index payload, half the memory
    # on [N, d_out·d_in] task vectors, and k may be traced.
    desc = jnp.flip(jnp.sort(flat, axis=-1), axis=-1)
    thr = desc[:, jnp.clip(k - 1, 0, numel - 1)][:, None]  # k-th largest |t| per task vector
    above = flat > thr
    tied = flat == thr
    # count(> thr) < k <= count(>= thr): keep the first (k - count(> thr)) tied entries by index.
    need = k - above.sum(axis=-1, keepdims=True)
    keep = (above | (tied & (jnp.cumsum(tied, axis=-1) <= need))) & (k > 0)
    return jnp.where(keep.reshape(t.shape), t, jnp.zeros((), t.dtype))


def majority_sign_mask(t: jax.Array, method: SignMethod = "total") -> jax.Array:
    """``sign(t_i) == σ`` with ``σ = +1 if Σ_i t_i >= 0 else -1`` (``"frequency"``: Σ_i sign(t_i)).

    peft's ``calculate_majority_sign_mask``; zero entries never agree (sign 0), and a zero total
    elects +1.
    """
    sign = jnp.sign(t)
    if method == "total":
        total = t.sum(axis=0)
    elif method == "frequency":
        total = sign.sum(axis=0)
    else:
        raise EvoMergeInputError(f"sign method {method!r}, expected 'total' or 'frequency'")
    elected = jnp.where(total >= 0, 1, -1).astype(t.dtype)
    return sign == elected


def disjoint_merge(weighted: jax.Array, mask: jax.Array) -> jax.Array:
    """``Σ_i weighted_i · mask_i / max(1, Σ_i mask_i)``: the mean over agreeing entries only."""
    mixed = (weighted * mask).sum(axis=0)
    count = mask.sum(axis=0).astype(weighted.dtype)
    return mixed / jnp.maximum(count, 1.0)


def dare_prune(t: jax.Array, mask: jax.Array, density: jax.Array | float) -> jax.Array:
    """DARE's drop-and-rescale: ``t · mask / density`` (peft's ``random_pruning(rescale=True)``).

    ``density >= 1`` returns ``t`` (no pruning, mask ignored, as peft's ``prune``);
    ``density <= 0`` returns zeros (peft would divide by zero and return NaN).
    """
    d = jnp.asarray(density, t.dtype)
    pruned = (t * mask) / jnp.where(d > 0, d, 1)  # peft's order: mask, then divide
    out = jnp.where(d >= 1, t, pruned)
    return jnp.where(d > 0, out, jnp.zeros((), t.dtype))


def _tree_map(fn, tv: TaskVectors, *rest):
    """Apply ``fn(t, *rest_leaves)`` per module of a dict, or once to a bare array."""
    if isinstance(tv, dict):
        return {m: fn(t, *(r[m] for r in rest)) for m, t in tv.items()}
    return fn(tv, *rest)


def module_key(key: jax.Array, module: str) -> jax.Array:
    """The PRNG key of one module: ``fold_in(key, crc32(module))``.

    Folding in the module NAME (not its position) makes a module's mask independent of which other
    modules are merged alongside it, so merging module by module gives the same result.
    """
    return jax.random.fold_in(key, zlib.crc32(module.encode()) & 0x7FFFFFFF)


def dare_masks(key: jax.Array, density: jax.Array | float, tv: TaskVectors) -> TaskVectors:
    """Boolean keep masks ``~ Bernoulli(min(density, 1))``, one per entry of every task vector.

    Same structure and shapes as ``tv``; for a dict, module m uses ``module_key(key, m)``.
    """
    p = jnp.clip(jnp.asarray(density, jnp.float32), 0.0, 1.0)
    if isinstance(tv, dict):
        return {m: jax.random.bernoulli(module_key(key, m), p, t.shape) for m, t in tv.items()}
    return jax.random.bernoulli(key, p, tv.shape)


# --------------------------------------------------------------------------- merges


def linear(tv: TaskVectors, weights: jax.Array | None = None) -> TaskVectors:
    """Linear / model soup: ``Σ_i w_i τ_i``, uniform ``w_i = 1/N`` by default."""

    def one(t):
        w = jnp.full((t.shape[0],), 1.0 / t.shape[0], t.dtype) if weights is None else weights
        return _weighted_sum(t, _weights(t, w, 1.0))

    return _tree_map(one, tv)


def task_arithmetic(tv: TaskVectors, lam: jax.Array | float) -> TaskVectors:
    """Task arithmetic: ``λ · Σ_i τ_i`` (peft's ``task_arithmetic`` with weights ``λ · 1``)."""
    return _tree_map(lambda t: _weighted_sum(t, _weights(t, None, lam)), tv)


def ties(
    tv: TaskVectors,
    density: jax.Array | float,
    lam: jax.Array | float = 1.0,
    *,
    weights: jax.Array | None = None,
    sign_method: SignMethod = "total",
) -> TaskVectors:
    """TIES: ``disjoint_merge(λ·w·trim(τ), majority_sign_mask(trim(τ)))``.

    ``trim = magnitude_prune(τ, density)`` (top ``floor(density·numel)`` per task vector per
    module), the sign elected on the unweighted trimmed tensors, the disjoint mean over agreeing
    entries, times ``λ · w_i`` (``w = 1`` by default). peft's ``ties(τ, λ·w, density)``.
    """

    def one(t):
        trimmed = magnitude_prune(t, density)
        mask = majority_sign_mask(trimmed, sign_method)
        return disjoint_merge(trimmed * _weights(t, weights, lam), mask)

    return _tree_map(one, tv)


def dare_with_masks(
    tv: TaskVectors,
    masks: TaskVectors,
    density: jax.Array | float,
    lam: jax.Array | float = 1.0,
    *,
    weights: jax.Array | None = None,
) -> TaskVectors:
    """DARE (linear) with explicit masks: ``Σ_i λ w_i · τ_i · mask_i / density``.

    peft's ``dare_linear(τ, λ·w, density)`` with its Bernoulli draws replaced by ``masks``.
    """

    def one(t, mask):
        return _weighted_sum(dare_prune(t, mask, density), _weights(t, weights, lam))

    return _tree_map(one, tv, masks)


def dare(
    tv: TaskVectors,
    density: jax.Array | float,
    lam: jax.Array | float,
    key: jax.Array,
    *,
    weights: jax.Array | None = None,
) -> TaskVectors:
    """DARE: ``Σ_i λ w_i · τ_i · mask_i / density``, ``mask = dare_masks(key, density, τ)``."""
    return dare_with_masks(tv, dare_masks(key, density, tv), density, lam, weights=weights)


def dare_ties_with_masks(
    tv: TaskVectors,
    masks: TaskVectors,
    density: jax.Array | float,
    lam: jax.Array | float = 1.0,
    *,
    weights: jax.Array | None = None,
    sign_method: SignMethod = "total",
) -> TaskVectors:
    """DARE-TIES with explicit masks: ``p = τ·mask/density``, then
    ``disjoint_merge(λ·w·p, majority_sign_mask(p))``. peft's ``dare_ties(τ, λ·w, density)``.
    """

    def one(t, mask):
        pruned = dare_prune(t, mask, density)
        sign_mask = majority_sign_mask(pruned, sign_method)
        return disjoint_merge(pruned * _weights(t, weights, lam), sign_mask)

    return _tree_map(one, tv, masks)


def dare_ties(
    tv: TaskVectors,
    density: jax.Array | float,
    lam: jax.Array | float,
    key: jax.Array,
    *,
    weights: jax.Array | None = None,
    sign_method: SignMethod = "total",
) -> TaskVectors:
    """DARE-TIES: ``dare_ties_with_masks`` with ``mask = dare_masks(key, density, τ)``."""
    masks = dare_masks(key, density, tv)
    return dare_ties_with_masks(tv, masks, density, lam, weights=weights, sign_method=sign_method)


# --------------------------------------------------------------------------- export


def to_low_rank(dense: dict[str, jax.Array], rank: int, scale: jax.Array | float) -> LoraAdapter:
    """Best rank-r adapter for dense updates: ``scale · B^m A^m = U_r Σ_r V_r^T`` (truncated SVD).

    With ``dense^m = U Σ V^T``: ``B^m = U_r · sqrt(Σ_r / scale)``, ``A^m = sqrt(Σ_r / scale) · V_r^T``
    (balanced factors; ``scale > 0``). By Eckart-Young this is the best rank-r approximation in
    Frobenius and spectral norm, exact when ``rank(dense^m) <= r``. If ``r > min(d_out, d_in)``
    the extra rank-1 slots are zero so every module has rank exactly r. ``rank`` is static.
    """
    if not isinstance(rank, int | np.integer) or rank < 1:
        raise EvoMergeInputError(f"rank={rank!r}, expected a positive int")
    scale = jnp.asarray(scale, jnp.float32)
    out_a, out_b = {}, {}
    for m, w in dense.items():
        # SVD in at least float32 (no bf16 SVD), factors returned in the update's dtype.
        u, s, vt = jnp.linalg.svd(w.astype(jnp.promote_types(w.dtype, jnp.float32)), full_matrices=False)
        r = min(rank, s.shape[0])
        root = jnp.sqrt(s[:r] / scale)
        b = (u[:, :r] * root[None, :]).astype(w.dtype)
        a = (root[:, None] * vt[:r]).astype(w.dtype)
        pad = rank - r
        out_b[m] = jnp.pad(b, ((0, 0), (0, pad)))
        out_a[m] = jnp.pad(a, ((0, pad), (0, 0)))
    return LoraAdapter(A=out_a, B=out_b, scale=scale)
