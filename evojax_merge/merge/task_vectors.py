"""Generalized task arithmetic (docs/methods.md §3) on dense updates ``τ_i^m = s_i · B_i^m A_i^m``.

One merge made of parts, per module m, with the N task vectors stacked on axis 0:

    τ_merged = consensus(sparsify(τ_1 .. τ_N), w),    w_i = λ · weight_i   (weight_i = 1 by default)

- ``sparsify``: a ``Sparsifier`` (``merge/sparsifiers.py``): none, magnitude trim, random drop with
  rescale, the magnitude band, the rank-scaled random drop;
- ``consensus``: a ``Consensus`` (``merge/consensus.py``): ``Sum`` (``Σ_i w_i p_i``) or
  ``SignElection`` (elect ``σ = +1 if Σ_i p_i >= 0 else -1`` on the UNweighted sparsified tensors,
  keep entries with ``sign(p_i) == σ``, then ``Σ_i w_i p_i [agree] / max(1, #agree)``: the
  disjoint mean).

The papers' merges are configurations of these parts (conf/method/*.yaml):

    task arithmetic   keep_all          + Sum            λ Σ_i τ_i
    TIES              magnitude_prune   + SignElection
    DARE              random_drop       + Sum
    DARE-TIES         random_drop       + SignElection
    Breadcrumbs       magnitude_band    + Sum
    DELLA             ranked_drop       + SignElection

Semantics follow ``peft.utils.merge_utils`` exactly where peft has the merge (the test oracle).
Every ``tv`` argument of the stacked form is one array ``[N, ...]`` or a dict ``module -> [N, ...]``;
the result has the same structure without the N axis. A random sparsifier draws task vector i of
module m from ``fold_in(module_key(key, m), i)``; ``merge_module_factors`` is the streamed form of
one module (one task vector alive at a time) with the same draws. ``to_low_rank`` turns a merged
dense update back into a rank-r adapter.
"""

from __future__ import annotations

import zlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import LoraAdapter, LoraStack
from evojax_merge.merge.consensus import Consensus, _weighted_sum
from evojax_merge.merge.sparsifiers import Sparsifier, task_keys

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


def module_key(key: jax.Array, module: str) -> jax.Array:
    """The PRNG key of one module: ``fold_in(key, crc32(module))``.

    Folding in the module NAME (not its position) makes a module's draws independent of which other
    modules are merged alongside it, so merging module by module gives the same result.
    """
    return jax.random.fold_in(key, zlib.crc32(module.encode()) & 0x7FFFFFFF)


def _tree_map(fn, tv: TaskVectors, *rest):
    """Apply ``fn(t, *rest_leaves)`` per module of a dict, or once to a bare array."""
    if isinstance(tv, dict):
        return {m: fn(t, *(r[m] for r in rest)) for m, t in tv.items()}
    return fn(tv, *rest)


# --------------------------------------------------------------------------- merges


def linear(tv: TaskVectors, weights: jax.Array | None = None) -> TaskVectors:
    """Linear / model soup: ``Σ_i w_i τ_i``, uniform ``w_i = 1/N`` by default."""

    def one(t):
        w = jnp.full((t.shape[0],), 1.0 / t.shape[0], t.dtype) if weights is None else weights
        return _weighted_sum(t, _weights(t, w, 1.0))

    return _tree_map(one, tv)


def merge_task_vectors(
    tv: TaskVectors,
    sparsifier: Sparsifier,
    consensus: Consensus,
    lam: jax.Array | float = 1.0,
    density: jax.Array | float = 1.0,
    key: jax.Array | None = None,
    *,
    weights: jax.Array | None = None,
) -> TaskVectors:
    """``consensus(sparsifier(τ, density, keys), λ · w)`` per module, stacked.

    ``keys = task_keys(module_key(key, m), N)`` for module m of a dict (``task_keys(key, N)`` for a
    bare array); ``w = 1`` by default. With ``magnitude_prune`` + ``SignElection`` this is peft's
    ``ties(τ, λ·w, density)``, with ``random_drop`` + ``Sum`` its ``dare_linear``, with
    ``random_drop`` + ``SignElection`` its ``dare_ties``, with ``keep_all`` + ``Sum`` its
    ``task_arithmetic``.
    """
    if sparsifier.random and key is None:
        raise EvoMergeInputError(f"sparsifier {sparsifier.name}: needs a PRNG key")

    def one(t, k):
        keys = None if k is None else task_keys(k, t.shape[0])
        return consensus(sparsifier(t, density, keys), _weights(t, weights, lam))

    if isinstance(tv, dict):
        return {m: one(t, None if key is None else module_key(key, m)) for m, t in tv.items()}
    return one(tv, key)


# --------------------------------------------------------------------------- streamed, one module


