"""Several full fine-tunes of one architecture as one stacked pytree (docs/methods.md §4, §5).

Stable API (also used by DAM, issue 13):

- :func:`load_sources(model_dirs, dtype=None) -> SourceStack`: read HF directories (config.json +
  safetensors, through :mod:`evojax_merge.models.io`) and stack them. Every weight gets a leading
  model axis: ``stack.params[name]`` is ``[S, ...]`` under its HF name
  (``model.layers.0.self_attn.q_proj.weight``, ``model.embed_tokens.weight``, ``lm_head.weight``).
- :func:`stack_models(models, names) -> SourceStack`: the same from in-memory models.
- ``SourceStack.model(i)``: source i as a :class:`LlamaForCausalLM`; ``SourceStack.with_params``:
  a model from any params dict of the same names (unstacked).
- :func:`layer_group(name, num_layers)`: the PS layer group of a tensor: 0 = embeddings,
  ``1 + l`` = transformer block l, ``num_layers + 1`` = the head (final norm and ``lm_head``).

Sources whose configs differ (architecture, any shape, the tying of embeddings) are rejected with
one line naming the offending model directory, before anything is stacked.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.models.config import ModelConfig, load_config
from evojax_merge.models.io import _read_safetensors, model_from_weights, model_weights
from evojax_merge.models.llama import LlamaForCausalLM

# Fields that must agree for two checkpoints to be stackable (ids and dtype may differ).
_SHAPE_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings",
                 "attention_bias", "mlp_bias")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


@dataclasses.dataclass
class SourceStack:
    """S models of one architecture: ``params[name]`` is ``[S, ...]``; ``names[i]`` names source i."""

    config: ModelConfig
    names: tuple[str, ...]
    params: dict[str, jax.Array]

    @property
    def num_sources(self) -> int:
        return len(self.names)

    def source_params(self, i: int) -> dict[str, jax.Array]:
        return {k: v[i] for k, v in self.params.items()}

    def with_params(self, params: dict[str, jax.Array], where: str = "merged") -> LlamaForCausalLM:
        """A model whose (unstacked) parameters are ``params``."""
        return model_from_weights(self.config, params, where=where)

    def model(self, i: int) -> LlamaForCausalLM:
        """Source ``i`` as a model."""
        return self.with_params(self.source_params(i), where=self.names[i])

    def index(self, name: str) -> int:
        if name not in self.names:
            raise EvoMergeInputError(f"sources: no source named {name!r} (have {', '.join(self.names)})")
        return self.names.index(name)


def layer_group(name: str, num_layers: int) -> int:
    """PS layer group of tensor ``name``: 0 embeddings, 1 + l block l, ``num_layers + 1`` head."""
    m = _LAYER.match(name)
    if m:
        return 1 + int(m.group(1))
    if name.startswith("model.embed_tokens"):
        return 0
    return num_layers + 1  # model.norm.weight, lm_head.weight


def num_layer_groups(cfg: ModelConfig) -> int:
    return cfg.num_hidden_layers + 2


def check_compatible(configs: Sequence[ModelConfig], names: Sequence[str]) -> None:
    """One-line error naming the first source whose architecture or shapes differ from source 0."""
    if not configs:
        raise EvoMergeInputError("sources: no model directories given")
    ref = configs[0]
    for cfg, name in zip(configs[1:], names[1:], strict=True):
        for f in _SHAPE_FIELDS:
            if getattr(cfg, f) != getattr(ref, f):
                raise EvoMergeInputError(
                    f"{name}: {f}={getattr(cfg, f)!r} differs from {names[0]} ({getattr(ref, f)!r}); "
                    "sources must share one architecture and shape")


def _stack(cfg: ModelConfig, names: Sequence[str], weights: Sequence[dict[str, jax.Array]]) -> SourceStack:
    # Route each source through model_from_weights: checks names/shapes against the config.
    checked = [model_weights(model_from_weights(cfg, w, where=n)) for n, w in zip(names, weights, strict=True)]
    params = {k: jnp.stack([jnp.asarray(c[k]) for c in checked]) for k in checked[0]}
    return SourceStack(config=cfg, names=tuple(names), params=params)


def load_sources(model_dirs: Sequence[str | Path], dtype: str | None = None) -> SourceStack:
    """Load HF checkpoints of one architecture as a :class:`SourceStack` (names = the directories)."""
    dirs = [Path(d) for d in model_dirs]
    names = [str(d) for d in dirs]
    configs = [load_config(d, dtype=dtype) for d in dirs]
    check_compatible(configs, names)
    cfg = dataclasses.replace(configs[0], dtype=dtype or configs[0].dtype)
    return _stack(cfg, names, [_read_safetensors(d) for d in dirs])


def stack_models(models: Sequence[LlamaForCausalLM], names: Sequence[str]) -> SourceStack:
    """Stack in-memory models (same checks as :func:`load_sources`)."""
    if len(models) != len(names):
        raise EvoMergeInputError(f"sources: {len(models)} models but {len(names)} names")
    check_compatible([m.config for m in models], list(names))
    return _stack(models[0].config, list(names), [model_weights(m) for m in models])
