"""Memory-lean test generation (``experiment.test_batch_size``) and the sort-once TIES / Breadcrumbs grid.

- By length: each candidate alone, prompts sorted by length in batches, each at its own bucket, the
  prefill's logits at the last token only: the same greedy answers as every prompt at once.
- The rank-based sparsifiers merged from cuts computed once (``module_cuts`` + ``merge_module_cuts``) equal
  the per-point merge (``merge_module``) bit for bit, ties at the cut included.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from evojax_merge.bench.memory import _load, _records
from evojax_merge.bench.population import random_stack
from evojax_merge.eval.evaluate import _row_batches, generate_for_population
from evojax_merge.hostmem import peak_rss_gb
from evojax_merge.lora.adapter import LoraStack
from evojax_merge.merge.consensus import SignElection, Sum
from evojax_merge.merge.sparsifiers import Sparsifier, magnitude_band, magnitude_prune, random_drop
from evojax_merge.merge.task_vectors import merge_module, merge_module_cuts, module_cuts


@pytest.fixture(scope="module")
def tiny():
    model, tok = _load("tiny")
    stack = random_stack(model.config, 3, 4, seed=1)
    stack = LoraStack(A=stack.A, B={m: 50 * b for m, b in stack.B.items()}, scale=stack.scale)  # adapters that matter
    return model, tok, stack


def test_row_batches_sort_by_length_and_bucket_each_batch():
    lengths = np.asarray([40, 7, 33, 100, 8, 60])
    plan = _row_batches(lengths, 2, 128)
    assert [r.tolist() for r, _ in plan] == [[1, 4], [2, 0], [5, 3]]
    assert [w for _, w in plan] == [32, 48, 128]


def test_by_length_generation_gives_the_all_at_once_answers(tiny):
    model, tok, stack = tiny
    records = _records(7, 40)
    kw = {"style": "plain", "max_len": None, "max_new_tokens": 6}
    fit_old, fit_new = {}, {}
    old = generate_for_population(model, tok, stack, records, fit=fit_old, **kw)
    new = generate_for_population(model, tok, stack, records, fit=fit_new, batch_rows=3, **kw)
    assert new == old and len(new) == 3 and all(len(a) == 7 for a in new)
    assert fit_new == fit_old  # the test prompts' fitting is reported the same way
    base_old = generate_for_population(model, tok, None, records, **kw)
    assert generate_for_population(model, tok, None, records, batch_rows=2, **kw) == base_old
    per_candidate = [records[:3], records[3:], records[1:6]]  # a list per candidate, of other lengths
    assert (generate_for_population(model, tok, stack, per_candidate, batch_rows=2, **kw)
            == generate_for_population(model, tok, stack, per_candidate, **kw))
    with pytest.raises(ValueError, match="batch_rows"):
        generate_for_population(model, tok, stack, records, batch_rows=0, **kw)


def test_each_candidate_alone_gives_its_answers_among_all(tiny):
    """With ``batch_rows`` a candidate's answers do not depend on the others it is generated with: the engine
    (``runner/engine.py``) then answers each outcome right after its search and frees its dense delta."""
    model, tok, stack = tiny
    records = _records(5, 30)
    kw = {"style": "plain", "max_len": None, "max_new_tokens": 6, "batch_rows": 2}
    together = generate_for_population(model, tok, stack, records, **kw)
    alone = [generate_for_population(model, tok, stack.take([i]), records, **kw)[0] for i in range(3)]
    assert alone == together and len(set(map(tuple, together))) > 1  # the candidates answer differently


def test_peak_rss_is_reported_in_gb():
    assert 0.01 < peak_rss_gb() < 64


def _factors(ties: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    n, r, d_out, d_in = 5, 4, 24, 16
    draw = (lambda s: rng.integers(-2, 3, s).astype(np.float32)) if ties else (lambda s: rng.normal(0, 1, s))
    return (jnp.asarray(draw((n, r, d_in)), jnp.float32), jnp.asarray(draw((n, d_out, r)), jnp.float32),
            jnp.asarray(rng.uniform(0.5, 2, n), jnp.float32))


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("sparsifier,consensus", [
    (Sparsifier.of(magnitude_prune), SignElection()),
    (Sparsifier.of(magnitude_band, gamma=0.05), Sum()),
    (Sparsifier.of(magnitude_prune), Sum()),
])
def test_merge_from_cuts_equals_the_per_point_merge(sparsifier, consensus, ties):
    a, b, scale = _factors(ties)
    numel = b.shape[1] * a.shape[2]
    densities = (0.2, 0.5, 0.9, 1.0)
    ranks = [sparsifier.rank_counts(d, numel) for d in densities]
    thr, need = module_cuts(a, b, scale, jnp.asarray([k for ks in ranks for k in ks], jnp.int32))
    w = len(ranks[0])
    for j, (d, ks) in enumerate(zip(densities, ranks, strict=True)):
        for lam in (0.3, 1.0):
            want = merge_module(a, b, scale, sparsifier, consensus, jnp.float32(lam), d, None, jnp.float32)
            got = merge_module_cuts(a, b, scale, sparsifier, consensus, jnp.float32(lam), jnp.asarray(ks, jnp.int32),
                                    thr[j * w:(j + 1) * w], need[j * w:(j + 1) * w], jnp.float32)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_only_deterministic_magnitude_rank_sparsifiers_use_cuts():
    assert Sparsifier.of(magnitude_prune).rank_based and Sparsifier.of(magnitude_band).rank_based
    assert not Sparsifier.of(random_drop).rank_based
    assert Sparsifier.of(magnitude_band, gamma=0.1).rank_counts(0.5, 100) == (60, 10)
    assert Sparsifier.of(magnitude_band, gamma=0.1).rank_counts(1.0, 100) == (100, 0)
    assert Sparsifier.of(magnitude_prune).rank_counts(0.29, 100) == (28,)  # float64, as peft's int(d * numel)


def test_bucket_step_pads_each_batch_to_a_multiple_of_the_step():
    from evojax_merge.errors import EvoMergeInputError
    from evojax_merge.search.fitness import ValidationConfig, batch_plan

    lengths = np.asarray([130, 170, 200, 210, 140, 250, 180, 199])
    coarse = batch_plan(lengths, ValidationConfig(4, 2, by_length=True), 384)
    fine = batch_plan(lengths, ValidationConfig(4, 2, by_length=True, bucket_step=16), 384)
    assert coarse.widths.tolist() == [192, 256] and fine.widths.tolist() == [192, 256]
    assert (fine.index == coarse.index).all()  # the same batches, only their widths differ
    fine = batch_plan(lengths, ValidationConfig(2, 4, by_length=True, bucket_step=16), 384)
    assert fine.widths.tolist() == [144, 192, 208, 256]
    assert fine.padding(384)["waste"] < batch_plan(lengths, ValidationConfig(2, 4, by_length=True), 384).padding(
        384)["waste"]
    unsorted = batch_plan(lengths, ValidationConfig(2, 4, by_length=False, bucket_step=16), 384)
    assert unsorted.widths.tolist() == [384] * 4
    with pytest.raises(EvoMergeInputError, match="data.validation.bucket_step: 0 < 1"):
        batch_plan(lengths, ValidationConfig(2, 4, by_length=True, bucket_step=0), 384)


def test_the_real_experiment_plan_at_tiny_shapes_says_whether_it_fits():
    from evojax_merge.bench.plan import Workload
    from evojax_merge.bench.plan_real import NAMED_SHAPES, plan_real

    w = Workload(adapters=2, rank=4, population=2, examples=4, seq=32, batch=2, answer_tokens=4, dtype="float32",
                 pool_dtype="float32")
    lines: list[str] = []
    out = plan_real("bench-tiny", w, test_rows=3, new_tokens=4, chunks=(1,), log=lines.append)
    gen = out["generation"]
    assert out["fits"] and gen["total_bytes"] >= gen["argument_bytes"] > 0 and gen["kv_cache_bytes"] > 0
    assert out["peak_bytes"] == max(out["population"]["chunks"][1]["total_bytes"], gen["total_bytes"],
                                    out["grid_point_bytes"])
    assert lines[-1].startswith("verdict: the real experiment at the paper's budget fits one 80 GB GPU")
    small = plan_real("bench-tiny", w, test_rows=3, new_tokens=4, chunks=(1,), device_bytes=1e3, log=lines.append)
    assert not small["fits"] and "does NOT fit" in lines[-1]
    assert NAMED_SHAPES["qwen2.5-7b"]["model_type"] == "qwen2"
