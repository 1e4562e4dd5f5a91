"""Sparsity-based denoising ``S_a`` of Evo-Merging (methods.md §1): magnitude pruning of one tensor.

    k   = max(1, round(a · numel(x)))            round half to even, of the exact product
    thr = k-th largest |x|                        a gather into magnitudes sorted ONCE
    S_a(x) = x · [|x| >= thr]                     survivors are NOT rescaled (this is not DARE)
    S_0(x) = 0,  S_1(x) = x

The search evaluates thousands of keep fractions on the same pool, so the descending magnitudes
are computed once when the pool loads (``sorted_magnitudes`` / ``stack_magnitudes``) and every
candidate only does a gather plus an elementwise compare: no sort inside ``jit``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import LoraStack

FACTORS = ("A", "B")


def sorted_magnitudes(x: jax.Array) -> jax.Array:
    """Per-adapter magnitudes, flattened and sorted descending.

    ``out[i] = sort_desc(|x[i]|.ravel())``, shape ``[N, numel]`` for ``x`` of shape ``[N, ...]``.
    """
    mags = jnp.abs(x).reshape(x.shape[0], -1)
    # Ascending sort then flip: exact values, and |x| >= 0 has no -0.0/NaN ordering subtleties.
    return jnp.flip(jnp.sort(mags, axis=-1), axis=-1)


def _split_hi_lo(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Split float32 ``a = hi + lo`` exactly, each part with at most 12 significant bits."""
    bits = lax.bitcast_convert_type(a, jnp.uint32)
    hi = lax.bitcast_convert_type(bits & jnp.uint32(0xFFFFF000), jnp.float32)
    return hi, a - hi  # a - hi is exact (Sterbenz-like: same exponent range, fewer bits)


def keep_count(a: jax.Array | float, numel: int) -> jax.Array:
    """Number of entries to keep: ``k = clip(max(1, round(a · numel)), 1, numel)`` (int32).

    ``round`` is round-half-to-even of the EXACT real product ``a · numel`` for the given
    (float32) ``a``, i.e. Python's ``round(float(a) * numel)``; ``a`` is clipped to [0, 1] first.
    A plain float32 ``jnp.round(a * numel)`` would be off by one whenever the product rounds onto a
    half-integer (e.g. float32(0.7) · 45 = 31.4999995 -> 31.5 -> 32), so the rounding error of the
    product is recovered exactly (Dekker two-product) and used to break such ties.
    """
    a = jnp.asarray(a)
    if a.dtype == jnp.float64 or numel >= 2**24:
        # float64 (x64 mode): one IEEE multiply, bitwise what Python computes.
        # Huge numel cannot be split exactly in float32; plain rounding is the best available.
        k = jnp.round(jnp.clip(a, 0.0, 1.0) * numel)
        return jnp.clip(jnp.maximum(k, 1), 1, numel).astype(jnp.int32)
    a = jnp.clip(a.astype(jnp.float32), 0.0, 1.0)
    n_hi, n_lo = float(numel & ~0xFFF), float(numel & 0xFFF)  # each < 2^12 significant bits
    a_hi, a_lo = _split_hi_lo(a)
    p = a * jnp.float32(numel)
    # Two-product: every partial product is exact (<= 24 bits), so err = a·numel - p exactly.
    err = ((a_hi * n_hi - p) + a_hi * n_lo + a_lo * n_hi) + a_lo * n_lo
    fl = jnp.floor(p)
    on_half = (p - fl) == 0.5
    # p is a half-integer only if the exact product is within half an ulp of it: err decides.
    k = jnp.where(on_half & (err > 0), fl + 1, jnp.where(on_half & (err < 0), fl, jnp.round(p)))
    return jnp.clip(jnp.maximum(k, 1), 1, numel).astype(jnp.int32)


def keep_threshold(sorted_desc: jax.Array, a: jax.Array | float) -> jax.Array:
    """The keep threshold for fraction ``a``: ``thr = sorted_desc[k - 1]``, k from ``keep_count``.

    ``sorted_desc``: ``[numel]`` magnitudes sorted descending (one row of ``sorted_magnitudes``).
    A gather, not a sort. ``a = 0`` is handled by ``sparsify`` (k is never below 1 here).
    """
    k = keep_count(a, sorted_desc.shape[-1])
    return sorted_desc[k - 1]


def sparsify(x: jax.Array, sorted_desc: jax.Array, a: jax.Array | float) -> jax.Array:
    """``S_a(x)``: zero the entries with ``|x| < thr``, keep ``|x| >= thr`` unscaled; ``S_0 = 0``.

    ``thr = keep_threshold(sorted_desc, a)``; tied magnitudes at ``thr`` are all kept, so more than
    k entries may survive. ``a = 1`` returns ``x`` unchanged (``thr`` is the minimum ``|x|``).
    One tensor; ``jax.vmap(sparsify)(x[N, ...], sorted_magnitudes(x), a[N])`` for a stack.
    """
    a = jnp.asarray(a)
    thr = keep_threshold(sorted_desc, a)
    # `a > 0` (False for NaN too) makes a = 0 all zeros, which k = max(1, .) alone would not.
    keep = (jnp.abs(x) >= thr) & (a > 0)
    return jnp.where(keep, x, jnp.zeros((), x.dtype))


def stack_magnitudes(
    stack: LoraStack, which: Sequence[str] = ("A",)
) -> dict[str, dict[str, jax.Array]]:
    """Sorted magnitudes of a stack's factors, computed once when the pool loads.

    ``out[f][m] = sorted_magnitudes(stack.f[m])``, shape ``[N, numel]``, for each factor
    ``f in which`` (``"A"`` and/or ``"B"``: ``"B"`` only for the prune-B/both ablations).
    """
    which = tuple(which)
    bad = [f for f in which if f not in FACTORS]
    if bad:
        raise EvoMergeInputError(f"stack_magnitudes: which={which!r}, expected a subset of {FACTORS}")
    factors = {"A": stack.A, "B": stack.B}
    return {f: {m: sorted_magnitudes(x) for m, x in factors[f].items()} for f in which}
