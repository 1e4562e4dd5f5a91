"""The Llama forward as a function of a params dict (HF names), and a cache-free greedy decode.

Merges of full fine-tunes produce parameter dicts, not modules; :func:`logits_of` runs the
project's :class:`~evojax_merge.models.llama.LlamaForCausalLM` on such a dict inside ``jit`` and
``vmap`` (the module is rebuilt at trace time with ``nnx.merge``, so the numbers are exactly the
module's). :func:`greedy_decode` generates a few tokens without a KV cache: every step re-runs the
whole (short) sequence and reads the logits at each row's last real position. It is meant for the
short answers of the Sakana world (a digit and ``</s>``), where a cache buys nothing.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from evojax_merge.models.config import ModelConfig
from evojax_merge.models.io import _hf_name
from evojax_merge.models.llama import LlamaForCausalLM

Params = dict[str, jax.Array]
LogitsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # (ids [B,T], mask [B,T], at [B,K]) -> [B,K,V]


@functools.lru_cache(maxsize=16)
def _skeleton(cfg: ModelConfig):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))))
    return graphdef, [(path, var, _hf_name(path)) for path, var in nnx.to_flat_state(state)]


def model_of(cfg: ModelConfig, params: Params) -> LlamaForCausalLM:
    """The module whose parameters are ``params`` (traceable: usable under jit/vmap)."""
    graphdef, flat = _skeleton(cfg)
    return nnx.merge(graphdef, nnx.from_flat_state([(p, v.replace(params[n])) for p, v, n in flat]))


def logits_of(cfg: ModelConfig, params: Params, ids: jax.Array, mask: jax.Array,
              at: jax.Array | None = None) -> jax.Array:
    """``LlamaForCausalLM(params)(ids, mask, logits_at=at)[0]``."""
    return model_of(cfg, params)(ids, mask, logits_at=at)[0]


def greedy_decode(logits_fn: LogitsFn, ids: jax.Array, lengths: jax.Array, steps: int) -> jax.Array:
    """Greedy tokens ``[B, steps]`` after the prompts ``ids [B, T]`` (right-padded, ``lengths [B]``).

    ``ids`` must have at least ``steps`` free columns after the longest prompt. Step k reads the
    logits at position ``lengths - 1 + k`` and writes the argmax at ``lengths + k``.
    """
    b, t = ids.shape
    cols = jnp.arange(t)[None]

    def step(buf, k):
        mask = (cols < (lengths + k)[:, None]).astype(jnp.int32)
        logits = logits_fn(buf, mask, (lengths - 1 + k)[:, None])[:, 0]
        tok = jnp.argmax(logits, axis=-1).astype(buf.dtype)
        buf = jnp.where(cols == (lengths + k)[:, None], tok[:, None], buf)
        return buf, tok

    _, toks = jax.lax.scan(step, ids, jnp.arange(steps))
    return toks.T


@dataclasses.dataclass(frozen=True)
class ParamsModel:
    """A whole model as a params dict (a PS / task-vector merge): ``logits(ids, mask, at)``."""

    config: ModelConfig
    params: Params

    def logits(self, ids: jax.Array, mask: jax.Array, at: jax.Array | None = None) -> jax.Array:
        return logits_of(self.config, self.params, ids, mask, at)


jax.tree_util.register_dataclass(ParamsModel, data_fields=["params"], meta_fields=["config"])
