"""Greedy decoding with the KV cache against step-by-step argmax of the full forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from evojax_merge.eval.generate import greedy_generate, population_generate
from evojax_merge.lora import LoraStack, module_path
from evojax_merge.models import LlamaForCausalLM, ModelConfig

CFG = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, eos_token_id=3)


@nnx.jit
def _full_forward(model, ids, lora):
    return model(ids, lora=lora)[0]


def _reference(model, prompt, steps, lora=None, width=16):
    """Argmax of the full (cache-free) forward, one token at a time, in a fixed-width buffer."""
    seq = list(np.asarray(prompt))
    out = []
    for _ in range(steps):
        buf = np.zeros((1, width), np.int32)
        buf[0, : len(seq)] = seq  # causal: the zeros after the sequence change nothing before it
        nxt = int(jnp.argmax(_full_forward(model, jnp.asarray(buf), lora)[0, len(seq) - 1]))
        out.append(nxt)
        seq.append(nxt)
    return out


gen = nnx.jit(greedy_generate, static_argnames=("max_new_tokens", "eos_id", "pad_id"))
pop_gen = nnx.jit(population_generate, static_argnames=("max_new_tokens", "eos_id", "pad_id"))


def _random_stack(n, rank=2, seed=0):
    key = jax.random.key(seed)
    A, B = {}, {}
    for layer in range(CFG.num_hidden_layers):
        for proj, (d_out, d_in) in CFG.module_shapes().items():
            key, ka, kb = jax.random.split(key, 3)
            m = module_path(layer, proj)
            A[m] = 0.3 * jax.random.normal(ka, (n, rank, d_in))
            B[m] = 0.3 * jax.random.normal(kb, (n, d_out, rank))
    return LoraStack(A=A, B=B, scale=jnp.full((n,), 2.0))


def test_cached_greedy_equals_full_forward_argmax():
    model = LlamaForCausalLM(CFG, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    lengths = np.array([7, 3, 5])
    prompts = np.zeros((3, 7), np.int32)
    for i, n in enumerate(lengths):
        prompts[i, :n] = rng.integers(4, 50, n)
    steps = 6
    out = np.asarray(gen(model, jnp.asarray(prompts), jnp.asarray(lengths), max_new_tokens=steps, eos_id=-1))
    for i, n in enumerate(lengths):
        assert out[i].tolist() == _reference(model, prompts[i, :n], steps)


@pytest.mark.slow
def test_population_generation_equals_each_adapter_alone():
    model = LlamaForCausalLM(CFG, rngs=nnx.Rngs(1))
    stack = _random_stack(3)
    prompts = jnp.asarray([[5, 6, 7, 8], [9, 10, 0, 0]], jnp.int32)
    lengths = jnp.asarray([4, 2])
    pop = np.asarray(pop_gen(model, stack, prompts, lengths, max_new_tokens=5, eos_id=-1))
    distinct = {tuple(pop[p, 0]) for p in range(3)}
    assert len(distinct) > 1  # the adapters really steer the output
    for p in range(3):
        adapter = stack.adapter(p)
        for i, n in enumerate([4, 2]):
            assert pop[p, i].tolist() == _reference(model, np.asarray(prompts[i, :n]), 5, lora=adapter)


def test_eos_stops_a_row():
    model = LlamaForCausalLM(CFG, rngs=nnx.Rngs(2))
    prompts = jnp.asarray([[5, 6, 7]], jnp.int32)
    free = np.asarray(gen(model, prompts, jnp.asarray([3]), max_new_tokens=6, eos_id=-1))[0]
    eos = int(free[1])  # pretend the second generated token is eos
    out = np.asarray(gen(model, prompts, jnp.asarray([3]), max_new_tokens=6, eos_id=eos, pad_id=0))[0]
    assert out[:2].tolist() == free[:2].tolist() and (out[2:] == 0).all()
