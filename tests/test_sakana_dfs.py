"""DFS forward (merge/sakana_dfs.py): identity paths, hand-written paths, populations, bad genomes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.merge.sakana_dfs import DFSLayout, describe_path, dfs_logits, layer_row, population_logits, top_level
from evojax_merge.models import ModelConfig
from evojax_merge.models.llama import LlamaForCausalLM, rope_tables
from evojax_merge.models.sources import stack_models

CFG = ModelConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=8)
IDS = jnp.asarray(np.random.default_rng(0).integers(4, 40, (2, 7)), jnp.int32)
MASK = jnp.asarray([[1] * 7, [1] * 5 + [0] * 2], jnp.int32)


@pytest.fixture(scope="module")
def two():
    models = [LlamaForCausalLM(CFG, rngs=nnx.Rngs(s)) for s in (1, 2)]
    stack = stack_models(models, ["a", "b"])
    return models, stack, layer_row(stack)


@pytest.mark.slow
def test_identity_path_is_the_source_bit_for_bit(two):
    """Op by op (the scan run eagerly) the source's own path IS the source, bit for bit. Compiled,
    XLA's fusions differ at the last float32 bit, exactly as the project's own model differs
    between jit and eager (both at ~6e-8), so the compiled check is at that level."""
    models, stack, layers = two
    layout = DFSLayout(2, 3, repeats=3)
    for s in (0, 1):
        genome = jnp.asarray(layout.source_path(s))
        want = models[s](IDS, MASK)[0]
        with jax.disable_jit():
            got = dfs_logits(layout, CFG, top_level(stack, s), layers, genome, IDS, MASK)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        compiled = jax.jit(lambda g, s=s: dfs_logits(layout, CFG, top_level(stack, s), layers, g, IDS, MASK))(genome)
        np.testing.assert_allclose(np.asarray(compiled), np.asarray(want), rtol=0, atol=1e-6)


def _by_hand(models, embed_src, path, ids, mask):
    """Layers composed by hand: ``h <- layer(scale · h)`` for (source, layer, scale) in ``path``."""
    m = models[embed_src]
    b, t = ids.shape
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    attn = (pos[:, None, :] <= pos[:, :, None]) & mask.astype(bool)[:, None, :]
    cos, sin = rope_tables(CFG, pos)
    h = m.model.embed_tokens(ids)
    for src, layer, scale in path:
        h, _ = models[src].model.layers[layer](scale * h, cos, sin, attn, None, None, pos[:, 0])
    h = m.model.norm(h)
    return h @ m.lm_head[...].T


@pytest.mark.slow
def test_hand_written_path_equals_layers_composed_by_hand(two):
    models, stack, layers = two
    layout = DFSLayout(2, 3, repeats=2)  # M = 6, T = 12
    ind = -np.ones(12, np.float32)
    ind[[0, 4, 5, 6 + 1, 6 + 3]] = 1.0  # a0, b1, b2, a1 (repeat 2), b0 (repeat 2)
    w = np.ones((6, 6), np.float32)
    w[0, 4], w[4, 5], w[5, 1], w[1, 3] = 0.5, 1.5, 0.8, 1.2
    genome = np.concatenate([ind, w.ravel()])
    got = dfs_logits(layout, CFG, top_level(stack, 1), layers, jnp.asarray(genome), IDS, MASK)
    want = _by_hand(models, 1, [(0, 0, 1.0), (1, 1, 0.5), (1, 2, 1.5), (0, 1, 0.8), (1, 0, 1.2)], IDS, MASK)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    path = describe_path(layout, genome, ("a", "b"))
    assert [(p["source"], p["layer"], p["scale"]) for p in path] == [
        ("a", 0, 1.0), ("b", 1, 0.5), ("b", 2, 1.5), ("a", 1, pytest.approx(0.8)), ("b", 0, pytest.approx(1.2))]


@pytest.mark.slow  # P compiled single-path runs (6 s)
def test_population_equals_single_runs(two):
    _, stack, layers = two
    layout = DFSLayout(2, 3, repeats=2, max_path=5)
    pop = np.random.default_rng(3).normal(size=(5, layout.length)).astype(np.float32)
    pop[:, layout.num_slots:] = 1 + 0.3 * pop[:, layout.num_slots:]
    top = top_level(stack, 0)
    batched = jax.jit(lambda p: population_logits(layout, CFG, top, layers, p, IDS, MASK))(jnp.asarray(pop))
    for i in range(5):
        single = jax.jit(lambda g: dfs_logits(layout, CFG, top, layers, g, IDS, MASK))(jnp.asarray(pop[i]))
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(single), rtol=1e-6, atol=1e-6)


def test_cap_truncates_the_path_and_check_rejects_bad_genomes():
    layout = DFSLayout(2, 3, repeats=2, max_path=2)
    genome = np.concatenate([np.ones(12, np.float32), np.ones(36, np.float32)])
    assert [p["slot"] for p in describe_path(layout, genome)] == [0, 1]
    with pytest.raises(EvoMergeInputError, match="longer than dfs.max_path=2"):
        layout.check(genome)
    bad = genome.copy()
    bad[20] = np.nan
    with pytest.raises(EvoMergeInputError, match="non-finite value at index 20"):
        DFSLayout(2, 3, repeats=2).check(bad)
    with pytest.raises(EvoMergeInputError, match="length 3"):
        layout.check(np.ones(3))


@pytest.mark.slow
def test_fitness_chunked_equals_whole_population_vmap(two):
    """The search's population_chunk (lax.map, 2 candidates at a time, 5 candidates: a ragged last
    chunk) gives the whole-population vmap's losses."""
    from evojax_merge.search.sakana import DFSFitness

    _, stack, layers = two
    layout = DFSLayout(2, 3, repeats=2, max_path=5)
    pop = jnp.asarray(np.random.default_rng(4).normal(size=(5, layout.length)).astype(np.float32))
    at = jnp.asarray([[5], [3]], jnp.int32)
    batch = {"input_ids": IDS, "attention_mask": MASK, "answer_pos": at,
             "answer_tgt": jnp.asarray([[7], [9]], jnp.int32), "answer_mask": jnp.ones((2, 1), bool)}
    args = {"top": top_level(stack, 0), "layers": layers, "batch": batch}
    whole = jax.jit(DFSFitness(layout, CFG))(args, pop, jnp.int32(0))
    chunked = jax.jit(DFSFitness(layout, CFG, chunk=2))(args, pop, jnp.int32(0))
    assert whole.shape == chunked.shape == (5,) and np.all(np.isfinite(np.asarray(whole)))
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), rtol=1e-6, atol=1e-6)
