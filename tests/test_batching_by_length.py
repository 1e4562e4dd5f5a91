"""data.validation.by_length: the fixed validation subset sorted by length, each batch at its own bucket.

The subset is the same seeded one; padding never changes a loss (the CE of the grouped batches equals
the CE of the same batches at the split's one length); the pad-token fraction is measured both ways.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from evojax_merge.lora import LoraStack, module_path
from evojax_merge.models import LlamaForCausalLM, ModelConfig
from evojax_merge.search.evo_merging import stage_fitness
from evojax_merge.search.fitness import MergeEvaluator, ValidationConfig, batch_plan, params_ce, population_ce
from evojax_merge.search.genome import GenomeLayout
from evojax_merge.search.grid import dense_ce

CFG = ModelConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8)


def test_plan_by_hand():
    lengths = np.array([5, 40, 33, 70, 12, 90, 31, 64])
    plain = batch_plan(lengths, ValidationConfig(batch_size=2, num_batches=4, seed=0), 96)
    sorted_ = batch_plan(lengths, ValidationConfig(batch_size=2, num_batches=4, seed=0, by_length=True), 96)
    assert plain.widths.tolist() == [96] * 4 and sorted(plain.index.ravel().tolist()) == list(range(8))
    assert sorted_.lengths.tolist() == [[5, 12], [31, 33], [40, 64], [70, 90]]  # the same rows, by length
    assert sorted_.widths.tolist() == [32, 48, 64, 96]  # each batch at the bucket of its longest row
    assert sorted_.groups == [(32, 0, 1), (48, 1, 2), (64, 2, 3), (96, 3, 4)]
    real = 5 + 40 + 33 + 70 + 12 + 90 + 31 + 64  # 345
    pad = sorted_.padding(96)
    assert pad["tokens"] == 2 * (32 + 48 + 64 + 96) == 480 and pad["pad_tokens"] == 480 - real
    assert pad["waste"] == pytest.approx(135 / 480) and pad["one_length_waste"] == pytest.approx(1 - real / 768)
    assert plain.padding(96)["waste"] == pytest.approx(1 - real / 768) and pad["widths"] == [32, 48, 64, 96]
    # a subset smaller than the split: the same rows either way; resampled batches are never regrouped
    subset = batch_plan(np.arange(10) + 20, ValidationConfig(batch_size=2, num_batches=3, seed=4), 96)
    by_len = batch_plan(np.arange(10) + 20, ValidationConfig(batch_size=2, num_batches=3, seed=4, by_length=True), 96)
    assert set(subset.index.ravel().tolist()) == set(by_len.index.ravel().tolist()) and subset.index.size == 6
    resampled = batch_plan(lengths, ValidationConfig(batch_size=2, num_batches=4, resample=True, by_length=True), 96)
    assert resampled.widths.tolist() == [96] * 4


def _stack(n: int, seed: int) -> LoraStack:
    rng = np.random.default_rng(seed)
    A, B = {}, {}
    for layer in range(CFG.num_hidden_layers):
        for proj, (d_out, d_in) in CFG.module_shapes().items():
            A[module_path(layer, proj)] = jnp.asarray(rng.normal(0, 0.5, (n, 4, d_in)), jnp.float32)
            B[module_path(layer, proj)] = jnp.asarray(rng.normal(0, 0.5, (n, d_out, 4)), jnp.float32)
    return LoraStack(A=A, B=B, scale=jnp.full((n,), 2.0))


def _ragged_examples(n: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Right-padded rows of 6..width real tokens; the loss on each row's last 3 tokens."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, width + 1, n)
    ids = np.zeros((n, width), np.int32)
    labels = np.full((n, width), -100, np.int32)
    for i, m in enumerate(lengths):
        ids[i, :m] = rng.integers(1, CFG.vocab_size, m)
        labels[i, m - 3: m] = ids[i, m - 3: m]
    return {"input_ids": ids, "attention_mask": (np.arange(width)[None] < lengths[:, None]).astype(np.int32),
            "labels": labels}


@pytest.fixture(scope="module")
def evaluators():
    model = LlamaForCausalLM(CFG, rngs=nnx.Rngs(0))
    stack = _stack(4, seed=1)
    examples = _ragged_examples(24, 96)
    plain = MergeEvaluator(model, stack, examples, ValidationConfig(batch_size=4, num_batches=5))
    by_length = MergeEvaluator(model, stack, examples, ValidationConfig(batch_size=4, num_batches=5, by_length=True))
    return plain, by_length, examples


def test_same_subset_sorted_batches_and_less_padding(evaluators):
    plain, by_length, examples = evaluators
    lengths = examples["attention_mask"].sum(1)
    assert sorted(plain.batch_index(0).ravel()) == sorted(by_length.batch_index(0).ravel())
    flat = lengths[by_length.batch_index(0).ravel()]
    assert (np.diff(flat) >= 0).all()  # homogeneous batches
    assert len(by_length.plan.groups) > 1 and max(w for w, _, _ in by_length.plan.groups) <= 96
    assert plain.padding()["waste"] == pytest.approx(plain.padding()["one_length_waste"])
    assert by_length.padding()["waste"] < plain.padding()["waste"]
    real = lengths[plain.batch_index(0)].sum()
    assert plain.padding()["waste"] == pytest.approx(1 - real / (20 * 96))


def test_grouped_batches_score_as_the_same_batches_at_one_length(evaluators):
    _, by_length, _ = evaluators
    rng = np.random.default_rng(3)
    alpha = rng.uniform(0.2, 1, (3, 4)).astype(np.float32)
    beta = rng.uniform(-1, 1, (3, 4)).astype(np.float32)
    grouped = by_length.evaluate(alpha, beta)
    one_length = np.asarray(population_ce(by_length.ce_fn, by_length.ce_args, jnp.asarray(alpha), jnp.asarray(beta),
                                          jnp.asarray(by_length.batch_index(0))))
    np.testing.assert_allclose(grouped, one_length, rtol=2e-5, atol=0)
    assert np.ptp(grouped) > 1e-3  # the candidates really differ
    # the jitted search loop (generation-indexed table) and the dense path take the same groups
    fit = stage_fitness(by_length, GenomeLayout("beta", 4, -1.5, 1.5), alpha[0], 0.0, generations=3)
    np.testing.assert_allclose(fit(beta, 2), by_length.evaluate(np.repeat(alpha[:1], 3, 0), beta), rtol=1e-5)
    base = by_length.evaluate_adapter(None)
    assert dense_ce(by_length, by_length.params) == pytest.approx(base, rel=1e-6)
    idx = jnp.asarray(by_length.batch_index(0))
    assert float(params_ce(by_length.graphdef, by_length.params, {}, None, by_length.data, idx)) == pytest.approx(
        base, rel=2e-5)
