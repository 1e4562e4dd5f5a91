"""Evo-Merging's factor-wise merge (docs/methods.md §1): sparsify each adapter, then a signed sum.

    A_merged^m = Σ_i beta_i · S_{alpha_i}(A_i^m)                  [r, d_in]
    B_merged^m = Σ_i beta_i · (s_i / s_0) · B_i^m                 [d_out, r]
    scale      = s_0                                              (s_i / s_0 = 1 in the paper)

The result is one ordinary rank-r adapter; ``ΔW^m = s_0 · B_merged^m A_merged^m`` (with the cross
terms B_i A_j) is never built here: the forward applies the factors, so one candidate costs a
gather, a compare and two contractions over the N adapters per module.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import LoraAdapter, LoraStack
from evojax_merge.merge.sparsify import keep_threshold

PruneMode = Literal["A", "B", "both", "none"]
PRUNE_MODES: tuple[str, ...] = ("A", "B", "both", "none")

def _check_genome(stack: LoraStack, name: str, x: jax.Array) -> None:
    n = stack.scale.shape[0]
    if x.shape != (n,):
        raise EvoMergeInputError(f"{name} has shape {x.shape}, expected ({n},): one per adapter")


def _combine(coef: jax.Array, x: jax.Array) -> jax.Array:
    """``Σ_i coef_i · x_i`` as one contraction (a GEMM over the population under vmap).

    Full float32 (HIGHEST): the default on GPU/TPU would use TF32/bf16 passes for f32 dots, which
    would make the merged weights (and the search) depend on the backend.
    """
    return jnp.tensordot(coef, x, axes=(0, 0), precision=jax.lax.Precision.HIGHEST)


def _combine_masked(coef: jax.Array, x: jax.Array, mags: jax.Array | None = None,
                    alpha: jax.Array | None = None) -> jax.Array:
    """``Σ_i coef_i · keep_i ⊙ x_i``, accumulated adapter by adapter in order (exact float32).

    ``keep_i = |x_i| >= thr_i`` and ``alpha_i > 0``, ``thr_i = keep_threshold(mags_i, alpha_i)``
    (a gather, no sort); no mask when ``mags`` is None. A loop over i (``lax.fori_loop``) builds
    each adapter's term and mask in place, so no ``[N, ...]`` product or mask (under a population
    vmap: ``[P, N, ...]``) is ever written out: the merge's memory is the merged factor's. Without
    a mask it is the same sum in the same order, so alpha = 1 is bitwise the unpruned merge.
    """
    thr = None if mags is None else jax.vmap(keep_threshold)(mags, alpha)

    def add(i, acc):
        xi = x[i]
        if thr is not None:  # mask the factor, then the same multiply-add as without a mask
            xi = jnp.where((jnp.abs(xi) >= thr[i]) & (alpha[i] > 0), xi, jnp.zeros((), xi.dtype))
        return acc + coef[i] * xi

    out_dtype = jnp.result_type(coef.dtype, x.dtype)
    return jax.lax.fori_loop(0, x.shape[0], add, jnp.zeros(x.shape[1:], out_dtype))


def evo_merge(
    stack: LoraStack,
    magnitudes: dict[str, dict[str, jax.Array]] | None,
    alpha: jax.Array,
    beta: jax.Array,
    prune: PruneMode = "A",
) -> LoraAdapter:
    """Merge ``stack`` into one rank-r adapter with keep fractions ``alpha`` and signs/scales ``beta``.

        A^m = Σ_i beta_i · P_A(S_{alpha_i})(A_i^m),   B^m = Σ_i beta_i · (s_i/s_0) · P_B(S_{alpha_i})(B_i^m)
        scale = s_0 = stack.scale[0]

    where ``P_f(S) = S`` if factor f is pruned under ``prune`` and the identity otherwise:
    ``"A"`` (the paper), ``"B"`` (ablation: prune B instead), ``"both"``, ``"none"`` (no
    denoising, LoraHub). ``magnitudes``: ``stack_magnitudes(stack, which=...)`` holding each pruned
    factor (may be None for ``"none"``). ``alpha``, ``beta``: ``[N]``. ``prune`` is static: under
    ``jit`` close over it or mark it ``static_argnames``. vmap over (alpha, beta) for a population.
    The output dtype is the promotion of the stack's and beta's dtypes.
    """
    if prune not in PRUNE_MODES:
        raise EvoMergeInputError(f"prune={prune!r}, expected one of {PRUNE_MODES}")
    alpha = jnp.asarray(alpha)
    beta = jnp.asarray(beta)
    _check_genome(stack, "alpha", alpha)
    _check_genome(stack, "beta", beta)
    pruned = {"A": prune in ("A", "both"), "B": prune in ("B", "both")}
    for f, on in pruned.items():
        if on and (magnitudes is None or f not in magnitudes):
            raise EvoMergeInputError(f"prune={prune!r} needs magnitudes[{f!r}]: use stack_magnitudes(stack, which=...)")

    # The merged adapter keeps adapter 0's scale; the others' scales are folded into B so that
    # each diagonal term still reads beta_i^2 · s_i · B_i A_i. Exactly beta when scales are equal.
    coef_b = beta * (stack.scale / stack.scale[0])

    merged_a, merged_b = {}, {}
    # modules: a static Python loop; adapters: one fused reduction (A, and a pruned B) or one GEMM (B)
    for m, a in stack.A.items():
        merged_a[m] = _combine_masked(beta, a, *((magnitudes["A"][m], alpha) if pruned["A"] else ()))
    for m, b in stack.B.items():
        pruned_b = _combine_masked(coef_b, b, magnitudes["B"][m], alpha) if pruned["B"] else None
        merged_b[m] = pruned_b if pruned_b is not None else _combine(coef_b, b)
    return LoraAdapter(A=merged_a, B=merged_b, scale=stack.scale[0])