def merge_module_factors(
    a: jax.Array,
    b: jax.Array,
    scale: jax.Array,
    sparsifier: Sparsifier,
    consensus: Consensus,
    lam: jax.Array | float = 1.0,
    density: jax.Array | float = 1.0,
    key: jax.Array | None = None,
    weights: jax.Array | None = None,
) -> jax.Array:
    """One module's merged dense update from its factors, one adapter's task vector at a time.

    ``a [N, r, d_in]``, ``b [N, d_out, r]``, ``scale [N]``: the adapters' factors of module m.
    ``p_i = sparsifier(s_i · B_i A_i, density, fold_in(key, i))`` of one adapter is built, used and
    dropped inside ``consensus.stream``'s loop over the adapters (``lax.fori_loop``), so no
    ``[N, d_out, d_in]`` stack ever exists; a second pass rebuilds each ``p_i`` from the same key.
    ``key`` is this module's key (``module_key(key, m)``), so the draws equal the stacked form's.
    ``w_i = λ · weights_i`` (``λ`` when ``weights`` is None). Computed in at least float32.
    """
    if sparsifier.random and key is None:
        raise EvoMergeInputError(f"sparsifier {sparsifier.name}: needs a PRNG key")
    dt = jnp.promote_types(jnp.promote_types(a.dtype, b.dtype), jnp.float32)
    a, b, scale = a.astype(dt), b.astype(dt), jnp.asarray(scale).astype(dt)
    n, d_out, d_in = b.shape[0], b.shape[1], a.shape[2]
    lam = jnp.asarray(lam, dt)
    w = None if weights is None else lam * jnp.asarray(weights, dt)

    def item(i):
        t = scale[i] * jnp.matmul(b[i], a[i], precision=_HIGHEST)  # τ_i = s_i · B_i A_i
        keys = None if key is None else jax.random.fold_in(key, i)[None]
        return sparsifier(t[None], density, keys)[0]

    return consensus.stream(item, n, (lambda i: lam) if w is None else (lambda i: w[i]), jnp.zeros((d_out, d_in), dt))


@partial(jax.jit, static_argnames=("sparsifier", "consensus", "density", "out_dtype"))
def merge_module(a: jax.Array, b: jax.Array, scale: jax.Array, sparsifier: Sparsifier, consensus: Consensus,
                 lam: jax.Array, density: float, key: jax.Array | None, out_dtype) -> jax.Array:
    """``merge_module_factors`` jitted, cast to ``out_dtype``. ``density`` is static: a trim count
    is then ``floor(density · numel)`` in float64, as peft computes it."""
    return merge_module_factors(a, b, scale, sparsifier, consensus, lam, density, key).astype(out_dtype)


# --------------------------------------------------------------------------- streamed, cut once


def _tau(a: jax.Array, b: jax.Array, scale: jax.Array, i) -> jax.Array:
    """``τ_i = s_i · B_i A_i`` of one module, as :func:`merge_module_factors` builds it."""
    return scale[i] * jnp.matmul(b[i], a[i], precision=_HIGHEST)


@jax.jit
def module_cuts(a: jax.Array, b: jax.Array, scale: jax.Array, ks: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(thr [J, N], need [J, N])``: each adapter's magnitude-rank cut (``sparsifiers.rank_cut``, a radix
    select: no sort) at each of the ranks ``ks [J]``. A grid over densities computes these once per module
    and cell; :func:`merge_module_cuts` then merges any grid point from them."""
    from evojax_merge.merge.sparsifiers import rank_cut

    dt = jnp.promote_types(jnp.promote_types(a.dtype, b.dtype), jnp.float32)
    a, b, scale = a.astype(dt), b.astype(dt), jnp.asarray(scale).astype(dt)

    def one(i):
        flat = jnp.abs(_tau(a, b, scale, i)).reshape(1, -1)
        return jax.vmap(lambda k: tuple(x[0] for x in rank_cut(flat, k)))(ks)

    thr, need = jax.lax.map(one, jnp.arange(b.shape[0]))  # [N, J] each, one task vector alive at a time
    return thr.T, need.T


@partial(jax.jit, static_argnames=("sparsifier", "consensus", "out_dtype"))
def merge_module_cuts(a: jax.Array, b: jax.Array, scale: jax.Array, sparsifier: Sparsifier, consensus: Consensus,
                      lam: jax.Array, ks: jax.Array, thr: jax.Array, need: jax.Array, out_dtype) -> jax.Array:
    """:func:`merge_module` of a rank-based sparsifier (``sparsifier.rank_based``) from its precomputed cuts
    (:func:`module_cuts` at ``ks [J]``, the sparsifier's ``rank_counts`` at one density): the same merge,
    no cut computed again, and one compile for every density (``ks`` is traced)."""
    from evojax_merge.merge.sparsifiers import cut_mask

    dt = jnp.promote_types(jnp.promote_types(a.dtype, b.dtype), jnp.float32)
    a, b, scale = a.astype(dt), b.astype(dt), jnp.asarray(scale).astype(dt)
    lam = jnp.asarray(lam, dt)

    def item(i):
        t = _tau(a, b, scale, i)
        flat = jnp.abs(t).reshape(1, -1)
        masks = [cut_mask(flat, thr[j, i][None], need[j, i][None], ks[j]) for j in range(ks.shape[0])]
        return jnp.where(sparsifier.fn.from_cuts(masks).reshape(t.shape), t, jnp.zeros((), dt))

    zero = jnp.zeros((b.shape[1], a.shape[2]), dt)
    return consensus.stream(item, b.shape[0], lambda i: lam, zero).astype(out_dtype)


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
