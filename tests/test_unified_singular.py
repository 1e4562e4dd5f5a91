"""The unified-vector merge (EMR-Merging) and the whitened singular-vector merge (TSV-Merge) against
hand-worked numbers and NumPy references, stacked and streamed from LoRA factors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import LoraStack
from evojax_merge.merge import task_vectors
from evojax_merge.merge.singular import (
    components_per_task,
    singular_merge_dense,
    singular_merge_factors,
    singular_merge_module,
)
from evojax_merge.merge.unified import (
    modulated,
    modulated_module_jit,
    module_sums_jit,
    unified_merge,
    unified_module,
)
from evojax_merge.methods.emr import EMRMerge

merge_dense = jax.jit(singular_merge_dense, static_argnames=("k",))
merge_factors = jax.jit(singular_merge_factors, static_argnames=("k",))


def _factors(seed: int, n: int = 3, r: int = 2, d_out: int = 7, d_in: int = 6):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(n, r, d_in)), jnp.float32), jnp.asarray(rng.normal(size=(n, d_out, r)),
                                                                                   jnp.float32),
            jnp.asarray(rng.uniform(0.5, 2.0, size=n), jnp.float32))


# ----------------------------------------------------------------------------- unified vector


def test_unified_vector_masks_and_rescalers_by_hand():
    """τ_1 = [2, -1, 0, 3, 1], τ_2 = [-1, -3, 1, 1, -1], τ_3 = 0.
    Σ = [1, -4, 1, 4, 0] -> σ = [+, -, +, +, -] (a zero total elects -1, as the released code).
    Agreeing: τ_1 at 0, 1, 3; τ_2 at 1, 2, 3, 4; τ_3 nowhere.
    τ_uni = [2, -3, 1, 3, -1];  M_1 = [1, 1, 0, 1, 0], M_2 = [0, 1, 1, 1, 1], M_3 = 0.
    λ_1 = (2+1+0+3+1) / (2+3+3) = 7/8,  λ_2 = (1+3+1+1+1) / (3+1+3+1) = 7/8,  λ_3 = 0/0 -> 0."""
    t = np.asarray([[2, -1, 0, 3, 1], [-1, -3, 1, 1, -1], [0, 0, 0, 0, 0]], np.float32)
    uni, masks, lam = unified_merge(jnp.asarray(t))
    np.testing.assert_array_equal(np.asarray(uni), [2, -3, 1, 3, -1])
    np.testing.assert_array_equal(np.asarray(masks), [[1, 1, 0, 1, 0], [0, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    np.testing.assert_allclose(np.asarray(lam), [7 / 8, 7 / 8, 0.0])
    np.testing.assert_allclose(np.asarray(modulated(uni, masks, lam, 0)), [1.75, -2.625, 0, 2.625, 0])
    np.testing.assert_array_equal(np.asarray(modulated(uni, masks, lam, 2)), np.zeros(5))


def test_rescalers_sum_over_every_module():
    """Two modules: the rescaler is one scalar per task over both (the paper's), not one per module."""
    tv = {"a": jnp.asarray([[2.0, -1.0], [-1.0, -3.0]]), "b": jnp.asarray([[4.0], [1.0]])}
    uni, masks, lam = unified_merge(tv)
    # a: σ = [+, -], τ_uni = [2, -3], M_1 = [1, 1], M_2 = [0, 1];  b: σ = +, τ_uni = 4, M = [1, 1]
    # λ_1 = (2 + 1 + 4) / (2 + 3 + 4) = 7/9;  λ_2 = (1 + 3 + 1) / (3 + 4) = 5/7
    np.testing.assert_allclose(np.asarray(lam), [7 / 9, 5 / 7], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(uni["a"]), [2, -3])
    np.testing.assert_allclose(np.asarray(modulated(uni, masks, lam, 1)["a"]), [0, -15 / 7], rtol=1e-6)


def _unified_numpy(t: np.ndarray):
    sigma = np.where(t.sum(0) > 0, 1.0, -1.0)
    uni = sigma * np.where(t * sigma > 0, np.abs(t), 0).max(0)
    masks = t * uni > 0
    num = np.abs(t).reshape(len(t), -1).sum(1)
    den = np.where(masks, np.abs(uni), 0).reshape(len(t), -1).sum(1)
    return uni, masks, np.where(den > 0, num / np.where(den > 0, den, 1), 0)


def test_streamed_unified_merge_equals_the_stacked_one():
    a, b, s = _factors(1, n=4)
    t = np.asarray(task_vectors(LoraStack(A={"m": a}, B={"m": b}, scale=s))["m"], np.float64)
    uni, masks, lam = _unified_numpy(t)
    np.testing.assert_allclose(np.asarray(jax.jit(unified_module)(a, b, s)), uni, rtol=1e-5, atol=1e-6)
    num, den = module_sums_jit(a, b, s)
    np.testing.assert_allclose(np.asarray(num) / np.asarray(den), lam, rtol=1e-5)
    for i in range(4):
        got = modulated_module_jit(a, b, s, jnp.int32(i), jnp.float32(lam[i]), jnp.dtype(jnp.float32))
        np.testing.assert_allclose(np.asarray(got), lam[i] * np.where(masks[i], uni, 0), rtol=1e-5, atol=1e-6)
    got = modulated_module_jit(a, b, s, jnp.int32(-1), jnp.float32(3.0), jnp.dtype(jnp.float32))
    np.testing.assert_allclose(np.asarray(got), uni, rtol=1e-5, atol=1e-6)  # -1: the unified vector itself
    zero = modulated_module_jit(a * 0, b, s, jnp.int32(0), jnp.float32(1.0), jnp.dtype(jnp.float32))
    assert not np.any(np.asarray(zero))  # all-zero task vectors: nothing, no NaN


def test_emr_refuses_an_unknown_modulator():
    with pytest.raises(EvoMergeInputError, match="modulator"):
        EMRMerge(modulator="oracle")


# ----------------------------------------------------------------------------- whitened singular vectors


def test_orthogonal_tasks_merge_to_their_sum():
    """τ_1 = 3 e1 f1ᵀ, τ_2 = 2 e2 f2ᵀ: the singular vectors are already orthonormal, so ΔW = τ_1 + τ_2."""
    t = np.zeros((2, 3, 4), np.float32)
    t[0, 0, 0], t[1, 1, 2] = 3.0, 2.0
    np.testing.assert_allclose(np.asarray(merge_dense(jnp.asarray(t), 1)), t.sum(0), atol=1e-6)


def test_two_tasks_at_sixty_degrees_by_hand():
    """u1 = (1, 0), u2 = (cos 60°, sin 60°), v1 = f1, v2 = f2 orthonormal: the polar factor of [u1 u2]
    turns both symmetrically until they are orthogonal, to -15° and 75°; V stays. So
    ΔW = 3 (cos -15°, sin -15°) f1ᵀ + 2 (cos 75°, sin 75°) f2ᵀ."""
    th = np.deg2rad(60.0)
    u1, u2 = np.asarray([1.0, 0.0]), np.asarray([np.cos(th), np.sin(th)])
    f1, f2 = np.asarray([1.0, 0.0, 0.0]), np.asarray([0.0, 0.0, 1.0])
    t = np.stack([3 * np.outer(u1, f1), 2 * np.outer(u2, f2)]).astype(np.float32)
    w1, w2 = np.deg2rad(-15.0), np.deg2rad(75.0)
    want = 3 * np.outer([np.cos(w1), np.sin(w1)], f1) + 2 * np.outer([np.cos(w2), np.sin(w2)], f2)
    np.testing.assert_allclose(np.asarray(merge_dense(jnp.asarray(t), 1)), want, atol=1e-6)
    # the same from LoRA factors (rank 1 each: B = u, A = fᵀ, scale 3 and 2)
    a = jnp.asarray(np.stack([f1[None], f2[None]]), jnp.float32)
    b = jnp.asarray(np.stack([u1[:, None], u2[:, None]]), jnp.float32)
    np.testing.assert_allclose(np.asarray(merge_factors(a, b, jnp.asarray([3.0, 2.0]))), want, atol=1e-6)


def _singular_numpy(t: np.ndarray, k: int) -> np.ndarray:
    us, ss, vs = [], [], []
    for x in t.astype(np.float64):
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vs.append(vt[:k].T)

    def polar(x):
        p, _, qt = np.linalg.svd(x, full_matrices=False)
        return p @ qt

    return polar(np.concatenate(us, 1)) @ np.diag(np.concatenate(ss)) @ polar(np.concatenate(vs, 1)).T


@pytest.mark.parametrize(("n", "r", "d_out", "d_in"), [(3, 2, 7, 6), (2, 3, 5, 9), (4, 1, 8, 4)])
def test_factor_merge_matches_numpy(n, r, d_out, d_in):
    a, b, s = _factors(n + d_out, n, r, d_out, d_in)
    t = np.asarray(task_vectors(LoraStack(A={"m": a}, B={"m": b}, scale=s))["m"])
    k = components_per_task(n, d_out, d_in, r)
    assert k == min(r, min(d_out, d_in) // n)
    want = _singular_numpy(t, k)
    np.testing.assert_allclose(np.asarray(merge_factors(a, b, s)), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(merge_dense(jnp.asarray(t), k)), want, rtol=1e-4, atol=1e-5)
    got = singular_merge_module(a, b, s, jnp.float32(0.5), jnp.dtype(jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), 0.5 * want, rtol=2e-2, atol=2e-2)


def test_singular_merge_edge_cases():
    a, b, s = _factors(3, n=2)
    assert not np.any(np.asarray(merge_factors(a * 0, b, s)))  # all-zero updates: zero, no NaN
    assert not np.any(np.asarray(merge_factors(a, b * 0, s)))
    assert components_per_task(8, 7, 6) == 0  # more tasks than dimensions: nothing kept
    assert not np.any(np.asarray(merge_factors(a, b, s, k=0)))
    # one task: its own top-k truncation (k = min(d)/1 capped at r = the whole update)
    t = np.asarray(task_vectors(LoraStack(A={"m": a[:1]}, B={"m": b[:1]}, scale=s[:1]))["m"][0])
    np.testing.assert_allclose(np.asarray(merge_factors(a[:1], b[:1], s[:1])), t, rtol=1e-4, atol=1e-5)
