"""Evo-Merging's sparsify + factor-wise merge and LoraHub, against direct numpy references."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import LoraStack
from evojax_merge.merge import (
    PRUNE_MODES,
    evo_merge,
    keep_count,
    keep_threshold,
    lorahub_merge,
    sorted_magnitudes,
    sparsify,
    stack_magnitudes,
)

# ----------------------------------------------------------------------------- numpy references


def ref_keep_count(a: float, numel: int) -> int:
    """k = max(1, round(a·numel)), round half to even of the exact product of the float32 a (the reference)."""
    k = round(numel * float(np.float32(a)))
    return min(max(1, k), numel)


def ref_sparsify(x: np.ndarray, a: float) -> np.ndarray:
    """The reference semantics: np.sort, k-th largest |x|, keep |x| >= thr unscaled; a = 0 -> 0."""
    if a <= 0:
        return np.zeros_like(x)
    desc = np.sort(np.abs(x).ravel())[::-1]
    thr = desc[ref_keep_count(a, x.size) - 1]
    return np.where(np.abs(x) >= thr, x, np.zeros_like(x))


_batched_sparsify = jax.jit(jax.vmap(sparsify))


def _check_sparsify_batch(xs: np.ndarray, alphas: np.ndarray) -> None:
    """S_{alpha_j}(x_j) for all j in one vmapped call, each row against the numpy reference."""
    mags = sorted_magnitudes(jnp.asarray(xs))
    got = np.asarray(_batched_sparsify(jnp.asarray(xs), mags, jnp.asarray(alphas, jnp.float32)))
    for j in range(xs.shape[0]):
        want = ref_sparsify(xs[j], float(alphas[j]))
        np.testing.assert_array_equal(got[j], want, err_msg=f"row {j}, a={alphas[j]!r}")


def _alphas(rng: np.random.Generator, m: int, numel: int) -> np.ndarray:
    """Keep fractions with all the edges: 0, 1, tiny, 1/numel, half-integer products, random."""
    special = [0.0, 1.0, 1e-9, 1e-4, 0.5, 1.0 / numel, 0.5 / numel, 1.5 / numel, 0.25, 0.7, 0.999]
    rand = rng.random(max(0, m - len(special)))
    return np.concatenate([special, rand])[:m].astype(np.float32)


# ----------------------------------------------------------------------------- sparsify


def test_sorted_magnitudes_is_descending_abs_per_adapter():
    x = np.random.default_rng(0).normal(size=(4, 3, 5)).astype(np.float32)
    got = np.asarray(sorted_magnitudes(jnp.asarray(x)))
    want = np.sort(np.abs(x).reshape(4, -1), axis=1)[:, ::-1]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (4, 16), (2, 3, 4)])
def test_sparsify_matches_numpy_on_gaussian_tensors(shape):
    rng = np.random.default_rng(sum(shape))
    m = 48
    xs = rng.normal(size=(m, *shape)).astype(np.float32)
    _check_sparsify_batch(xs, _alphas(rng, m, int(np.prod(shape))))


@pytest.mark.parametrize("values", ["ints", "plus_minus", "with_zeros", "constant", "all_zero"])
def test_sparsify_matches_numpy_with_tied_magnitudes(values):
    """Ties at the threshold are all kept (more than k survivors), never split."""
    rng = np.random.default_rng(1)
    m, shape = 64, (4, 6)
    if values == "ints":
        xs = rng.integers(-3, 4, size=(m, *shape))
    elif values == "plus_minus":
        xs = rng.choice([-2.0, -1.0, 1.0, 2.0], size=(m, *shape))
    elif values == "with_zeros":
        xs = rng.normal(size=(m, *shape)) * (rng.random((m, *shape)) < 0.5)
    elif values == "constant":
        xs = np.full((m, *shape), -1.5) * rng.choice([-1, 1], size=(m, *shape))
    else:
        xs = np.zeros((m, *shape))
    _check_sparsify_batch(xs.astype(np.float32), _alphas(rng, m, 24))


def test_sparsify_tie_keeps_every_tied_entry():
    x = jnp.asarray([3.0, -3.0, 1.0, 3.0, 0.5, -1.0])
    mags = sorted_magnitudes(x[None])[0]
    # k = round(0.25·6) = round(1.5) = 2 -> thr = 3, and all three |3| survive.
    np.testing.assert_array_equal(np.asarray(sparsify(x, mags, 0.25)), [3.0, -3.0, 0, 3.0, 0, 0])


def test_sparsify_edges_zero_one_and_unscaled():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 9)).astype(np.float32)
    x[0, :4] = 0.0  # a = 1 must keep zeros as they are, and everything else
    x = jnp.asarray(x)
    mags = sorted_magnitudes(x[None])[0]
    np.testing.assert_array_equal(np.asarray(sparsify(x, mags, 1.0)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(sparsify(x, mags, 0.0)), np.zeros((5, 9)))
    # tiny a keeps exactly the largest-magnitude entry (k = max(1, 0) = 1), not rescaled
    tiny = np.asarray(sparsify(x, mags, 1e-7))
    assert np.count_nonzero(tiny) == 1
    flat = np.argmax(np.abs(np.asarray(x)))
    assert tiny.ravel()[flat] == np.asarray(x).ravel()[flat]
    # survivors are the original values, bit for bit
    half = np.asarray(sparsify(x, mags, 0.5))
    kept = half != 0
    np.testing.assert_array_equal(half[kept], np.asarray(x)[kept])
    assert kept.sum() == round(0.5 * 45)  # 22.5 -> 22 (half to even), no ties in gaussian data


@pytest.mark.parametrize(
    ("a", "numel", "k"),
    [
        (0.5, 5, 2),  # 2.5 -> 2 (half to even)
        (0.5, 7, 4),  # 3.5 -> 4
        (0.25, 6, 2),  # 1.5 -> 2
        (0.25, 10, 2),  # 2.5 -> 2
        (0.125, 4, 1),  # 0.5 -> 0 -> max(1, .) = 1
        (0.7, 5, 3),  # float32(0.7) = 0.69999999: the exact product 3.4999999 -> 3 (float32's 3.5 would give 4)
        (0.39098012, 1408, 551),  # exact 550.50000896 -> 551; the float32 product 550.5 -> 550
        (0.0, 10, 1),  # k is at least 1 (sparsify zeroes a = 0 separately)
        (1.0, 10, 10),
        (1.7, 10, 10),  # clipped to numel
        (-0.3, 10, 1),
        (0.3, 114688, 34406),  # a real A: r=8, d_in=14336
    ],
)
def test_keep_count_round_half_to_even(a, numel, k):
    assert int(keep_count(a, numel)) == k
    assert int(keep_count(jnp.float32(a), numel)) == ref_keep_count(a, numel)


def test_keep_count_equals_exact_reference_on_random_fractions():
    """Python's round(numel * float(np.float32(a))) over random a, near-half-integer products and
    numel up to 10^6, inside jit, without x64."""
    assert not jax.config.jax_enable_x64
    rng = np.random.default_rng(3)
    count = jax.jit(jax.vmap(keep_count, in_axes=(0, None)), static_argnums=1)
    numels = [1, 2, 3, 5, 40, 1000, 1408, 114688, 999_983, 10**6] + rng.integers(1, 10**6, 6).tolist()
    mismatches_f32 = 0
    for numel in numels:
        halves = (rng.integers(0, numel, 3000) + 0.5) / numel  # float32 a whose product is near j + 1/2
        a = np.concatenate([rng.random(3000), halves, np.nextafter(halves, 0), np.nextafter(halves, 1),
                            [0.0, 1.0, 1e-30, 1e-45, 0.5, 0.39098012]]).astype(np.float32)
        got = np.asarray(count(jnp.asarray(a), numel))
        want = np.asarray([ref_keep_count(float(x), numel) for x in a])
        np.testing.assert_array_equal(got, want, err_msg=f"numel={numel}")
        mismatches_f32 += int((np.clip(np.round(a * np.float32(numel)), 1, numel) != want).sum())
    assert mismatches_f32 > 0  # the float32 product would really have differed somewhere


def test_keep_threshold_is_a_gather_of_the_kth_largest():
    desc = jnp.asarray([9.0, 7.0, 7.0, 4.0, 1.0, 0.0])
    assert float(keep_threshold(desc, 0.5)) == 7.0  # k = 3
    assert float(keep_threshold(desc, 1.0)) == 0.0
    assert float(keep_threshold(desc, 0.01)) == 9.0  # k = 1
    jaxpr = str(jax.make_jaxpr(keep_threshold)(desc, 0.5))
    assert "sort" not in jaxpr


def test_sparsify_bfloat16_matches_reference():
    """bf16 pools have many exact ties; thresholds compare in the tensor's own dtype."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(16, 8, 12)), jnp.bfloat16)
    a = _alphas(rng, 16, 96)
    got = np.asarray(jax.vmap(sparsify)(x, sorted_magnitudes(x), jnp.asarray(a))).astype(np.float32)
    xf = np.asarray(x).astype(np.float32)
    for j in range(16):
        np.testing.assert_array_equal(got[j], ref_sparsify(xf[j], float(a[j])))


