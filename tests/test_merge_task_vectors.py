"""Generalized task arithmetic against peft.utils.merge_utils on identical tensors and identical masks:
TIES, DARE, DARE-TIES and task arithmetic as configurations of a sparsifier and a consensus."""

from __future__ import annotations

import importlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from peft.utils import merge_utils as pmu

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import LoraAdapter, LoraStack
from evojax_merge.merge import (
    SignElection,
    Sparsifier,
    Sum,
    bernoulli_masks,
    keep_all,
    magnitude_prune,
    module_key,
    random_drop,
    task_keys,
    trim_count,
)

# the package re-exports the function `task_vectors`, which shadows the submodule's attribute
tvm = importlib.import_module("evojax_merge.merge.task_vectors")

# Everything runs jitted (op-by-op dispatch would compile dozens of tiny kernels per shape and
# dominate the runtime). The density is static so a trim keeps peft's float64 count; the traced
# path is tested on its own.
merge = jax.jit(tvm.merge_task_vectors, static_argnames=("sparsifier", "consensus", "density"))
prune = jax.jit(magnitude_prune, static_argnames=("density",))
linear = jax.jit(tvm.linear)
task_vectors = jax.jit(tvm.task_vectors)
adapter_delta = jax.jit(tvm.adapter_delta)
to_low_rank = jax.jit(tvm.to_low_rank, static_argnames=("rank",))
masks_of = jax.jit(bernoulli_masks, static_argnames=("shape",))

TRIM, DROP, NONE = Sparsifier(magnitude_prune), Sparsifier(random_drop), Sparsifier(keep_all)


def ties(tv, density, lam, *, weights=None, sign_method="total"):
    return merge(tv, TRIM, SignElection(sign_method), lam, density, weights=weights)


def task_arithmetic(tv, lam):
    return merge(tv, NONE, Sum(), lam)


def dare(tv, density, lam, key, *, weights=None):
    return merge(tv, DROP, Sum(), lam, density, key, weights=weights)


def dare_ties(tv, density, lam, key, *, weights=None, sign_method="total"):
    return merge(tv, DROP, SignElection(sign_method), lam, density, key, weights=weights)


def drawn_masks(key, density, t):
    """The masks ``random_drop`` draws for a bare stack ``t [N, ...]`` from ``key``."""
    return masks_of(task_keys(key, t.shape[0]), density, tuple(t.shape[1:]))


N = 4


def _key(seed: int) -> jax.Array:
    # rbg keys compile ~5x faster than threefry on CPU; the merge code is key-impl agnostic
    # (test_drop_masks_with_default_threefry_key covers the default).
    return jax.random.key(seed, impl="rbg")


def _tv(seed: int, shape=(10, 10), n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


def _torch_list(t: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(x)) for x in t]


def _peft(fn, t: np.ndarray, weights: np.ndarray, *args, masks=None, monkeypatch=None, **kw):
    """Run a peft merge on the same tensors; with ``masks``, its Bernoulli draws return them."""
    if masks is not None:
        queue = [torch.from_numpy(np.asarray(m, np.float32)) for m in masks]

        def fake_bernoulli(p, *a, **k):
            mask = queue.pop(0)
            assert mask.shape == p.shape
            return mask

        # merge_utils calls torch.bernoulli once per task tensor, in order
        monkeypatch.setattr(torch, "bernoulli", fake_bernoulli)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns that density >= 1 prunes nothing
        out = fn(_torch_list(t), torch.from_numpy(np.asarray(weights, np.float32)), *args, **kw)
    return out.numpy()


# ----------------------------------------------------------------------------- dense updates


def _stack(seed: int = 0) -> LoraStack:
    rng = np.random.default_rng(seed)
    shapes = {"layers.0.self_attn.q_proj": (8, 6), "layers.1.mlp.up_proj": (10, 6)}
    return LoraStack(
        A={m: jnp.asarray(rng.normal(size=(N, 3, d_in)), jnp.float32) for m, (_, d_in) in shapes.items()},
        B={m: jnp.asarray(rng.normal(size=(N, d_out, 3)), jnp.float32) for m, (d_out, _) in shapes.items()},
        scale=jnp.asarray([2.0, 1.0, 0.5, 4.0]),
    )


def test_task_vectors_are_scaled_b_at_a():
    stack = _stack()
    tv = task_vectors(stack)
    for m in stack.A:
        for i in range(N):
            want = float(stack.scale[i]) * np.asarray(stack.B[m][i], np.float64) @ np.asarray(stack.A[m][i])
            np.testing.assert_allclose(np.asarray(tv[m][i]), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(adapter_delta(stack.adapter(1))[m]), np.asarray(tv[m][1]), 1e-6)


