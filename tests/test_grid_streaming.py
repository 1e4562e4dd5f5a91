"""The white-box merges streamed module by module: the same merge as the stacked task vectors, a
peak that is one module's work at most (XLA's own buffer assignment), and the generic grid search."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evojax_merge.bench.population import build
from evojax_merge.errors import EvoMergeInputError
from evojax_merge.merge import (
    SignElection,
    Sparsifier,
    Sum,
    keep_all,
    magnitude_band,
    magnitude_prune,
    merge_module,
    merge_module_factors,
    merge_task_vectors,
    module_key,
    random_drop,
    ranked_drop,
    task_vectors,
)
from evojax_merge.merge.singular import singular_merge_dense, singular_merge_factors
from evojax_merge.merge.unified import modulated, modulated_module, module_sums, unified_merge
from evojax_merge.methods.base import MergeTask
from evojax_merge.methods.emr import EMRMerge
from evojax_merge.methods.task_vectors import TaskVectorMerge
from evojax_merge.methods.tsv_m import TSVMerge
from evojax_merge.models.config import ModelConfig
from evojax_merge.search.grid import grid_search, stream_deltas

CFG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8)
PARTS = {  # the merges of conf/method/*.yaml, as parts
    "task_arithmetic": (Sparsifier(keep_all), Sum()),
    "ties": (Sparsifier(magnitude_prune), SignElection()),
    "dare": (Sparsifier(random_drop), Sum()),
    "dare_ties": (Sparsifier(random_drop), SignElection()),
    "breadcrumbs": (Sparsifier.of(magnitude_band, gamma=0.01), Sum()),
    "della": (Sparsifier.of(ranked_drop, epsilon=0.1), SignElection()),
    "frequency_sign": (Sparsifier(magnitude_prune), SignElection("frequency")),
}


@pytest.fixture(scope="module")
def world():
    _, stack, evaluator = build(CFG, 6, 4, batch=4, seq=16, num_batches=2)
    return stack, evaluator


def _task(stack, evaluator) -> MergeTask:
    return MergeTask("t", [f"a{i}" for i in range(stack.num_adapters)], lambda prune: evaluator, stack=stack,
                     progress=False)


def _streamed(stack, method, lam, density, key):
    sp, cons = PARTS[method]
    return dict(stream_deltas(stack, lambda m, a, b, s, dt: merge_module(a, b, s, sp, cons, jnp.float32(lam),
                                                                         density, module_key(key, m), dt),
                              {m: jnp.float32 for m in stack.A}))


@pytest.mark.slow
@pytest.mark.parametrize("method", list(PARTS))
@pytest.mark.parametrize(("lam", "density"), [(0.7, 0.5), (0.3, 1.0)])
def test_streamed_deltas_equal_the_stacked_merge(world, method, lam, density):
    stack, _ = world
    key = jax.random.key(5)
    sp, cons = PARTS[method]
    want = merge_task_vectors(task_vectors(stack), sp, cons, jnp.float32(lam), density, key)
    got = _streamed(stack, method, lam, density, key)
    assert set(got) == set(want)
    for m in want:
        np.testing.assert_allclose(np.asarray(got[m]), np.asarray(want[m]), rtol=1e-5, atol=1e-7, err_msg=m)
    if sp.uses_density and density < 1:  # really sparsified: differs from plain TA
        m = next(iter(want))
        assert not np.allclose(np.asarray(got[m]), lam * np.asarray(task_vectors(stack)[m]).sum(0))


@pytest.mark.slow
def test_grid_search_ce_equals_the_folded_stacked_delta(world):
    stack, evaluator = world
    for method in ("ties", "task_arithmetic", "della"):
        sp, cons = PARTS[method]
        merge = TaskVectorMerge(sp, cons, lambdas=(0.3, 1.0), densities=(0.5, 1.0), preselect_top_k=4)
        res = merge.run(_task(stack, evaluator))
        sub = stack.take([int(n[1:]) for n in res.details["selected"]])
        assert len(res.details["selected"]) == 4 and len(res.details["grid"]) == (4 if sp.uses_density else 2)
        for point in res.details["grid"]:  # each grid point's CE, against the stacked merge folded in the call
            old = merge_task_vectors(task_vectors(sub), sp, cons, jnp.float32(point["lambda"]),
                                     point.get("density", 1.0), jax.random.key(0))
            assert point["val_ce"] == pytest.approx(evaluator.evaluate_dense(old), rel=1e-5)
        assert res.val_ce == min(p["val_ce"] for p in res.details["grid"])
        assert evaluator.evaluate_dense(res.delta) == pytest.approx(res.val_ce, rel=1e-6)
        # every chosen hyperparameter is recorded (results.json's per-task cell holds these details)
        best = min(res.details["grid"], key=lambda p: p["val_ce"])
        assert res.details["params"] == {k: best[k] for k in (("lambda", "density") if sp.uses_density
                                                               else ("lambda",))}


@pytest.mark.slow
@pytest.mark.parametrize("modulator", ["val_ce", "best_single", "unified"])
def test_emr_method_is_the_stacked_unified_merge(world, modulator):
    stack, evaluator = world
    task = _task(stack, evaluator)
    res = EMRMerge(modulator=modulator, preselect_top_k=3).run(task)
    selected = [int(n[1:]) for n in res.details["selected"]]
    uni, masks, lam = unified_merge(task_vectors(stack.take(selected)))
    np.testing.assert_allclose(list(res.details["rescalers"].values()), np.asarray(lam), rtol=1e-5)
    labels = [p["modulator"] for p in res.details["grid"]]
    if modulator == "val_ce":
        assert labels == res.details["selected"] + ["<unified>"]
    elif modulator == "best_single":
        losses = task.single_adapter_losses()
        assert labels == [f"a{min(selected, key=lambda i: losses[i])}"]
    else:
        assert labels == ["<unified>"]
    for point in res.details["grid"]:
        label = point["modulator"]
        want = uni if label == "<unified>" else modulated(uni, masks, lam, res.details["selected"].index(label))
        assert point["val_ce"] == pytest.approx(evaluator.evaluate_dense(want), rel=1e-5)
    assert evaluator.evaluate_dense(res.delta) == pytest.approx(res.val_ce, rel=1e-6)
    assert res.val_ce == min(p["val_ce"] for p in res.details["grid"])


@pytest.mark.slow
def test_tsv_method_is_the_dense_whitened_merge(world):
    stack, evaluator = world
    res = TSVMerge(lambdas=(0.5, 1.0), preselect_top_k=3).run(_task(stack, evaluator))
    sub = stack.take([int(n[1:]) for n in res.details["selected"]])
    for point in res.details["grid"]:
        # CFG's modules have min dim >= 16 and rank 4: k = min(4, 16 // 3) = 4, the whole rank (a dense SVD
        # with k past the rank would whiten arbitrary null-space vectors in with the others)
        want = {m: point["lambda"] * singular_merge_dense(t, 4) for m, t in task_vectors(sub).items()}
        assert point["val_ce"] == pytest.approx(evaluator.evaluate_dense(want), rel=1e-4)
    assert res.details["params"]["lambda"] in (0.5, 1.0)
    assert evaluator.evaluate_dense(res.delta) == pytest.approx(res.val_ce, rel=1e-6)


PROGRAMS = {name: (lambda a, b, s, sp=sp, cons=cons: merge_module_factors(a, b, s, sp, cons, jnp.float32(0.5), 0.7,
                                                                         jax.random.key(0)))
            for name, (sp, cons) in PARTS.items()}
PROGRAMS |= {"emr_sums": module_sums,
             "emr_modulated": lambda a, b, s: modulated_module(a, b, s, jnp.int32(1), jnp.float32(1.3)),
             "tsv": singular_merge_factors}


@pytest.mark.parametrize("method", list(PROGRAMS))
def test_peak_is_bounded_by_one_module_stack(method):
    """XLA's buffer assignment of one module's merge: temporaries + output <= 2 x the module's
    [n, d_out, d_in] float32 stack (an unstreamed merge holds every module's stack at once)."""
    n, r, d_out, d_in = 9, 8, 512, 1376
    stack_bytes = n * d_out * d_in * 4
    sds = jax.ShapeDtypeStruct
    compiled = jax.jit(PROGRAMS[method]).lower(sds((n, r, d_in), jnp.float32), sds((n, d_out, r), jnp.float32),
                                               sds((n,), jnp.float32)).compile()
    mem = compiled.memory_analysis()
    peak = mem.temp_size_in_bytes + mem.output_size_in_bytes
    assert peak <= 2 * stack_bytes, f"{method}: {peak / stack_bytes:.2f} x one module stack"


def test_module_key_makes_streamed_draws_independent_of_other_modules(world):
    stack, _ = world
    key = jax.random.key(9)
    m = next(iter(stack.A))
    for method in ("dare", "della"):
        sp, cons = PARTS[method]
        alone = merge_module_factors(stack.A[m], stack.B[m], stack.scale, sp, cons, 1.0, 0.5, module_key(key, m))
        full = _streamed(stack, method, 1.0, 0.5, key)
        np.testing.assert_array_equal(np.asarray(alone), np.asarray(full[m]))


def test_grid_search_knows_no_method():
    calls = []

    def score(p):
        calls.append(p)
        return {(0.1, 0.5): 3.0, (0.1, 1.0): 2.0, (1.0, 0.5): 2.0, (1.0, 1.0): float("nan")}[(p["lambda"], p["d"])]

    res = grid_search({"lambda": (0.1, 1.0), "d": (0.5, 1.0)}, score, "val_ce")
    assert calls == [{"lambda": 0.1, "d": 0.5}, {"lambda": 0.1, "d": 1.0}, {"lambda": 1.0, "d": 0.5},
                     {"lambda": 1.0, "d": 1.0}]  # the last axis fastest
    assert res.params == {"lambda": 0.1, "d": 1.0} and res.score == 2.0  # the first of two equal scores
    assert [row["val_ce"] for row in res.table][:3] == [3.0, 2.0, 2.0] and math.isnan(res.table[3]["val_ce"])
    # a NaN first point never beats a later number
    res = grid_search({"x": ("a", "b")}, lambda p: float("nan") if p["x"] == "a" else 5.0)
    assert res.params == {"x": "b"} and res.table[1] == {"x": "b", "score": 5.0}
    with pytest.raises(EvoMergeInputError, match="every axis"):
        grid_search({"lambda": ()}, lambda p: 0.0)


def test_parts_from_config_and_the_grid_axes():
    import functools

    from evojax_merge.methods.sakana_grid import SakanaGrid

    raw = TaskVectorMerge({"_target_": "evojax_merge.merge.sparsifiers.magnitude_band", "_partial_": True,
                           "gamma": 0.05},
                          {"_target_": "evojax_merge.merge.consensus.SignElection", "mass": "frequency"},
                          lambdas=(0.5,), densities=(0.5, 0.9))
    hydra_made = TaskVectorMerge(functools.partial(magnitude_band, gamma=0.05), SignElection("frequency"),
                                 lambdas=(0.5,), densities=(0.5, 0.9))  # what Hydra's instantiate hands over
    assert raw.sparsifier == hydra_made.sparsifier == Sparsifier.of(magnitude_band, gamma=0.05)
    assert raw.consensus == hydra_made.consensus == SignElection("frequency")
    assert raw.axes() == {"lambda": (0.5,), "density": (0.5, 0.9)}
    plain = TaskVectorMerge(None, None, lambdas=(0.1, 1.0), densities=())  # no sparsifier: no density axis
    assert plain.axes() == {"lambda": (0.1, 1.0)} and plain.consensus == Sum()
    for bad, match in [({"sparsifier": "evojax_merge.merge.sparsifiers.nowhere"}, "does not import"),
                       ({"sparsifier": "evojax_merge.merge.task_vectors.linear"}, "not a @sparsifier"),
                       ({"sparsifier": {"_target_": "evojax_merge.merge.sparsifiers.ranked_drop", "eps": 1}},
                        "unknown option for ranked_drop"),
                       ({"consensus": "evojax_merge.merge.consensus.majority_sign_mask"}, "not a Consensus"),
                       ({"sparsifier": {"_target_": "evojax_merge.merge.sparsifiers.random_drop"},
                         "densities": (0.0, 1.0)}, "densities")]:
        with pytest.raises(EvoMergeInputError, match=match):
            TaskVectorMerge(**bad)
    # full fine-tunes: the kind alias and the parts are the same merge
    for kind, sp, cons in [("ties", Sparsifier(magnitude_prune), SignElection()),
                           ("dare_ties", Sparsifier(random_drop), SignElection()),
                           ("task_arithmetic", Sparsifier(keep_all), Sum())]:
        by_kind = SakanaGrid(kind, lambdas=(0.5, 1.0))
        by_parts = SakanaGrid(sparsifier=sp, consensus=cons, lambdas=(0.5, 1.0))
        assert by_kind.describe() == by_parts.describe() and by_kind.grid(2) == by_parts.grid(2)
    assert SakanaGrid(kind="soup").describe() == SakanaGrid(mean=True).describe()
    assert SakanaGrid(mean=True).grid(4) == [(0.25, 1.0)]
    assert SakanaGrid("task_arithmetic", lambdas=(0.5,)).grid() == [(0.5, 1.0)]  # no density axis
    with pytest.raises(EvoMergeInputError, match="method.kind"):
        SakanaGrid(kind="linear")
    with pytest.raises(EvoMergeInputError, match="alias"):
        SakanaGrid(kind="ties", consensus=Sum())
