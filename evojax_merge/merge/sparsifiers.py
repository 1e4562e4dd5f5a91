"""Sparsifiers: the first stage of a generalized task-vector merge (docs/methods.md §3).

    τ_merged = λ · consensus(sparsify(τ_1 .. τ_N))

A sparsifier is one pure function with the common signature

    sparsifier(t [N, ...], density, keys [N] | None, **options) -> [N, ...]

where row ``t[i]`` is task vector τ_i and a random sparsifier draws row i from ``keys[i]`` alone
(``task_keys``), so a stream that builds one task vector at a time (``t[i:i+1]``, ``keys[i:i+1]``)
gets exactly the rows of the whole stack (with the default threefry keys: ``rbg`` keys draw
differently under ``vmap``). Every sparsifier returns ``t`` unchanged at
``density >= 1`` and zeros at ``density <= 0``. The rescaling of the survivors, when there is one,
belongs to the sparsifier (it depends on each entry's keep probability, which only it knows).

    keep_all          t                                                   (no density)
    magnitude_prune   t · [rank_i(j) < k],  k = floor(density · numel)    top-k |entries| of each t_i
    random_drop       t · m / density,      m ~ Bernoulli(density)        drop and rescale
    magnitude_band    t · [s <= rank_i(j) < s + k],  s = min(floor(γ · numel), numel - k)
                      the band below the γ largest |entries|: drops the smallest AND the largest
    ranked_drop       t · m / q,  m ~ Bernoulli(q),  q = clip(density + ε (1 - 2 pos/(L - 1)), 0, 1)
                      per row of length L, pos = 0 for the largest |entry| of the row; the keep
                      probability falls linearly from density + ε to density - ε with the rank

``rank_i(j)`` is entry j's position in τ_i's entries sorted by decreasing magnitude, ties broken
toward the lower flat index (``torch.topk`` leaves the choice among ties unspecified). Counts
from a concrete density are computed in float64 like peft's ``int(density · numel)``.

Adding a sparsifier is one function here, decorated with ``@sparsifier`` (which records whether it
reads the density and whether it draws random numbers), and one method config that names it.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from evojax_merge.errors import EvoMergeInputError

SparsifyFn = Callable[..., jax.Array]


def sparsifier(fn: SparsifyFn | None = None, *, density: bool = True,
               random: bool = False) -> SparsifyFn | Callable[[SparsifyFn], SparsifyFn]:
    """Mark ``fn`` as a sparsifier: ``fn.uses_density`` (a grid searches a density axis only for
    those that read it) and ``fn.random`` (it needs PRNG keys)."""

    def mark(f: SparsifyFn) -> SparsifyFn:
        f.is_sparsifier = True
        f.uses_density = density
        f.random = random
        return f

    return mark if fn is None else mark(fn)


@dataclasses.dataclass(frozen=True)
class Sparsifier:
    """A sparsifier function with its options bound; hashable, so it can be a static jit argument."""

    fn: SparsifyFn
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        if not getattr(self.fn, "is_sparsifier", False):
            raise EvoMergeInputError(f"{getattr(self.fn, '__name__', self.fn)!r} is not a @sparsifier function")
        known = [p.name for p in inspect.signature(self.fn).parameters.values() if p.kind is p.KEYWORD_ONLY]
        for name, _ in self.options:
            if name not in known:
                raise EvoMergeInputError(f"sparsifier.{name}: unknown option for {self.fn.__name__} "
                                         f"(known: {', '.join(known) or 'none'})")

    @classmethod
    def of(cls, fn: SparsifyFn, **options) -> Sparsifier:
        """``fn`` with ``options`` bound (lists become tuples: the binding stays hashable)."""
        return cls(fn, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items())))

    @property
    def name(self) -> str:
        return self.fn.__name__

    @property
    def uses_density(self) -> bool:
        return bool(self.fn.uses_density)

    @property
    def random(self) -> bool:
        return bool(self.fn.random)

    def describe(self) -> dict:
        return {"name": self.name, **dict(self.options)}

    @property
    def rank_based(self) -> bool:
        """Whether the mask is a function of magnitude-rank cuts alone (``rank_counts``, ``from_cuts``):
        deterministic, so a grid can cut each task vector once (``merge/task_vectors.py``'s cuts)."""
        return hasattr(self.fn, "rank_counts") and not self.random

    def rank_counts(self, density: float, numel: int) -> tuple[int, ...]:
        """The ranks this sparsifier's mask cuts at, for ``density`` over ``numel`` entries."""
        return tuple(int(k) for k in self.fn.rank_counts(float(density), int(numel), **dict(self.options)))

    def __call__(self, t: jax.Array, density: jax.Array | float, keys: jax.Array | None) -> jax.Array:
        if self.random and keys is None:
            raise EvoMergeInputError(f"sparsifier {self.name}: needs a PRNG key")
        return self.fn(t, density, keys, **dict(self.options))


# --------------------------------------------------------------------------- keys and counts


def task_keys(key: jax.Array, n: int) -> jax.Array:
    """``keys[i] = fold_in(key, i)``: one key per task vector, so one can be redrawn alone."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))


def trim_count(density: jax.Array | float, numel: int) -> jax.Array | int:
    """The keep count: ``numel`` if ``density >= 1`` else ``floor(max(density, 0) · numel)``.

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


_UINT_OF = {4: jnp.uint32, 8: jnp.uint64}


def kth_largest(flat: jax.Array, k: jax.Array | int) -> jax.Array:
    """``thr [N]``: the k-th largest entry (1-based, ``1 <= k <= numel``) of each row of ``flat [N, numel]``,
    non-negative magnitudes, found without sorting (16-bit floats are widened to float32, exactly).

    Non-negative floats order as their bit patterns do (as unsigned integers), so a radix select finds the
    k-th largest pattern 16 bits at a time, most significant first: a 65536-bin histogram of those bits
    among the entries that share the bits chosen so far, the bin where the count from the top reaches k,
    and k reduced by the entries above that bin. Two linear passes over the row for float32 (four for
    float64), where a sort of the row is O(numel log numel).
    """
    if flat.dtype.itemsize < 4:  # bfloat16 / float16: the same order in float32, and the value comes back exact
        return kth_largest(flat.astype(jnp.float32), k).astype(flat.dtype)
    uint = _UINT_OF[flat.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(flat, uint)
    width, digit_bits = flat.dtype.itemsize * 8, 16
    bins = 1 << digit_bits

    def one(row_bits):
        prefix, mask, remaining = uint(0), uint(0), jnp.asarray(k, jnp.int32)
        for shift in range(width - digit_bits, -digit_bits, -digit_bits):
            live = (row_bits & mask) == prefix
            digit = ((row_bits >> shift) & uint(bins - 1)).astype(jnp.int32)
            hist = jnp.zeros(bins, jnp.int32).at[digit].add(live.astype(jnp.int32))
            from_top = jnp.cumsum(hist[::-1])  # entries whose digit is >= bins - 1 - j
            j = jnp.argmax(from_top >= remaining)
            value = bins - 1 - j
            remaining = remaining - (from_top[j] - hist[value])  # less those whose digit is above
            prefix = prefix | (value.astype(uint) << shift)
            mask = mask | (uint(bins - 1) << shift)
        return prefix

    return jax.lax.bitcast_convert_type(jax.vmap(one)(bits), flat.dtype)


def rank_cut(flat: jax.Array, k: jax.Array | int) -> tuple[jax.Array, jax.Array]:
    """``(thr [N], need [N])``: row i's k-th largest magnitude and how many entries equal to it rank
    below k (``k - count(> thr)``). With :func:`cut_mask` this is ``[rank(j) < k]``; a cut is all a
    magnitude-rank sparsifier needs to know of the order, so a grid can cut once per density.
    ``k`` outside ``[1, numel]`` cuts at the largest (k <= 0) or the smallest (k > numel) entry."""
    numel = flat.shape[1]
    thr = kth_largest(flat, jnp.clip(k, 1, numel))
    return thr, k - (flat > thr[:, None]).sum(axis=-1)


def cut_mask(flat: jax.Array, thr: jax.Array, need: jax.Array, k: jax.Array | int) -> jax.Array:
    """``[rank(j) < k]`` per row of ``flat [N, numel]`` from its cut (:func:`rank_cut`)."""
    above = flat > thr[:, None]
    tied = flat == thr[:, None]
    # count(> thr) < k <= count(>= thr): keep the first (k - count(> thr)) tied entries by index. The running
    # count (a scan, most of this function's time on a CPU) is needed only when the cut splits a tie, which
    # real-valued task vectors almost never do.
    splits = jnp.any(need < tied.sum(axis=-1))
    first = jax.lax.cond(splits, lambda: jnp.cumsum(tied, axis=-1) <= need[:, None], lambda: tied)
    return (above | (tied & first)) & (k > 0)


def _top_mask(flat: jax.Array, k: jax.Array | int) -> jax.Array:
    """``[rank(j) < k]`` per row of ``flat`` ``[N, numel]`` (magnitudes)."""
    return cut_mask(flat, *rank_cut(flat, k), k)


def _bernoulli_rows(keys: jax.Array, p: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Row i ``~ Bernoulli(p[i] or p)`` of ``shape`` from ``keys[i]``. One row draws without vmap,
    exactly as a per-task-vector draw does."""
    if keys.shape[0] == 1:
        return jax.random.bernoulli(keys[0], p[0] if jnp.ndim(p) > len(shape) else p, shape)[None]
    if jnp.ndim(p) > len(shape):
        return jax.vmap(lambda k, q: jax.random.bernoulli(k, q, shape))(keys, p)
    return jax.vmap(lambda k: jax.random.bernoulli(k, p, shape))(keys)


def bernoulli_masks(keys: jax.Array, density: jax.Array | float, shape: tuple[int, ...]) -> jax.Array:
    """``random_drop``'s keep masks ``[N, *shape]``: row i ``~ Bernoulli(clip(density, 0, 1))`` from ``keys[i]``."""
    p = jnp.clip(jnp.asarray(density, jnp.float32), 0.0, 1.0)
    return _bernoulli_rows(keys, p, shape)


def drop_rescale(t: jax.Array, mask: jax.Array, density: jax.Array | float) -> jax.Array:
    """``t · mask / density`` (peft's ``random_pruning(rescale=True)``).

    ``density >= 1`` returns ``t`` (no pruning, mask ignored, as peft's ``prune``);
    ``density <= 0`` returns zeros (peft would divide by zero and return NaN).
    """
    d = jnp.asarray(density, t.dtype)
    pruned = (t * mask) / jnp.where(d > 0, d, 1)  # peft's order: mask, then divide
    out = jnp.where(d >= 1, t, pruned)
    return jnp.where(d > 0, out, jnp.zeros((), t.dtype))


# --------------------------------------------------------------------------- the sparsifiers


@sparsifier(density=False)
def keep_all(t: jax.Array, density: jax.Array | float = 1.0, keys: jax.Array | None = None) -> jax.Array:
    """No sparsification: ``t``."""
    return t


@sparsifier
def magnitude_prune(t: jax.Array, density: jax.Array | float, keys: jax.Array | None = None) -> jax.Array:
    """Keep exactly the top-k |entries| of each task vector ``t[i]``, k = ``trim_count``, zero the rest.

    peft's ``magnitude_based_pruning`` per tensor, no rescale; ties at the cut go to the lower flat index.
    """
    flat = jnp.abs(t).reshape(t.shape[0], -1)
    keep = _top_mask(flat, trim_count(density, flat.shape[1]))
    return jnp.where(keep.reshape(t.shape), t, jnp.zeros((), t.dtype))


def _prune_ranks(density: float, numel: int) -> tuple[int, ...]:
    return (trim_count(density, numel),)


magnitude_prune.rank_counts = _prune_ranks  # the ranks its mask cuts at: keep = cut 0
magnitude_prune.from_cuts = lambda masks: masks[0]


@sparsifier(random=True)
def random_drop(t: jax.Array, density: jax.Array | float, keys: jax.Array) -> jax.Array:
    """Drop each entry with probability ``1 - density``, rescale the survivors by ``1/density``:
    ``drop_rescale(t, bernoulli_masks(keys, density, ...), density)`` (peft's ``random_pruning``)."""
    return drop_rescale(t, bernoulli_masks(keys, density, tuple(t.shape[1:])), density)


@sparsifier
def magnitude_band(t: jax.Array, density: jax.Array | float, keys: jax.Array | None = None, *,
                   gamma: float = 0.01) -> jax.Array:
    """Keep the band of ranks ``[s, s + k)`` of each task vector: drop the ``s`` largest |entries|
    (outliers) and everything below the band, no rescale (Model Breadcrumbs, Davari & Belilovsky 2023).

    ``k = trim_count(density, numel)``, ``s = min(floor(γ · numel), numel - k)`` (at high density the
    outlier cut shrinks so that k entries remain, as mergekit's ``magnitude_outliers``; unlike it,
    ``floor(γ · numel) = 0`` removes no outlier instead of every entry). ``density >= 1``: ``t``.
    """
    if not 0.0 <= float(gamma) < 1.0:
        raise EvoMergeInputError(f"sparsifier.gamma: {gamma}, expected a fraction in [0, 1)")
    flat = jnp.abs(t).reshape(t.shape[0], -1)
    numel = flat.shape[1]
    k = trim_count(density, numel)
    skip = jnp.minimum(int(float(gamma) * numel), numel - k)
    keep = _top_mask(flat, skip + k) & ~_top_mask(flat, skip)
    return jnp.where(keep.reshape(t.shape), t, jnp.zeros((), t.dtype))


def _band_ranks(density: float, numel: int, *, gamma: float = 0.01) -> tuple[int, ...]:
    k = trim_count(density, numel)
    skip = min(int(float(gamma) * numel), numel - k)
    return (skip + k, skip)


magnitude_band.rank_counts = _band_ranks  # keep = cut 0 and not cut 1
magnitude_band.from_cuts = lambda masks: masks[0] & ~masks[1]


def _descending_positions(rows: jax.Array) -> jax.Array:
    """``pos [..., L]``: each entry's position in its row's stable descending order (0 = largest, ties
    toward the lower index). One sort, then the inverse permutation by a scatter: a second argsort gives
    the same integers at about twice the cost, and DELLA's merge is dominated by this."""
    order = jnp.argsort(-rows, axis=-1, stable=True)
    iota = jax.lax.broadcasted_iota(jnp.int32, rows.shape, rows.ndim - 1)
    return jnp.put_along_axis(jnp.zeros(rows.shape, jnp.int32), order, iota, axis=-1, inplace=False)


@sparsifier(random=True)
def ranked_drop(t: jax.Array, density: jax.Array | float, keys: jax.Array, *, epsilon: float = 0.1) -> jax.Array:
    """Drop with a probability that falls with the magnitude's rank in its row, rescale by the keep
    probability (MAGPRUNE of DELLA-Merging, Deep et al. 2024; mergekit's ``della_magprune``).

    Rows are the last axis (the inputs of one output unit of a ``[d_out, d_in]`` matrix; a vector is
    one row). In a row of length L, the entry at position ``pos`` of the stable descending order of
    |t| (0 = largest) is kept with probability ``q = clip(density + ε (1 - 2 pos/(L - 1)), 0, 1)``
    (``q = density`` when L = 1) and rescaled by ``1/q``: kept entries are ``t / q``, dropped ones 0,
    so ``E[out] = t`` wherever ``q > 0``. The drop probability ``p = 1 - q`` spans
    ``[1 - density - ε, 1 - density + ε]``. ``density >= 1``: ``t``; ``density <= 0``: zeros.
    Unlike mergekit, which refuses ``density ± ε`` outside (0, 1) and rescales by a norm ratio,
    the probabilities are clipped to [0, 1] (at density 0.9, ε 0.1 the largest entry is always kept)
    and each survivor is rescaled by its own ``1/q``, the paper's rescale.
    """
    if float(epsilon) < 0:
        raise EvoMergeInputError(f"sparsifier.epsilon: {epsilon}, expected >= 0")
    n, length = t.shape[0], t.shape[-1] if t.ndim > 1 else 1
    rows = jnp.abs(t).reshape(n, -1, length)
    pos = _descending_positions(rows).astype(jnp.float32)
    d = jnp.asarray(density, jnp.float32)
    slope = (1.0 - 2.0 * pos / (length - 1)) if length > 1 else jnp.zeros_like(pos)
    q = jnp.clip(d + float(epsilon) * slope, 0.0, 1.0).reshape(t.shape)
    keep = _bernoulli_rows(keys, q, tuple(t.shape[1:])) & (q > 0)
    out = jnp.where(keep, t / jnp.where(q > 0, q, 1).astype(t.dtype), jnp.zeros((), t.dtype))
    out = jnp.where(d >= 1, t, out)
    return jnp.where(d > 0, out, jnp.zeros((), t.dtype))
