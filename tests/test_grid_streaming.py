"""The white-box baselines streamed module by module: the same merge as the stacked task vectors,
and a peak that is one module's stack at most (XLA's own buffer assignment)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evojax_merge.bench.population import build
from evojax_merge.merge import dare, dare_ties, linear, task_arithmetic, task_vectors, ties
from evojax_merge.merge.task_vectors import merge_module_factors, module_key
from evojax_merge.models.config import ModelConfig
from evojax_merge.search.grid import BaselineGridConfig, _module_delta, grid_search, stream_deltas

CFG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8)
METHODS = ("task_arithmetic", "ties", "dare", "dare_ties", "uniform_dense")


def stacked(method, tv, lam, density, key):
    """The old code's merge: every dense task vector of the selection built at once."""
    return {"task_arithmetic": lambda: task_arithmetic(tv, lam), "ties": lambda: ties(tv, density, lam),
            "dare": lambda: dare(tv, density, lam, key), "dare_ties": lambda: dare_ties(tv, density, lam, key),
            "uniform_dense": lambda: linear(tv)}[method]()


@pytest.fixture(scope="module")
def world():
    _, stack, evaluator = build(CFG, 6, 4, batch=4, seq=16, num_batches=2)
    return stack, evaluator


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("lam", "density"), [(0.7, 0.5), (0.3, 1.0)])
def test_streamed_deltas_equal_the_stacked_merge(world, method, lam, density):
    stack, _ = world
    key = jax.random.key(5)
    want = stacked(method, task_vectors(stack), jnp.float32(lam), density, key)
    got = dict(stream_deltas(stack, method, lam, density, key, {m: jnp.float32 for m in stack.A}))
    assert set(got) == set(want)
    for m in want:
        np.testing.assert_allclose(np.asarray(got[m]), np.asarray(want[m]), rtol=1e-5, atol=1e-7, err_msg=m)
    if method in ("ties", "dare", "dare_ties") and density < 1:  # really pruned: differs from plain TA
        m = next(iter(want))
        assert not np.allclose(np.asarray(got[m]), np.asarray(task_arithmetic(task_vectors(stack), lam)[m]))


@pytest.mark.slow
def test_grid_search_ce_equals_the_folded_stacked_delta(world):
    stack, evaluator = world
    cfg = BaselineGridConfig(lambdas=(0.3, 1.0), densities=(0.5, 1.0), preselect_top_k=4)
    for method in ("ties", "dare_ties", "task_arithmetic"):
        res = grid_search(evaluator, stack, method, cfg)
        sub = stack.take(res.selected)
        assert len(res.selected) == 4 and len(res.table) == (4 if method != "task_arithmetic" else 2)
        for point in res.table:  # each grid point's CE, against the old path (dense delta folded in the call)
            old = stacked(method, task_vectors(sub), jnp.float32(point["lambda"]), point["density"],
                          jax.random.key(cfg.seed))
            assert point["val_ce"] == pytest.approx(evaluator.evaluate_dense(old), rel=1e-5)
        assert res.val_ce == min(p["val_ce"] for p in res.table)
        assert evaluator.evaluate_dense(res.delta) == pytest.approx(res.val_ce, rel=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_peak_is_bounded_by_one_module_stack(method):
    """XLA's buffer assignment of one module's merge: temporaries + output <= 2 x the module's
    [n, d_out, d_in] float32 stack (the old code held every module's stack at once)."""
    n, r, d_out, d_in = 9, 8, 512, 1376
    stack_bytes = n * d_out * d_in * 4
    sds = jax.ShapeDtypeStruct
    compiled = _module_delta.lower(sds((n, r, d_in), jnp.float32), sds((n, d_out, r), jnp.float32),
                                   sds((n,), jnp.float32), method, jnp.float32(0.5), 0.7, jax.random.key(0),
                                   jnp.dtype(jnp.float32)).compile()
    mem = compiled.memory_analysis()
    peak = mem.temp_size_in_bytes + mem.output_size_in_bytes
    assert mem.output_size_in_bytes == d_out * d_in * 4
    assert peak <= 2 * stack_bytes, f"{method}: {peak / stack_bytes:.2f} x one module stack"


def test_module_key_makes_streamed_dare_independent_of_other_modules(world):
    stack, _ = world
    key = jax.random.key(9)
    m = next(iter(stack.A))
    alone = merge_module_factors(stack.A[m], stack.B[m], stack.scale, "dare", 1.0, 0.5, module_key(key, m))
    full = dict(stream_deltas(stack, "dare", 1.0, 0.5, key, {x: jnp.float32 for x in stack.A}))
    np.testing.assert_array_equal(np.asarray(alone), np.asarray(full[m]))