# ----------------------------------------------------------------------------- merge fixtures

N, R = 5, 4
# distinct sizes so a dense [d_out, d_in] update would be recognisable in a jaxpr
MODULES = {"layers.0.self_attn.q_proj": (24, 40), "layers.0.mlp.down_proj": (28, 52)}


def make_stack(seed: int = 0, scales=None, ties: bool = False) -> LoraStack:
    rng = np.random.default_rng(seed)
    a, b = {}, {}
    for m, (d_out, d_in) in MODULES.items():
        if ties:
            a[m] = rng.integers(-3, 4, size=(N, R, d_in)).astype(np.float32)
            b[m] = rng.integers(-3, 4, size=(N, d_out, R)).astype(np.float32)
        else:
            a[m] = rng.normal(size=(N, R, d_in)).astype(np.float32)
            b[m] = rng.normal(size=(N, d_out, R)).astype(np.float32)
    scale = np.full(N, 2.0, np.float32) if scales is None else np.asarray(scales, np.float32)
    return LoraStack(
        A={m: jnp.asarray(v) for m, v in a.items()},
        B={m: jnp.asarray(v) for m, v in b.items()},
        scale=jnp.asarray(scale),
    )


def ref_evo_merge(stack: LoraStack, alpha, beta, prune: str):
    """Σ_i beta_i S(A_i), Σ_i beta_i (s_i/s_0) S(B_i) in float64 numpy, one adapter at a time."""
    s = np.asarray(stack.scale, np.float64)
    out_a, out_b = {}, {}
    for m in stack.A:
        acc_a, acc_b = 0.0, 0.0
        for i in range(stack.num_adapters):
            ai = np.asarray(stack.A[m][i])
            bi = np.asarray(stack.B[m][i])
            if prune in ("A", "both"):
                ai = ref_sparsify(ai, float(alpha[i]))
            if prune in ("B", "both"):
                bi = ref_sparsify(bi, float(alpha[i]))
            acc_a = acc_a + float(beta[i]) * ai.astype(np.float64)
            acc_b = acc_b + float(beta[i]) * (s[i] / s[0]) * bi.astype(np.float64)
        out_a[m], out_b[m] = acc_a, acc_b
    return out_a, out_b


