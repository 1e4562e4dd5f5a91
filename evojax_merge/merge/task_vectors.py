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


def adapter_mask(key: jax.Array, i: jax.Array | int, density: jax.Array | float, shape: tuple[int, ...]) -> jax.Array:
    """Task vector i's DARE keep mask: ``Bernoulli(min(density, 1))`` of ``shape`` from ``fold_in(key, i)``.

    One draw per task vector, so a mask can be redrawn for one adapter alone (the streamed merge).
    """
    p = jnp.clip(jnp.asarray(density, jnp.float32), 0.0, 1.0)
    return jax.random.bernoulli(jax.random.fold_in(key, i), p, shape)


def dare_masks(key: jax.Array, density: jax.Array | float, tv: TaskVectors) -> TaskVectors:
    """Boolean keep masks ``~ Bernoulli(min(density, 1))``, one per entry of every task vector.

    Same structure and shapes as ``tv``; ``mask[i] = adapter_mask(key, i, ...)`` and, for a dict,
    module m uses ``module_key(key, m)``.
    """

    def draw(k, t):
        return jax.vmap(lambda i: adapter_mask(k, i, density, tuple(t.shape[1:])))(jnp.arange(t.shape[0]))

    if isinstance(tv, dict):
        return {m: draw(module_key(key, m), t) for m, t in tv.items()}
    return draw(key, tv)


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


# --------------------------------------------------------------------------- streamed, one module

STREAMED_METHODS = ("task_arithmetic", "ties", "dare", "dare_ties", "linear")


def merge_module_factors(
    a: jax.Array,
    b: jax.Array,
    scale: jax.Array,
    method: str,
    lam: jax.Array | float = 1.0,
    density: float = 1.0,
    key: jax.Array | None = None,
) -> jax.Array:
    """One module's merged dense update from its factors, one adapter's task vector at a time.

    ``a [N, r, d_in]``, ``b [N, d_out, r]``, ``scale [N]``: the adapters' factors of module m.
    The pruned task vector ``p_i = prune(s_i · B_i A_i)`` of one adapter is built, used and
    dropped inside a loop over the adapters (``lax.fori_loop``), so no ``[N, d_out, d_in]`` stack
    ever exists; the sums run over i in order, as the stacked reductions above:

        task_arithmetic  λ Σ_i τ_i                   linear  Σ_i τ_i / N
        dare             Σ_i λ · τ_i mask_i / density
        ties             σ = sign(Σ_i t_i) (+1 at 0), t = trim(τ);  Σ_i λ t_i [sign t_i = σ] / max(1, #agree)
        dare_ties        the same with t = τ·mask/density

    TIES and DARE-TIES take two passes (the election needs every adapter first): pass 1 sums the
    pruned vectors, pass 2 rebuilds each (masks redrawn from the same key) and sums the agreeing
    ones. ``key`` is this module's key (``module_key(key, m)``), so the masks equal the dict
    form's ``dare_masks(key, ...)[m]``. Computed in at least float32.
    """
    if method not in STREAMED_METHODS:
        raise EvoMergeInputError(f"method {method!r}, expected one of {', '.join(STREAMED_METHODS)}")
    random = method in ("dare", "dare_ties")
    if random and key is None:
        raise EvoMergeInputError(f"{method}: needs a PRNG key")
    dt = jnp.promote_types(jnp.promote_types(a.dtype, b.dtype), jnp.float32)
    a, b, scale = a.astype(dt), b.astype(dt), jnp.asarray(scale).astype(dt)
    n, d_out, d_in = b.shape[0], b.shape[1], a.shape[2]
    lam = jnp.asarray(lam, dt)

    def pruned(i):
        t = scale[i] * jnp.matmul(b[i], a[i], precision=_HIGHEST)  # τ_i = s_i · B_i A_i
        if method == "ties":
            return magnitude_prune(t[None], density)[0]
        if random:
            return dare_prune(t, adapter_mask(key, i, density, (d_out, d_in)), density)
        return t

    zero = jnp.zeros((d_out, d_in), dt)
    if method in ("task_arithmetic", "linear", "dare"):
        w = jnp.asarray(1.0 / n, dt) if method == "linear" else lam
        return jax.lax.fori_loop(0, n, lambda i, acc: acc + pruned(i) * w, zero)
    total = jax.lax.fori_loop(0, n, lambda i, acc: acc + pruned(i), zero)
    elected = jnp.where(total >= 0, 1, -1).astype(dt)

    def agree(i, carry):
        mixed, count = carry
        t = pruned(i)
        keep = jnp.sign(t) == elected
        return mixed + jnp.where(keep, t * lam, 0), count + keep.astype(dt)

    mixed, count = jax.lax.fori_loop(0, n, agree, (zero, zero))
    return mixed / jnp.maximum(count, 1.0)


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
