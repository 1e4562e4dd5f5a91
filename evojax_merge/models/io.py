"""Load and save the Flax model as a Hugging Face directory (config.json + safetensors)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.flax import save_file

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.models.config import ModelConfig, load_config
from evojax_merge.models.llama import LlamaForCausalLM, dtype_of


def _hf_name(path: tuple) -> str:
    name = ".".join(str(p) for p in path)
    if name == "model.embed_tokens.embedding":
        return "model.embed_tokens.weight"
    if name == "lm_head":
        return "lm_head.weight"
    return name


def _read_safetensors(model_dir: Path) -> dict[str, jax.Array]:
    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError):
            raise EvoMergeInputError(f"{index}: malformed shard index (needs a weight_map)") from None
        files = [model_dir / f for f in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise EvoMergeInputError(f"{index}: shard {f.name} is missing")
    else:
        raise EvoMergeInputError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")
    tensors: dict[str, jax.Array] = {}
    for f in files:
        with safe_open(str(f), framework="flax") as fh:
            for k in fh.keys():
                tensors[k] = fh.get_tensor(k)
    return tensors


def model_from_weights(cfg: ModelConfig, weights: dict[str, jax.Array], where: str = "weights") -> LlamaForCausalLM:
    """A model whose parameters are ``weights`` (HF names); shapes are checked against ``cfg``."""
    abstract = nnx.eval_shape(lambda: LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    flat = nnx.to_flat_state(state)
    dt = dtype_of(cfg)
    leaves = []
    for path, var in flat:
        name = _hf_name(path)
        if name not in weights:
            raise EvoMergeInputError(f"{where}: missing tensor {name!r}")
        w = weights[name]
        if tuple(w.shape) != tuple(var.shape):
            raise EvoMergeInputError(
                f"{where}: tensor {name!r} has shape {tuple(w.shape)}, config needs {tuple(var.shape)}"
            )
        leaves.append((path, var.replace(jnp.asarray(w, dtype=dt))))
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def load_model(model_dir: str | Path, dtype: str | None = None) -> LlamaForCausalLM:
    """Load an HF Llama/Mistral/Qwen2 directory (single or sharded safetensors)."""
    model_dir = Path(model_dir)
    cfg = load_config(model_dir, dtype=dtype)
    return model_from_weights(cfg, _read_safetensors(model_dir), where=str(model_dir))


def model_weights(model: LlamaForCausalLM) -> dict[str, np.ndarray]:
    """The model's parameters under their HF names."""
    _, state = nnx.split(model)
    return {_hf_name(path): var[...] for path, var in nnx.to_flat_state(state)}


def save_model(model: LlamaForCausalLM, model_dir: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically (a temp dir renamed into place)."""
    weights = {k: jnp.asarray(v) for k, v in model_weights(model).items()}
    return write_hf_dir(model_dir, model.config.to_hf_dict(), weights)


def write_hf_dir(model_dir: str | Path, config: dict, tensors: dict[str, jax.Array]) -> Path:
    """``config.json`` + ``model.safetensors`` written in a temp dir beside ``model_dir``, then moved into place,
    so a reader never sees half a model."""
    model_dir = Path(model_dir)
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.", dir=model_dir.parent))
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if model_dir.exists():
        for f in tmp.iterdir():
            os.replace(f, model_dir / f.name)
        tmp.rmdir()
    else:
        os.replace(tmp, model_dir)
    return model_dir
