"""The magnitude band (Breadcrumbs) and the rank-scaled drop (DELLA's MAGPRUNE) against hand-worked
numbers and a NumPy reference; the common contract of every sparsifier (density 1, density 0,
all-zero task vectors, one row drawn alone)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.merge import (
    SignElection,
    Sparsifier,
    keep_all,
    magnitude_band,
    magnitude_prune,
    merge_task_vectors,
    random_drop,
    ranked_drop,
    task_keys,
)

band = jax.jit(magnitude_band, static_argnames=("density", "gamma"))
ranked = jax.jit(ranked_drop, static_argnames=("epsilon",))
drop = jax.jit(random_drop)
KEY = jax.random.key(3)

T23 = np.asarray([[[6.0, -1.0, 3.0], [-5.0, 2.0, -4.0]]], np.float32)  # |t|: 6 1 3 / 5 2 4 -> ranks 0 5 3 / 1 4 2


# ----------------------------------------------------------------------------- magnitude band


@pytest.mark.parametrize(("density", "gamma", "want"), [
    (0.5, 0.2, [[0, 0, 3], [-5, 0, -4]]),   # s = floor(1.2) = 1 outlier (6) off, k = 3: ranks 1..3 = 5, 4, 3
    (0.5, 0.01, [[6, 0, 0], [-5, 0, -4]]),  # the paper's gamma on 6 entries: s = floor(0.06) = 0, the top 3
    (0.9, 0.2, [[0, -1, 3], [-5, 2, -4]]),  # k = floor(5.4) = 5, s = min(1, 6 - 5) = 1
    (0.9, 0.4, [[0, -1, 3], [-5, 2, -4]]),  # s = floor(2.4) = 2 shrinks to 6 - 5 = 1 so that k entries stay
    (0.34, 0.5, [[0, 0, 3], [0, 2, 0]]),    # k = floor(2.04) = 2, s = min(3, 6 - 2) = 3: ranks 3, 4 = 3, 2
    (1.0, 0.2, [[6, -1, 3], [-5, 2, -4]]),  # density 1: unchanged, no outlier removed
    (0.0, 0.2, [[0, 0, 0], [0, 0, 0]]),
])
def test_band_by_hand(density, gamma, want):
    got = np.asarray(band(jnp.asarray(T23), density, None, gamma=gamma))[0]
    np.testing.assert_array_equal(got, np.asarray(want, np.float32))


def test_band_ties_go_to_the_lower_index_and_rows_are_independent():
    # |t|: 2 2 1 / 2 0 1: descending with ties by index -> flat 0, 1, 3, 2, 5, 4
    t = np.asarray([[[2.0, -2.0, 1.0], [2.0, 0.0, -1.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]], np.float32)
    got = np.asarray(band(jnp.asarray(t), 0.5, None, gamma=0.2))  # s = 1, k = 3: flat 1, 3, 2
    np.testing.assert_array_equal(got[0], [[0, -2, 1], [2, 0, 0]])
    np.testing.assert_array_equal(got[1], np.zeros((2, 3)))  # an all-zero task vector stays zero


def _band_numpy(t: np.ndarray, density: float, gamma: float) -> np.ndarray:
    out = np.zeros_like(t)
    for i in range(t.shape[0]):
        flat = np.abs(t[i]).ravel()
        numel = flat.size
        k = numel if density >= 1 else int(density * numel)
        s = min(int(gamma * numel), numel - k)
        order = np.argsort(-flat, kind="stable")[s : s + k]
        o = out[i].reshape(-1)
        o[order] = t[i].ravel()[order]
    return out


def test_band_matches_numpy_on_tied_integers():
    t = np.random.default_rng(9).integers(-3, 4, size=(3, 7, 5)).astype(np.float32)  # many tied magnitudes
    for density in (0.1, 0.3, 0.5, 0.77, 0.9, 0.99):
        for gamma in (0.01, 0.05, 0.2):
            got = np.asarray(band(jnp.asarray(t), density, None, gamma=gamma))
            np.testing.assert_array_equal(got, _band_numpy(t, density, gamma), err_msg=f"{density} {gamma}")


def test_band_with_gamma_zero_is_the_magnitude_trim_and_refuses_bad_gamma():
    t = jnp.asarray(np.random.default_rng(2).normal(size=(2, 6, 5)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(band(t, 0.4, None, gamma=0.0)), np.asarray(magnitude_prune(t, 0.4)))
    with pytest.raises(EvoMergeInputError, match="gamma"):
        magnitude_band(t, 0.5, gamma=1.5)


# ----------------------------------------------------------------------------- rank-scaled drop


def test_ranked_drop_keep_probabilities_by_hand():
    """Row [3, -1, 2] (L = 3): positions 0, 2, 1, so at density 0.5, ε = 0.1 the keep probabilities are
    0.5 + 0.1 (1 - 2 pos / 2) = 0.6, 0.4, 0.5, and kept entries become 3/0.6 = 5, -1/0.4 = -2.5, 2/0.5 = 4.
    The second row [2, 2, 2] is all ties: positions by index, 0.6, 0.5, 0.4. A length-1 row keeps
    with the density itself."""
    t = np.asarray([[[3.0, -1.0, 2.0], [2.0, 2.0, 2.0]]], np.float32)
    q = np.asarray([[0.6, 0.4, 0.5], [0.6, 0.5, 0.4]], np.float32)
    keys = task_keys(KEY, 1)
    mask = np.asarray(jax.random.bernoulli(keys[0], jnp.asarray(q)))
    want = np.where(mask, t[0] / q, 0.0)
    got = np.asarray(ranked(jnp.asarray(t), 0.5, keys, epsilon=0.1))[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert set(np.round(got[0][mask[0]], 5)) <= {5.0, -2.5, 4.0}
    col = np.asarray([[[4.0], [-2.0]]], np.float32)  # rows of length 1: q = density = 0.5
    got = np.asarray(ranked(jnp.asarray(col), 0.5, keys, epsilon=0.1))[0]
    m = np.asarray(jax.random.bernoulli(keys[0], jnp.full((2, 1), 0.5)))
    np.testing.assert_allclose(got, np.where(m, col[0] / 0.5, 0.0))


def _numpy_cut(flat: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The cut by a sort: row i's entry at rank clip(k, 1, numel) - 1 of the descending order, and k less
    the entries above it."""
    desc = -np.sort(-flat, axis=-1)
    thr = desc[:, min(max(k, 1), flat.shape[1]) - 1]
    return thr, k - (flat > thr[:, None]).sum(-1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, jnp.bfloat16])
