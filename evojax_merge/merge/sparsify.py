"""Sparsity-based denoising ``S_a`` of Evo-Merging (docs/methods.md §1): magnitude pruning of one tensor.

    k   = max(1, round(a · numel(x)))            round half to even of the EXACT product
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


def _shr64(hi: jax.Array, lo: jax.Array, shift: jax.Array) -> jax.Array:
    """The low 32 bits of ``(hi·2^32 + lo) >> shift`` for ``shift`` in [1, 63] (uint32 words)."""
    big = shift >= 32
    s_lo = jnp.where(big, 1, shift)  # keeps both shift amounts of the unused branch in range
    s_hi = jnp.where(big, shift - 32, 0)
    return jnp.where(big, hi >> s_hi, (lo >> s_lo) | (hi << (32 - s_lo)))


def keep_count(a: jax.Array | float, numel: int) -> jax.Array:
    """Number of entries to keep: ``k = clip(round(a · numel), 1, numel)`` (int32), ``a`` float32.

    ``round`` is round-half-to-even of the EXACT real product of the float32 value of ``a`` and
    ``numel``, as the reference computes it: Python's ``round(numel * float(np.float32(a)))``
    (docs/methods.md §1). The float32 product ``a · numel`` is itself rounded and gives k off by
    one for some fractions (a = 0.39098012, numel = 1408: exact 550.50000896 -> 551, float32
    550.5 -> 550). Without x64 the 55-bit product is done in integers: ``a = m · 2^-s`` with a
    24-bit mantissa m and s >= 23 (``a`` clipped to [0, 1]; NaN counts as 0), ``P = m · numel``
    in 12-bit limbs carried into two uint32 words, ``k = P >> s`` plus one when the bit below is
    set and either a lower bit is set or k is odd. ``numel`` is static, below 2^31.
    """
    numel = int(numel)
    if not 0 < numel < 2**31:
        raise EvoMergeInputError(f"keep_count: numel={numel} outside [1, 2^31)")
    a = jnp.asarray(a).astype(jnp.float32)  # bf16/f16/int exactly; a float64 genome rounds to float32
    a = jnp.where(jnp.isnan(a), 0.0, jnp.clip(a, 0.0, 1.0))
    u32 = jnp.uint32
    bits = jax.lax.bitcast_convert_type(a, u32)
    exp = (bits >> 23) & u32(0xFF)
    m = jnp.where(exp > 0, (bits & u32(0x7FFFFF)) | u32(0x800000), bits & u32(0x7FFFFF))
    s = jnp.where(exp > 0, u32(150) - exp, u32(149))  # a = m · 2^-s; a <= 1 gives s >= 23
    s = jnp.minimum(s, u32(60))  # P < 2^55, so every s >= 56 rounds to 0 alike
    # P = m · numel = Σ c_j 2^(12 j), each partial product below 2^26; then carry into 12-bit limbs
    m0, m1 = m & u32(0xFFF), m >> 12
    n0, n1, n2 = (u32(numel & 0xFFF), u32((numel >> 12) & 0xFFF), u32(numel >> 24))
    c0 = m0 * n0
    c1 = m1 * n0 + m0 * n1 + (c0 >> 12)
    c2 = m1 * n1 + m0 * n2 + (c1 >> 12)
    c3 = m1 * n2 + (c2 >> 12)
    lo = (c0 & u32(0xFFF)) | ((c1 & u32(0xFFF)) << 12) | ((c2 & u32(0xFF)) << 24)
    hi = ((c2 & u32(0xFFF)) >> 8) | (c3 << 4)
    q = _shr64(hi, lo, s)
    half = _shr64(hi, lo, s - 1) & u32(1)
    t = s - 1  # bits below t are the sticky bits, t in [22, 59]
    mask_lo = jnp.where(t >= 32, u32(0xFFFFFFFF), (u32(1) << jnp.minimum(t, u32(31))) - 1)
    mask_hi = jnp.where(t > 32, (u32(1) << jnp.clip(t - 32, 0, 31).astype(u32)) - 1, u32(0))
    sticky = ((lo & mask_lo) != 0) | ((hi & mask_hi) != 0)
    k = q + ((half == 1) & (sticky | ((q & 1) == 1))).astype(u32)
    return jnp.clip(k.astype(jnp.int32), 1, numel)


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


def stack_magnitudes(stack: LoraStack, which: Sequence[str] = ("A",)) -> dict[str, dict[str, jax.Array]]:
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
