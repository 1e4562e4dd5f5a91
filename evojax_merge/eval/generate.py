"""Batched greedy decoding with a KV cache, vmap-able over a population of adapters.

Prompts are right-padded; row b has ``lengths[b]`` real tokens. The prefill writes the whole
padded prompt into the cache but only slots ``< lengths[b]`` are attended to; generated token t
of row b goes to slot ``lengths[b] + t``, overwriting the padding.

``last_only=True`` projects the prefill onto the vocabulary at each row's last real token alone
(``logits_at``), the only logits greedy decoding reads: ``[B, 1, V]`` instead of ``[B, T, V]`` (for
SmolLM2's 49k vocabulary and 1024-token prompts, 200 MB a row). Off by default, so that the programs of
earlier runs stay as they were.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from evojax_merge.lora.adapter import LoraAdapter
from evojax_merge.models.llama import LlamaForCausalLM


def greedy_generate(
    model: LlamaForCausalLM,
    prompt_ids: jax.Array,
    lengths: jax.Array,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int = 0,
    lora: LoraAdapter | None = None,
    last_only: bool = False,
) -> jax.Array:
    """Greedy continuation ``[B, max_new_tokens]``; after eos a row emits ``pad_id``."""
    b, t = prompt_ids.shape
    slots = jnp.arange(t + max_new_tokens)
    cache = model.init_cache(b, t + max_new_tokens)
    last = (lengths - 1)[:, None]
    logits, cache = model(
        prompt_ids,
        lora=lora,
        positions=jnp.broadcast_to(jnp.arange(t), (b, t)),
        cache=cache,
        key_valid=slots[None, :] < lengths[:, None],
        logits_at=last if last_only else None,
    )
    at_last = logits if last_only else jnp.take_along_axis(logits, last[:, :, None], axis=1)
    first = jnp.argmax(at_last[:, 0], axis=-1)

    def step(carry, _):
        token, cur, done, cache = carry
        logits, cache = model(
            token[:, None],
            lora=lora,
            positions=cur[:, None],
            cache=cache,
            key_valid=slots[None, :] <= cur[:, None],
        )
        emitted = jnp.where(done, pad_id, token)
        done = done | (token == eos_id)
        return (jnp.argmax(logits[:, 0], axis=-1), cur + 1, done, cache), emitted

    init = (first, lengths.astype(jnp.int32), jnp.zeros((b,), bool), cache)
    _, tokens = jax.lax.scan(step, init, None, length=max_new_tokens)
    return tokens.T


def population_generate(
    model: LlamaForCausalLM,
    adapters: LoraAdapter,
    prompt_ids: jax.Array,
    lengths: jax.Array,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int = 0,
) -> jax.Array:
    """``greedy_generate`` for a stacked population of adapters: ``[P, B, max_new_tokens]``.

    The base parameters are shared (``in_axes=None``); only the adapters carry the P axis.
    """
    graphdef, params = nnx.split(model)

    def one(adapter):
        return greedy_generate(nnx.merge(graphdef, params), prompt_ids, lengths, max_new_tokens, eos_id,
                               pad_id, adapter)

    return jax.vmap(one)(adapters)