def test_task_vector_orientation_matches_peft_delta_weight():
    """peft's own LoRA layer: get_delta_weight = scaling · B @ A with A [r, in], B [out, r]."""
    from peft import LoraConfig, get_peft_model

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = torch.nn.Linear(6, 8, bias=False)

    model = get_peft_model(Tiny(), LoraConfig(r=3, lora_alpha=6, target_modules=["q_proj"]))
    layer = model.base_model.model.q_proj
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 6)).astype(np.float32), rng.normal(size=(8, 3)).astype(np.float32)
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.from_numpy(a))
        layer.lora_B["default"].weight.copy_(torch.from_numpy(b))
    want = layer.get_delta_weight("default").detach().numpy()
    ours = adapter_delta(LoraAdapter(A={"q": jnp.asarray(a)}, B={"q": jnp.asarray(b)}, scale=jnp.float32(2.0)))
    np.testing.assert_allclose(np.asarray(ours["q"]), want, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- linear / TA


def test_linear_default_uniform_and_weighted():
    t = _tv(2)
    np.testing.assert_allclose(np.asarray(linear(jnp.asarray(t))), t.mean(0), rtol=1e-6, atol=1e-6)
    w = np.asarray([0.5, -1.0, 0.25, 1.5], np.float32)
    got = np.asarray(linear(jnp.asarray(t), jnp.asarray(w)))
    np.testing.assert_allclose(got, _peft(pmu.task_arithmetic, t, w), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("lam", [0.1, 0.5, 1.0, -0.7])
def test_task_arithmetic_matches_peft(lam):
    t = _tv(3)
    got = np.asarray(task_arithmetic(jnp.asarray(t), lam))
    want = _peft(pmu.task_arithmetic, t, np.full(N, lam))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_dict_inputs_map_per_module():
    t1, t2 = _tv(4), _tv(5, shape=(3, 7))
    tv = {"a": jnp.asarray(t1), "b": jnp.asarray(t2)}
    out = ties(tv, 0.5, 0.7)
    np.testing.assert_array_equal(np.asarray(out["b"]), np.asarray(ties(jnp.asarray(t2), 0.5, 0.7)))
    out = task_arithmetic(tv, 0.3)
    np.testing.assert_array_equal(np.asarray(out["a"]), np.asarray(task_arithmetic(jnp.asarray(t1), 0.3)))


# ----------------------------------------------------------------------------- TIES


@pytest.mark.parametrize("density", [0.0, 0.1, 0.29, 0.5, 0.7, 0.9, 1.0])
@pytest.mark.parametrize("lam", [0.3, 1.0])
def test_ties_matches_peft(density, lam):
    t = _tv(int(density * 100) + 7)  # numel 100: 0.29 -> k = 28 (float64 floor)
    got = np.asarray(ties(jnp.asarray(t), density, lam))
    want = _peft(pmu.ties, t, np.full(N, lam), density)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("sign_method", ["total", "frequency"])
def test_ties_weighted_matches_peft(sign_method):
    """Non-uniform weights: peft elects the sign on the UNweighted trimmed tensors."""
    t = _tv(8, n=6)
    w = np.asarray([1.0, -0.5, 0.2, 1.4, 0.8, -1.2], np.float32)
    got = np.asarray(ties(jnp.asarray(t), 0.6, 0.5, weights=jnp.asarray(w), sign_method=sign_method))
    want = _peft(pmu.ties, t, 0.5 * w, 0.6, majority_sign_method=sign_method)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_ties_by_hand():
    # column 0: trimmed values +3, -1 -> total +2 -> mean of agreeing {+3} = 3
    # column 1: -2, +2 -> total 0 elects +1 -> {+2}; column 2: all trimmed away -> 0
    t = np.asarray([[[3.0, -2.0, 0.1]], [[-1.0, 2.0, 0.05]]], np.float32)
    np.testing.assert_allclose(np.asarray(ties(jnp.asarray(t), 2 / 3, 0.5)), [[1.5, 1.0, 0.0]])


def test_trim_count_is_floor_like_peft():
    assert trim_count(0.29, 100) == 28 == int(0.29 * 100)  # float32 would give 29
    assert trim_count(0.0, 10) == 0 and trim_count(1.0, 10) == 10 and trim_count(3.0, 10) == 10
    assert trim_count(-0.5, 10) == 0 and trim_count(0.999, 10) == 9
    traced = jax.jit(lambda d: trim_count(d, 40))
    assert int(traced(0.5)) == 20 and int(traced(1.0)) == 40 and int(traced(0.0)) == 0


def test_magnitude_prune_keeps_exactly_k_with_ties_lower_index_first():
    rng = np.random.default_rng(9)
    t = rng.integers(-2, 3, size=(5, 6, 4)).astype(np.float32)  # many tied magnitudes
    for density in (0.0, 0.04, 0.1, 0.3, 0.5, 0.75, 1.0):
        got = np.asarray(prune(jnp.asarray(t), density))
        k = int(density * 24)
        for i in range(5):
            order = np.argsort(-np.abs(t[i]).ravel(), kind="stable")[:k]
            want = np.zeros(24, np.float32)
            want[order] = t[i].ravel()[order]
            np.testing.assert_array_equal(got[i].ravel(), want)


def test_ties_under_jit_with_traced_density():
    t = jnp.asarray(_tv(10))
    f = jax.jit(tvm.merge_task_vectors, static_argnames=("sparsifier", "consensus"))  # density traced: float32 floor
    for d in (0.25, 0.5, 1.0):
        np.testing.assert_allclose(np.asarray(f(t, TRIM, SignElection(), 0.7, d)), np.asarray(ties(t, d, 0.7)),
                                   rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- DARE / DARE-TIES


@pytest.mark.parametrize("density", [0.2, 0.5, 0.9, 1.0])
def test_dare_matches_peft_dare_linear_with_same_masks(density, monkeypatch):
    t = _tv(11)
    key = _key(0)
    masks = drawn_masks(key, density, jnp.asarray(t))
    got = np.asarray(dare(jnp.asarray(t), density, 0.7, key))
    want = _peft(pmu.dare_linear, t, np.full(N, 0.7), density, masks=np.asarray(masks), monkeypatch=monkeypatch)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("density", [0.2, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("sign_method", ["total", "frequency"])
def test_dare_ties_matches_peft_with_same_masks(density, sign_method, monkeypatch):
    t = _tv(12, n=5)
    w = np.asarray([1.0, 0.5, -0.3, 1.2, 0.9], np.float32)
    key = _key(1)
    masks = drawn_masks(key, density, jnp.asarray(t))
    got = dare_ties(jnp.asarray(t), density, 0.5, key, weights=jnp.asarray(w), sign_method=sign_method)
    want = _peft(
        pmu.dare_ties,
        t,
        0.5 * w,
        density,
        masks=np.asarray(masks),
        monkeypatch=monkeypatch,
        majority_sign_method=sign_method,
    )
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


def test_random_drop_draws_its_masks_from_the_key():
    t = {"m1": jnp.asarray(_tv(13)), "m2": jnp.asarray(_tv(14, shape=(5, 3)))}
    key = _key(2)
    for m in t:  # module m draws task vector i from fold_in(module_key(key, m), i)
        mask = np.asarray(drawn_masks(module_key(key, m), 0.4, t[m]))
        kept = np.asarray(t[m]) * mask / np.float32(0.4)
        np.testing.assert_allclose(np.asarray(dare(t, 0.4, 0.8, key)[m]), (kept * np.float32(0.8)).sum(0), rtol=1e-5)
    # deterministic given the key; another key, another mask
    first = np.asarray(dare(t, 0.4, 0.8, key)["m1"])
    np.testing.assert_array_equal(np.asarray(dare(t, 0.4, 0.8, key)["m1"]), first)
    assert not np.array_equal(np.asarray(dare(t, 0.4, 0.8, _key(3))["m1"]), first)
    # a module's draw depends on its name, not on the other modules merged with it
    alone = dare({"m2": t["m2"]}, 0.4, 0.8, key)
    np.testing.assert_array_equal(np.asarray(alone["m2"]), np.asarray(dare(t, 0.4, 0.8, key)["m2"]))
    # task vector i's mask depends on i alone: a one-row stack with keys[i:i+1] draws row i (threefry,
    # the default, is vmap-invariant; rbg keys draw otherwise under vmap)
    keys = task_keys(jax.random.key(2), N)
    full = np.asarray(masks_of(keys, 0.4, (10, 10)))
    np.testing.assert_array_equal(np.asarray(masks_of(keys[2:3], 0.4, (10, 10)))[0], full[2])
    assert not np.array_equal(full[0], full[1])
    with pytest.raises(EvoMergeInputError, match="needs a PRNG key"):
        tvm.merge_task_vectors(t, DROP, Sum(), 1.0, 0.5)


def test_drop_masks_keep_rate_and_edge_densities():
    rate = float(np.asarray(masks_of(task_keys(_key(4), 4), 0.3, (200, 125))).mean())
    assert abs(rate - 0.3) < 0.005  # 100k Bernoulli draws: 5e-3 is > 3 sigma
    x = jnp.asarray(_tv(15))
    np.testing.assert_allclose(np.asarray(dare(x, 1.0, 1.0, _key(5))), np.asarray(x).sum(0), rtol=1e-6, atol=1e-6)
    # density 0 drops everything (peft would return NaN from 0/0)
    assert not np.any(np.asarray(dare(x, 0.0, 1.0, _key(5))))
    assert not np.any(np.asarray(dare_ties(x, 0.0, 1.0, _key(5))))


def test_drop_masks_with_default_threefry_key():
    keys = task_keys(jax.random.key(7), 2)
    m1 = np.asarray(masks_of(keys, 0.25, (50, 40)))
    np.testing.assert_array_equal(np.asarray(masks_of(task_keys(jax.random.key(7), 2), 0.25, (50, 40))), m1)
    assert abs(m1.mean() - 0.25) < 0.02 and m1.dtype == bool


def test_bad_weights_shape_and_bad_parts_raise():
    with pytest.raises(EvoMergeInputError):
        ties(jnp.asarray(_tv(17)), 0.5, 1.0, weights=jnp.ones(N + 1))
    with pytest.raises(EvoMergeInputError, match="mass"):
        SignElection("median")
    with pytest.raises(EvoMergeInputError, match="not a @sparsifier"):
        Sparsifier(np.abs)
    with pytest.raises(EvoMergeInputError, match="unknown option for magnitude_prune"):
        Sparsifier.of(magnitude_prune, gamma=0.1)


# ----------------------------------------------------------------------------- to_low_rank


def test_to_low_rank_reproduces_an_exactly_rank_r_update():
    rng = np.random.default_rng(18)
    dense = {
        "q": (rng.normal(size=(16, 3)) @ rng.normal(size=(3, 20))).astype(np.float32),
        "down": (rng.normal(size=(9, 2)) @ rng.normal(size=(2, 14))).astype(np.float32),  # rank 2 < r
    }
    out = to_low_rank({m: jnp.asarray(v) for m, v in dense.items()}, 3, 2.0)
    assert float(out.scale) == 2.0
    for m, w in dense.items():
        assert out.A[m].shape == (3, w.shape[1]) and out.B[m].shape == (w.shape[0], 3)
        recon = 2.0 * np.asarray(out.B[m], np.float64) @ np.asarray(out.A[m], np.float64)
        np.testing.assert_allclose(recon, w, rtol=1e-4, atol=1e-4 * np.abs(w).max())


def test_to_low_rank_is_the_best_rank_r_approximation():
    rng = np.random.default_rng(19)
    w = rng.normal(size=(15, 11)).astype(np.float32)
    out = to_low_rank({"m": jnp.asarray(w)}, 4, 0.5)
    recon = 0.5 * np.asarray(out.B["m"], np.float64) @ np.asarray(out.A["m"], np.float64)
    u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    best = (u[:, :4] * s[:4]) @ vt[:4]
    np.testing.assert_allclose(recon, best, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(w - recon), np.sqrt((s[4:] ** 2).sum()), rtol=1e-5)
    # any other rank-4 candidate (perturbed factors) is farther away
    for _ in range(5):
        b = np.asarray(out.B["m"]) + 1e-2 * rng.normal(size=out.B["m"].shape)
        a = np.asarray(out.A["m"]) + 1e-2 * rng.normal(size=out.A["m"].shape)
        assert np.linalg.norm(w - recon) < np.linalg.norm(w - 0.5 * b @ a)


def test_to_low_rank_pads_when_rank_exceeds_min_dim_and_roundtrips_a_merge():
    rng = np.random.default_rng(20)
    w = rng.normal(size=(3, 7)).astype(np.float32)
    out = to_low_rank({"m": jnp.asarray(w)}, 5, 1.0)
    assert out.A["m"].shape == (5, 7) and out.B["m"].shape == (3, 5)
    assert not np.any(np.asarray(out.A["m"])[3:]) and not np.any(np.asarray(out.B["m"])[:, 3:])
    np.testing.assert_allclose(np.asarray(adapter_delta(out)["m"]), w, rtol=1e-5, atol=1e-5)
    # TIES on a pool of rank-3 adapters, exported at rank 3, is the best rank-3 approximation
    stack = _stack(21)
    merged = ties(task_vectors(stack), 0.7, 0.5)
    exported = adapter_delta(to_low_rank(merged, 3, 2.0))
    for m, dense in merged.items():
        u, s, vt = np.linalg.svd(np.asarray(dense, np.float64), full_matrices=False)
        np.testing.assert_allclose(np.asarray(exported[m]), (u[:, :3] * s[:3]) @ vt[:3], rtol=1e-4, atol=1e-4)
    with pytest.raises(EvoMergeInputError):
        to_low_rank({"m": jnp.asarray(w)}, 0, 1.0)
