"""PS merge (merge/sakana_ps.py): one source at density 1 / weight 1, a hand-worked two-source case,
population vmap, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.merge.sakana_ps import PSLayout, ps_merge, ps_merge_genome, task_vectors_of
from evojax_merge.models import ModelConfig, model_weights
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.models.sources import stack_models

CFG = ModelConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=8)
KEY = jax.random.key(0)


def _params(seed):
    return {k: jnp.asarray(v) for k, v in model_weights(LlamaForCausalLM(CFG, rngs=nnx.Rngs(seed))).items()}


@pytest.mark.slow
def test_one_source_at_density_one_weight_one_is_that_source():
    base, src = _params(0), LlamaForCausalLM(CFG, rngs=nnx.Rngs(1))
    stack = stack_models([src], ["src"])
    layout = PSLayout(1, 2)
    merged = ps_merge_genome(layout, base, task_vectors_of(stack, base), jnp.asarray(layout.encode(1.0, 1.0)), KEY)
    for n, v in model_weights(src).items():  # base + (θ - base): equal up to one float32 rounding
        np.testing.assert_allclose(np.asarray(merged[n]), np.asarray(v), rtol=0, atol=1e-6)
    ids = jnp.asarray([[1, 5, 9, 2]])
    got = stack.with_params(merged)(ids)[0]
    np.testing.assert_allclose(np.asarray(got), np.asarray(src(ids)[0]), atol=1e-5)


def test_two_sources_by_hand():
    # one tensor of group 1 (block 0), density 1 (no DARE), weights (0.5, 2): the TIES disjoint mean.
    base = {"model.layers.0.mlp.up_proj.weight": jnp.zeros((1, 4))}
    tv = {"model.layers.0.mlp.up_proj.weight": jnp.asarray([[[1.0, -2.0, 3.0, 0.0]], [[1.0, 1.0, -1.0, 4.0]]])}
    density = jnp.ones((3, 2))
    weight = jnp.asarray([[9.0, 9.0], [0.5, 2.0], [9.0, 9.0]])
    out = ps_merge(base, tv, density, weight, KEY, num_layers=1)["model.layers.0.mlp.up_proj.weight"]
    # col0: both +, σ=+: (0.5·1 + 2·1)/2 = 1.25; col1: sum -1 -> σ=-: 0.5·-2 / 1 = -1.0
    # col2: sum 2 -> σ=+: 0.5·3 / 1 = 1.5; col3: only source 1: 2·4 / 1 = 8
    np.testing.assert_allclose(np.asarray(out), [[1.25, -1.0, 1.5, 8.0]])


def test_density_zero_drops_a_source_and_decode_reads_abs():
    layout = PSLayout(2, 1)
    d, w = layout.decode(jnp.asarray(layout.encode(0.3, 0.7) * np.tile([1, -1], 6)))
    np.testing.assert_allclose(np.asarray(d), 0.3, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(w), 0.7, rtol=1e-6)
    assert float(layout.decode(jnp.full(12, -2.0))[0][0, 0]) == 1.0  # density clamp(|x|, 0, 1)
    base = {"lm_head.weight": jnp.zeros((2, 2))}
    tv = {"lm_head.weight": jnp.stack([jnp.ones((2, 2)), 5 * jnp.ones((2, 2))])}
    out = ps_merge(base, tv, jnp.asarray([[1.0, 0.0]] * 3), jnp.ones((3, 2)), KEY, num_layers=1)
    np.testing.assert_allclose(np.asarray(out["lm_head.weight"]), 1.0)


@pytest.mark.slow
def test_population_vmap_equals_single_merges():
    base = _params(0)
    stack = stack_models([LlamaForCausalLM(CFG, rngs=nnx.Rngs(s)) for s in (1, 2)], ["a", "b"])
    tv = task_vectors_of(stack, base)
    layout = PSLayout(2, 2)
    pop = jnp.asarray(np.random.default_rng(0).uniform(0.1, 0.9, (3, layout.length)), jnp.float32)
    batched = jax.jit(jax.vmap(lambda g: ps_merge_genome(layout, base, tv, g, KEY)))(pop)
    for i in range(3):
        single = jax.jit(lambda g: ps_merge_genome(layout, base, tv, g, KEY))(pop[i])
        for n in single:
            np.testing.assert_allclose(np.asarray(batched[n][i]), np.asarray(single[n]), rtol=1e-6, atol=1e-7)


def test_bad_input_names_the_key():
    base = _params(0)
    stack = stack_models([LlamaForCausalLM(CFG, rngs=nnx.Rngs(1))], ["a"])
    del base["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(EvoMergeInputError, match=r"base: the base has no tensor 'model.layers.1.mlp.up_proj.weight'"):
        task_vectors_of(stack, base)
    genome = PSLayout(1, 2).encode(0.5, 0.5)
    genome[3] = np.inf
    with pytest.raises(EvoMergeInputError, match="ps genome: non-finite value at index 3"):
        PSLayout(1, 2).check(genome)