def test_radix_cut_is_the_sorted_cut_at_every_rank(dtype):
    """``rank_cut`` finds the k-th largest magnitude without sorting: the same value and tie count as a
    sort, at every k from below 1 to above numel, on rows with ties, zeros, the smallest normal, an infinity and
    values that share their high bytes (so that every pass of the radix select decides)."""
    from evojax_merge.merge.sparsifiers import rank_cut

    rng = np.random.default_rng(5)
    with jax.enable_x64(dtype == np.float64):
        rows = np.abs(rng.normal(size=(4, 40))).astype(dtype)
        rows[0, :10] = rows[0, 10]                      # ten ties
        rows[1, ::3] = 0.0                              # zeros
        rows[1, 1] = jnp.finfo(dtype).tiny  # the smallest normal (XLA on a CPU flushes subnormals to zero)
        rows[2] = (1.0 + np.arange(40) * jnp.finfo(dtype).eps).astype(dtype)  # one exponent, the low bits differ
        rows[3, 7] = np.inf
        flat = jnp.asarray(rows)
        cut = jax.jit(rank_cut)
        for k in (-1, 0, 1, 2, 9, 10, 11, 20, 39, 40, 41):
            thr, need = cut(flat, k)
            want_thr, want_need = _numpy_cut(rows, k)
            np.testing.assert_array_equal(np.asarray(thr), want_thr)
            np.testing.assert_array_equal(np.asarray(need), want_need)


def test_magnitude_prune_keeps_exactly_k_with_ties_at_the_cut():
    """Ten equal entries straddle the cut at k = 5 of row [4, 2 x 10, 1 x 5]: the 4 and the first four 2s
    (by index) are kept, nothing else."""
    row = np.asarray([[1.0] * 5 + [2.0] * 10 + [4.0]], np.float32)
    got = np.asarray(magnitude_prune(jnp.asarray(row), 5 / 16))
    want = np.zeros_like(row)
    want[0, 15] = 4.0
    want[0, 5:9] = 2.0
    np.testing.assert_array_equal(got, want)


