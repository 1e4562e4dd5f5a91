"""Sparsity-based denoising ``S_a`` of Evo-Merging (docs/methods.md §1): magnitude pruning of one tensor.

    k   = max(1, round(a · numel(x)))            round half to even (jnp.round)
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


def keep_count(a: jax.Array | float, numel: int) -> jax.Array:
    """Number of entries to keep: ``k = clip(max(1, round(a · numel)), 1, numel)`` (int32).

    ``round`` is round-half-to-even (``jnp.round``, Python's ``round``) of the product computed in
    ``a``'s floating dtype (float32 unless x64): bitwise what numpy gives for
    ``round(np.float32(a) * numel)``, and Python's ``round(a * numel)`` for a float64 ``a``. Why
    not the exact real product of the float32 value: a config's ``alpha = 0.7`` is stored as
    0.69999999; the float32 product ``· 5`` rounds back onto 3.5 -> 4, as the decimal (and
    Python's float64) intends, where the exact product 3.4999999 would give 3.
    """
    a = jnp.asarray(a)
    if a.dtype not in (jnp.float32, jnp.float64):
        a = a.astype(jnp.float32)  # ints, and bf16/f16 (8-11 bit products would be far off)
    k = jnp.round(a * jnp.asarray(numel, a.dtype))
    # NaN/negative/> 1 fractions still give a valid index; sparsify zeroes a <= 0 (and NaN).
    k = jnp.where(jnp.isnan(k), 1, k)
    return jnp.clip(k, 1, numel).astype(jnp.int32)


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
