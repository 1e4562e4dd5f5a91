"""A unified task vector with per-task masks and rescalers (Elect, Mask, Rescale: EMR-Merging,
Huang et al. 2024), on dense updates ``τ_i^m = s_i · B_i^m A_i^m``.

    σ       = +1 if Σ_i τ_i > 0 else -1                            elected sign, per entry
    τ_uni   = σ · max_i |τ_i| [τ_i σ > 0]                           the largest agreeing magnitude
    M_i     = [τ_i ⊙ τ_uni > 0]                                     task i's mask
    λ_i     = Σ |τ_i| / Σ |M_i ⊙ τ_uni|                             task i's rescaler (0 when M_i is empty)
    ΔW_i    = λ_i · M_i ⊙ τ_uni                                     the update for task i

A zero total elects -1, as the released code's ``(Σ τ > 0) * 2 - 1``; an entry where no task agrees
with σ is 0 in τ_uni and in every mask. The sums of λ_i run over every entry of every module (the
paper's definition: one scalar per task for the whole model; the released code sums per-tensor
means instead, which weighs small tensors more).

Two forms: stacked over ``tv`` (one array ``[N, ...]`` or a dict ``module -> [N, ...]``), and
streamed per module from LoRA factors (``*_module``), one task vector alive at a time. The streamed
λ_i need every module first: ``module_sums`` returns one module's numerators and denominators,
summed over the modules by the caller, then ``rescalers`` divides.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from evojax_merge.merge.task_vectors import TaskVectors

_HIGHEST = jax.lax.Precision.HIGHEST


# --------------------------------------------------------------------------- stacked


def elected_sign(t: jax.Array) -> jax.Array:
    """``σ = +1 if Σ_i t_i > 0 else -1`` (a zero total elects -1), in ``t``'s dtype."""
    return jnp.where(t.sum(axis=0) > 0, 1, -1).astype(t.dtype)


def unified_vector(t: jax.Array) -> jax.Array:
    """``τ_uni = σ · max_i |t_i| [t_i σ > 0]`` of a stack ``t [N, ...]``."""
    sigma = elected_sign(t)
    agree = t * sigma > 0
    return sigma * jnp.where(agree, jnp.abs(t), 0).max(axis=0)


def agreement_masks(t: jax.Array, unified: jax.Array) -> jax.Array:
    """``M_i = [t_i ⊙ τ_uni > 0]``, ``[N, ...]`` bool."""
    return t * unified > 0


def rescalers(numerators: jax.Array, denominators: jax.Array) -> jax.Array:
    """``λ_i = num_i / den_i``, 0 where ``den_i = 0`` (task i agrees nowhere, so its update is 0 anyway)."""
    return jnp.where(denominators > 0, numerators / jnp.where(denominators > 0, denominators, 1), 0.0)


def unified_merge(tv: TaskVectors) -> tuple[TaskVectors, TaskVectors, jax.Array]:
    """``(τ_uni, M, λ)``: the unified vector and masks per module, the rescalers ``[N]`` over all modules."""
    leaves = tv if isinstance(tv, dict) else {"": tv}
    uni = {m: unified_vector(t) for m, t in leaves.items()}
    masks = {m: agreement_masks(t, uni[m]) for m, t in leaves.items()}
    num = sum(jnp.abs(t).reshape(t.shape[0], -1).sum(-1) for t in leaves.values())
    den = sum(jnp.where(masks[m], jnp.abs(uni[m]), 0).reshape(t.shape[0], -1).sum(-1) for m, t in leaves.items())
    lam = rescalers(num, den)
    if isinstance(tv, dict):
        return uni, masks, lam
    return uni[""], masks[""], lam


def modulated(unified: TaskVectors, masks: TaskVectors, lam: jax.Array, i: int) -> TaskVectors:
    """Task i's update ``λ_i · M_i ⊙ τ_uni`` (same structure as ``unified``)."""
    if isinstance(unified, dict):
        return {m: lam[i] * jnp.where(masks[m][i], u, 0) for m, u in unified.items()}
    return lam[i] * jnp.where(masks[i], unified, 0)


# --------------------------------------------------------------------------- streamed, one module


def _task_vector(a, b, scale, i):
    return scale[i] * jnp.matmul(b[i], a[i], precision=_HIGHEST)


def _cast(a, b, scale):
    dt = jnp.promote_types(jnp.promote_types(a.dtype, b.dtype), jnp.float32)
    return a.astype(dt), b.astype(dt), jnp.asarray(scale).astype(dt), dt


def unified_module(a: jax.Array, b: jax.Array, scale: jax.Array) -> jax.Array:
    """One module's ``τ_uni`` from its factors ``a [N, r, d_in]``, ``b [N, d_out, r]``, ``scale [N]``,
    in two passes over the adapters (the sign, then the largest agreeing magnitude)."""
    a, b, scale, dt = _cast(a, b, scale)
    n, zero = b.shape[0], jnp.zeros((b.shape[1], a.shape[2]), dt)
    total = jax.lax.fori_loop(0, n, lambda i, acc: acc + _task_vector(a, b, scale, i), zero)
    sigma = jnp.where(total > 0, 1, -1).astype(dt)

    def largest(i, acc):
        t = _task_vector(a, b, scale, i)
        return jnp.maximum(acc, jnp.where(t * sigma > 0, jnp.abs(t), 0))

    return sigma * jax.lax.fori_loop(0, n, largest, zero)


def module_sums(a: jax.Array, b: jax.Array, scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One module's share of the rescalers: ``(Σ|τ_i|, Σ|M_i ⊙ τ_uni|)``, each ``[N]``."""
    uni = unified_module(a, b, scale)
    a, b, scale, dt = _cast(a, b, scale)
    n = b.shape[0]

    def one(i, carry):
        num, den = carry
        t = _task_vector(a, b, scale, i)
        return (num.at[i].set(jnp.abs(t).sum()),
                den.at[i].set(jnp.where(t * uni > 0, jnp.abs(uni), 0).sum()))

    return jax.lax.fori_loop(0, n, one, (jnp.zeros((n,), dt), jnp.zeros((n,), dt)))


def modulated_module(a: jax.Array, b: jax.Array, scale: jax.Array, i: jax.Array, lam_i: jax.Array) -> jax.Array:
    """One module's update for task i: ``λ_i · M_i ⊙ τ_uni``; ``i < 0`` gives ``τ_uni`` itself (no mask, no rescale)."""
    uni = unified_module(a, b, scale)
    a, b, scale, dt = _cast(a, b, scale)
    j = jnp.maximum(i, 0)
    t = _task_vector(a, b, scale, j)
    return jnp.where(i < 0, uni, jnp.asarray(lam_i, dt) * jnp.where(t * uni > 0, uni, 0))


module_sums_jit = jax.jit(module_sums)


@partial(jax.jit, static_argnames=("out_dtype",))
def modulated_module_jit(a, b, scale, i, lam_i, out_dtype):
    """``modulated_module`` jitted, cast to ``out_dtype``."""
    return modulated_module(a, b, scale, i, lam_i).astype(out_dtype)