def test_descending_positions_are_numpys_stable_ranks_with_ties():
    """The scatter's inverse permutation equals ranking by numpy's stable argsort of -|t| (ties by index),
    on integers drawn from 0..4 so that most rows are full of ties, and on a row of all-equal entries."""
    from evojax_merge.merge.sparsifiers import _descending_positions

    x = np.random.default_rng(9).integers(0, 5, size=(2, 7, 13)).astype(np.float32)
    x[1, 3] = 2.0
    order = np.argsort(-x, axis=-1, kind="stable")
    want = np.empty_like(order)
    np.put_along_axis(want, order, np.broadcast_to(np.arange(13), x.shape), axis=-1)
    got = np.asarray(jax.jit(_descending_positions)(jnp.asarray(x)))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[1, 3], np.arange(13))


def test_ranked_drop_with_zero_epsilon_is_the_random_drop():
    t = jnp.asarray(np.random.default_rng(4).normal(size=(3, 8, 6)), jnp.float32)
    keys = task_keys(KEY, 3)
    np.testing.assert_allclose(np.asarray(ranked(t, 0.7, keys, epsilon=0.0)), np.asarray(drop(t, 0.7, keys)),
                               rtol=1e-6)


def test_ranked_drop_is_unbiased_and_clips_its_probabilities():
    row = jnp.asarray([[[1.0, -4.0, 2.5, 0.5, -3.0]]], jnp.float32)  # positions 3, 0, 2, 4, 1
    keys = jax.random.split(jax.random.key(11), 4000)
    draws = np.asarray(jax.vmap(lambda k: ranked(row, 0.5, k[None], epsilon=0.1))(keys))[:, 0, 0]
    # q in [0.4, 0.6]: the mean of t/q·Bernoulli(q) is t, std t·sqrt((1-q)/q)/sqrt(4000) <= 0.8·|t|/63
    np.testing.assert_allclose(draws.mean(0), np.asarray(row)[0, 0], atol=0.25)
    # density 0.95, ε 0.1: q from 1.05 (clipped to 1: the largest entry is always kept, unscaled) to 0.85
    always = np.asarray(jax.vmap(lambda k: ranked(row, 0.95, k[None], epsilon=0.1))(keys[:200]))[:, 0, 0, 1]
    assert np.all(always == -4.0)
    with pytest.raises(EvoMergeInputError, match="epsilon"):
        ranked_drop(row, 0.5, keys[:1], epsilon=-0.1)


# ----------------------------------------------------------------------------- every sparsifier


SPARSIFIERS = [Sparsifier(keep_all), Sparsifier(magnitude_prune), Sparsifier(random_drop),
               Sparsifier.of(magnitude_band, gamma=0.01), Sparsifier.of(ranked_drop, epsilon=0.1)]


@pytest.mark.parametrize("sp", SPARSIFIERS, ids=lambda s: s.name)
def test_common_contract(sp):
    t = jnp.asarray(np.random.default_rng(5).normal(size=(3, 6, 4)), jnp.float32)
    keys = task_keys(KEY, 3)
    f = jax.jit(sp.__call__, static_argnums=1)
    np.testing.assert_array_equal(np.asarray(f(t, 1.0, keys)), np.asarray(t))  # density 1: unchanged
    if sp.uses_density:
        assert not np.any(np.asarray(f(t, 0.0, keys)))  # density 0: nothing
    assert not np.any(np.asarray(f(jnp.zeros_like(t), 0.5, keys)))  # all-zero stays zero, no NaN
    out = np.asarray(f(t, 0.5, keys))
    # task vector i depends on t[i] and keys[i] alone: row 1 drawn by itself is row 1 of the stack
    np.testing.assert_allclose(np.asarray(f(t[1:2], 0.5, keys[1:2]))[0], out[1], rtol=1e-6)
    assert np.all(np.isfinite(out))


def test_sign_election_over_band_sparsified_vectors_by_hand():
    """Two task vectors of 4 entries, band at density 0.5, γ = 0.25 (s = 1, k = 2): each keeps its
    2nd and 3rd largest entries, then the sign election and the disjoint mean, λ = 1."""
    t = np.asarray([[8.0, -3.0, 2.0, 1.0], [-1.0, 4.0, -9.0, 2.5]], np.float32)
    # t_1 band: ranks 1, 2 = -3, 2 -> [0, -3, 2, 0];  t_2: ranks 1, 2 = 4, 2.5 -> [0, 4, 0, 2.5]
    # totals 0, 1, 2, 2.5 -> σ = +, +, +, +; agreeing: col 1 {4}, col 2 {2}, col 3 {2.5}
    got = merge_task_vectors(jnp.asarray(t), Sparsifier.of(magnitude_band, gamma=0.25), SignElection(), 1.0, 0.5)
    np.testing.assert_allclose(np.asarray(got), [0.0, 4.0, 2.0, 2.5])
