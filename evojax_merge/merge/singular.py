"""Task singular vectors, whitened (TSV-Merge, Gargiulo et al. 2025), per matrix update.

For N task updates ``τ_i = U_i Σ_i V_iᵀ`` (thin SVD) of one ``[d_out, d_in]`` matrix:

    k     = floor(min(d_out, d_in) / N)                       components kept per task (capped at the
                                                              rank r of a LoRA update, see below)
    U     = [U_1[:, :k] | ... | U_N[:, :k]]   [d_out, N k]     the tasks' top singular vectors side by side
    V     = [V_1[:, :k] | ... | V_N[:, :k]]   [d_in,  N k]
    Σ     = diag(Σ_1[:k], ..., Σ_N[:k])
    U⊥    = P Qᵀ  for  U = P S Qᵀ (thin SVD)                   the nearest matrix with orthonormal columns
    V⊥    likewise
    ΔW    = α · U⊥ Σ V⊥ᵀ                                        α: the scale searched on a λ grid

The result does not depend on the sign or rotation freedom of each task's SVD (the polar factor is
equivariant: ``polar(U R) = polar(U) R`` for orthogonal R), as long as the N k columns of U (and of
V) are linearly independent; otherwise the whitening is not unique.

A LoRA update ``τ_i = s_i B_i A_i`` has rank at most r, and its SVD comes from the factors without
the dense matrix: ``B_i = Q_b R_b``, ``A_iᵀ = Q_a R_a`` (thin QR), ``s_i R_b R_aᵀ = u σ vᵀ``, so
``U_i = Q_b u``, ``Σ_i = σ``, ``V_i = Q_a v``. The whitening then works on ``[d, N k]`` matrices; only
the output ``ΔW`` is ``[d_out, d_in]``. The cap k <= r matters: past the rank the singular values
are 0 and a dense SVD returns arbitrary null-space vectors for them, which add nothing through Σ
but change the whitening of the other columns (so the paper's k = min(d_out, d_in)/N on a dense
LoRA update gives an implementation-dependent result; with Llama-8B shapes (min dim 1024) and
N <= 128 adapters of rank 8 the paper's k is >= 8, so the cap keeps what it keeps).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def components_per_task(num_tasks: int, d_out: int, d_in: int, rank: int | None = None) -> int:
    """``k = floor(min(d_out, d_in) / N)``, at most ``rank`` (a LoRA update's singular values past r are 0)."""
    k = min(d_out, d_in) // max(num_tasks, 1)
    return k if rank is None else min(k, rank)


def polar(x: jax.Array) -> jax.Array:
    """``P Qᵀ`` for ``x = P S Qᵀ`` (thin SVD): the matrix with orthonormal columns nearest to ``x``
    ``[m, c]``, c <= m (its polar factor)."""
    p, _, qt = jnp.linalg.svd(x, full_matrices=False)
    return jnp.matmul(p, qt, precision=_HIGHEST)


def whiten_and_combine(u: jax.Array, s: jax.Array, v: jax.Array) -> jax.Array:
    """``polar(U) diag(Σ) polar(V)ᵀ`` from the tasks' components ``u [N, d_out, k]``, ``s [N, k]``,
    ``v [N, d_in, k]`` (U, V: the components side by side, task after task)."""
    n, d_out, k = u.shape
    if n * k == 0:
        return jnp.zeros((d_out, v.shape[1]), u.dtype)
    uc = jnp.moveaxis(u, 0, 1).reshape(d_out, n * k)
    vc = jnp.moveaxis(v, 0, 1).reshape(v.shape[1], n * k)
    return jnp.matmul(polar(uc) * s.reshape(n * k)[None, :], polar(vc).T, precision=_HIGHEST)


def factor_components(a: jax.Array, b: jax.Array, scale: jax.Array, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The top-k SVD components of each ``τ_i = s_i B_i A_i`` from its factors ``a [N, r, d_in]``,
    ``b [N, d_out, r]``: ``(U [N, d_out, k], Σ [N, k], V [N, d_in, k])``, Σ descending. ``k`` is static."""

    def one(a_i, b_i, s_i):
        qb, rb = jnp.linalg.qr(b_i)  # [d_out, r'], [r', r]
        qa, ra = jnp.linalg.qr(a_i.T)  # [d_in, r''], [r'', r]
        u, sig, vt = jnp.linalg.svd(s_i * jnp.matmul(rb, ra.T, precision=_HIGHEST), full_matrices=False)
        return (jnp.matmul(qb, u[:, :k], precision=_HIGHEST), sig[:k],
                jnp.matmul(qa, vt[:k].T, precision=_HIGHEST))

    return jax.vmap(one)(a, b, scale)


def dense_components(t: jax.Array, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The top-k SVD components of each dense ``t[i]`` ``[d_out, d_in]``: ``(U, Σ, V)`` as ``factor_components``."""
    u, s, vt = jnp.linalg.svd(t, full_matrices=False)
    return u[..., :k], s[..., :k], jnp.swapaxes(vt[..., :k, :], -1, -2)


def singular_merge_dense(t: jax.Array, k: int | None = None) -> jax.Array:
    """``U⊥ Σ V⊥ᵀ`` (α = 1) of the dense updates ``t [N, d_out, d_in]``; ``k`` defaults to ``components_per_task``."""
    n, d_out, d_in = t.shape
    k = components_per_task(n, d_out, d_in) if k is None else k
    dt = jnp.promote_types(t.dtype, jnp.float32)
    return whiten_and_combine(*dense_components(t.astype(dt), k))


def singular_merge_factors(a: jax.Array, b: jax.Array, scale: jax.Array, k: int | None = None) -> jax.Array:
    """``U⊥ Σ V⊥ᵀ`` (α = 1) of one module's LoRA updates, from the factors; ``k`` defaults to
    ``components_per_task(N, d_out, d_in, r)``. Computed in at least float32."""
    n, d_out, r = b.shape
    d_in = a.shape[2]
    k = components_per_task(n, d_out, d_in, r) if k is None else k
    dt = jnp.promote_types(jnp.promote_types(a.dtype, b.dtype), jnp.float32)
    comps = factor_components(a.astype(dt), b.astype(dt), jnp.asarray(scale).astype(dt), k)
    return whiten_and_combine(*comps)


@partial(jax.jit, static_argnames=("out_dtype",))
def singular_merge_module(a: jax.Array, b: jax.Array, scale: jax.Array, alpha: jax.Array, out_dtype) -> jax.Array:
    """``α · singular_merge_factors(a, b, scale)`` jitted, cast to ``out_dtype``."""
    return (jnp.asarray(alpha, jnp.float32) * singular_merge_factors(a, b, scale)).astype(out_dtype)