def _genome(seed: int):
    rng = np.random.default_rng(seed)
    alpha = rng.random(N).astype(np.float32)
    alpha[0], alpha[1] = 0.0, 1.0  # the edges inside a real merge
    beta = rng.uniform(-1.5, 1.5, N).astype(np.float32)
    return alpha, beta


def _assert_adapter_close(adapter, want_a, want_b, scale):
    for m in MODULES:
        np.testing.assert_allclose(np.asarray(adapter.A[m]), want_a[m], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(adapter.B[m]), want_b[m], rtol=1e-6, atol=1e-6)
    assert float(adapter.scale) == scale


# ----------------------------------------------------------------------------- evo_merge

_evo_jit = jax.jit(evo_merge, static_argnames="prune")  # one compile per mode, not op-by-op


@pytest.mark.parametrize("prune", PRUNE_MODES)
@pytest.mark.parametrize("ties", [False, True])
def test_evo_merge_matches_numpy_formula(prune, ties):
    stack = make_stack(seed=5, ties=ties)
    mags = stack_magnitudes(stack, which=("A", "B"))
    alpha, beta = _genome(6)
    merged = _evo_jit(stack, mags, jnp.asarray(alpha), jnp.asarray(beta), prune=prune)
    want_a, want_b = ref_evo_merge(stack, alpha, beta, prune)
    _assert_adapter_close(merged, want_a, want_b, 2.0)
    for m, (d_out, d_in) in MODULES.items():
        assert merged.A[m].shape == (R, d_in) and merged.B[m].shape == (d_out, R)


def test_evo_merge_folds_unequal_scales_into_b():
    stack = make_stack(seed=7, scales=[2.0, 1.0, 4.0, 0.5, 2.0])
    alpha, beta = _genome(8)
    merged = evo_merge(stack, stack_magnitudes(stack), alpha, beta)
    want_a, want_b = ref_evo_merge(stack, alpha, beta, "A")
    _assert_adapter_close(merged, want_a, want_b, 2.0)
    # the diagonal term of adapter i in s_0·B A is beta_i^2 · s_i · B_i S(A_i)
    m = next(iter(MODULES))
    one_hot = np.zeros(N, np.float32)
    one_hot[2] = 0.7
    solo = evo_merge(stack, stack_magnitudes(stack), jnp.ones(N), one_hot)
    dense = float(solo.scale) * np.asarray(solo.B[m]) @ np.asarray(solo.A[m])
    want = 0.49 * 4.0 * np.asarray(stack.B[m][2]) @ np.asarray(stack.A[m][2])
    np.testing.assert_allclose(dense, want, rtol=1e-5, atol=1e-5)


def test_evo_merge_alpha_one_is_no_denoising_and_lorahub():
    """The "without denoising" ablation: alpha = 1 under prune A is exactly LoraHub."""
    stack = make_stack(seed=9)
    mags = stack_magnitudes(stack)
    _, beta = _genome(10)
    a = evo_merge(stack, mags, jnp.ones(N), beta, prune="A")
    b = evo_merge(stack, None, jnp.zeros(N), beta, prune="none")  # alpha unused
    c = lorahub_merge(stack, beta)
    for m in MODULES:
        np.testing.assert_array_equal(np.asarray(a.A[m]), np.asarray(c.A[m]))
        np.testing.assert_array_equal(np.asarray(b.A[m]), np.asarray(c.A[m]))
        np.testing.assert_array_equal(np.asarray(a.B[m]), np.asarray(c.B[m]))


def test_lorahub_merge_matches_numpy():
    stack = make_stack(seed=11)
    w = np.random.default_rng(12).uniform(-1.5, 1.5, N).astype(np.float32)
    merged = lorahub_merge(stack, jnp.asarray(w))
    for m in MODULES:
        want_a = np.einsum("n,nrd->rd", w.astype(np.float64), np.asarray(stack.A[m], np.float64))
        want_b = np.einsum("n,nor->or", w.astype(np.float64), np.asarray(stack.B[m], np.float64))
        np.testing.assert_allclose(np.asarray(merged.A[m]), want_a, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(merged.B[m]), want_b, rtol=1e-6, atol=1e-6)


def test_evo_merge_all_alpha_zero_gives_zero_a():
    stack = make_stack(seed=13)
    merged = evo_merge(stack, stack_magnitudes(stack), jnp.zeros(N), jnp.ones(N))
    for m in MODULES:
        assert not np.any(np.asarray(merged.A[m]))


@pytest.mark.parametrize("prune", ["A", "both"])
def test_jit_vmap_population_equals_per_candidate_loop(prune):
    stack = make_stack(seed=14)
    mags = stack_magnitudes(stack, which=("A", "B"))
    pop = 9
    rng = np.random.default_rng(15)
    alphas = jnp.asarray(rng.random((pop, N)), jnp.float32).at[0].set(1.0).at[1].set(0.0)
    betas = jnp.asarray(rng.uniform(-1.5, 1.5, (pop, N)), jnp.float32)

    def one(a, b):
        return evo_merge(stack, mags, a, b, prune=prune)

    batched = jax.jit(jax.vmap(one))(alphas, betas)
    single = jax.jit(one)
    for p in range(pop):
        cand = single(alphas[p], betas[p])
        want_a, want_b = ref_evo_merge(stack, np.asarray(alphas[p]), np.asarray(betas[p]), prune)
        for m in MODULES:
            np.testing.assert_allclose(batched.A[m][p], cand.A[m], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(batched.B[m][p], cand.B[m], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(batched.A[m][p], want_a[m], rtol=1e-6, atol=1e-6)
        assert float(batched.scale[p]) == 2.0


def test_evo_merge_jaxpr_has_no_sort_and_no_dense_update():
    """The search path: a gather and compare per adapter, two contractions; never B@A or a sort."""
    stack = make_stack(seed=16)
    mags = stack_magnitudes(stack, which=("A", "B"))
    for prune in PRUNE_MODES:
        jaxpr = str(
            jax.make_jaxpr(jax.vmap(lambda a, b, p=prune: evo_merge(stack, mags, a, b, prune=p)))(
                jnp.ones((3, N)), jnp.ones((3, N))
            )
        )
        assert not re.search(r"\bsort\b", jaxpr), prune
        for d_out, d_in in MODULES.values():
            assert f"[{d_out},{d_in}]" not in jaxpr and f",{d_out},{d_in}]" not in jaxpr, prune


def test_stack_magnitudes_structure_and_values():
    stack = make_stack(seed=17)
    mags = stack_magnitudes(stack, which=("A", "B"))
    assert set(mags) == {"A", "B"} and set(mags["A"]) == set(MODULES)
    m = next(iter(MODULES))
    np.testing.assert_array_equal(
        np.asarray(mags["B"][m]), np.sort(np.abs(np.asarray(stack.B[m])).reshape(N, -1))[:, ::-1]
    )
    assert set(stack_magnitudes(stack)) == {"A"}
    with pytest.raises(EvoMergeInputError):
        stack_magnitudes(stack, which=("C",))


def test_evo_merge_rejects_bad_inputs():
    stack = make_stack(seed=18)
    mags = stack_magnitudes(stack)
    with pytest.raises(EvoMergeInputError):
        evo_merge(stack, mags, jnp.ones(N), jnp.ones(N), prune="A+B")
    with pytest.raises(EvoMergeInputError):
        evo_merge(stack, mags, jnp.ones(N), jnp.ones(N), prune="B")  # no B magnitudes
    with pytest.raises(EvoMergeInputError):
        evo_merge(stack, None, jnp.ones(N), jnp.ones(N), prune="A")
    with pytest.raises(EvoMergeInputError):
        evo_merge(stack, mags, jnp.ones(N + 1), jnp.ones(N))
