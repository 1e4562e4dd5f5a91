"""Load and save the Flax LLaVA VLM as a Hugging Face directory (config.json + safetensors).

Checkpoint names, all accepted on load (transformers 5.x renames them the same way):

    saved by transformers 5.x      language_model.model.*   language_model.lm_head.weight
                                   vision_tower.*           multi_modal_projector.*
    older llava-hf checkpoints     vision_tower.vision_model.*   (otherwise as above)
    in-memory (state_dict) names   model.language_model.*   lm_head.weight
                                   model.vision_tower.*     model.multi_modal_projector.*

The Flax model's flat names (:func:`evojax_merge.models.llava.vlm_params`) are the first row, so an
export writes them as they are; ``LlavaForConditionalGeneration.from_pretrained`` reads them.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.fileio import read_json
from evojax_merge.models.config import config_from_hf_dict
from evojax_merge.models.io import _read_safetensors, write_hf_dir
from evojax_merge.models.llama import dtype_of
from evojax_merge.models.llava import LlavaConfig, LlavaForConditionalGeneration, param_shapes, vlm_model_of, vlm_params
from evojax_merge.models.vision import activation, vision_config_from_hf_dict

# checkpoint-name prefix -> flat-name prefix, first match wins
_RENAMES = (
    (r"^model\.language_model\.", "language_model.model."),
    (r"^lm_head\.", "language_model.lm_head."),
    (r"^model\.vision_tower\.(vision_model\.)?", "vision_tower."),
    (r"^model\.multi_modal_projector\.", "multi_modal_projector."),
    (r"^vision_tower\.vision_model\.", "vision_tower."),
)
_IGNORED = re.compile(r"(^|\.)position_ids$")  # non-persistent buffers some old checkpoints carry


def flat_name(checkpoint_name: str) -> str:
    """The Flax model's name for a checkpoint tensor name (any of the layouts in the module docstring)."""
    for pattern, repl in _RENAMES:
        if re.match(pattern, checkpoint_name):
            return re.sub(pattern, repl, checkpoint_name, count=1)
    return checkpoint_name


def llava_config_from_hf_dict(raw: dict[str, Any], where: str = "config.json", dtype: str | None = None) -> LlavaConfig:
    """Parse a LLaVA ``config.json``; every error is one line naming ``where`` and the key."""
    if raw.get("model_type") != "llava":
        raise EvoMergeInputError(f"{where}: model_type={raw.get('model_type')!r}, expected 'llava'")
    for key in ("vision_config", "text_config"):
        if not isinstance(raw.get(key), dict):
            raise EvoMergeInputError(f"{where}: missing key {key!r} (a dict)")
    text = config_from_hf_dict(raw["text_config"], where=f"{where}: text_config", dtype=dtype)
    tie = bool(raw.get("tie_word_embeddings", False)) or text.tie_word_embeddings
    text = dataclasses.replace(text, tie_word_embeddings=tie)
    vision = vision_config_from_hf_dict(raw["vision_config"], where, dtype=text.dtype)
    layer = raw.get("vision_feature_layer", -2)
    layers = tuple(int(x) for x in (layer if isinstance(layer, list) else [layer]))
    n = vision.num_hidden_layers
    bad = [x for x in layers if not -(n + 1) <= x <= n]
    if not layers or bad:
        raise EvoMergeInputError(f"{where}: vision_feature_layer {layer!r} out of range for {n} vision layers "
                                 f"(hidden states -{n + 1} .. {n})")
    strategy = raw.get("vision_feature_select_strategy", "default")
    if strategy not in ("default", "full"):
        raise EvoMergeInputError(f"{where}: vision_feature_select_strategy {strategy!r} (default or full)")
    act = str(raw.get("projector_hidden_act", "gelu"))
    activation(act, f"{where}: projector_hidden_act")
    token = raw.get("image_token_index", raw.get("image_token_id", 32000))
    if not 0 <= int(token) < text.vocab_size:
        raise EvoMergeInputError(f"{where}: image_token_index {token} outside the vocabulary "
                                 f"(0 .. {text.vocab_size - 1})")
    seq = raw.get("image_seq_length")
    return LlavaConfig(vision=vision, text=text, image_token_id=int(token), projector_hidden_act=act,
                       vision_feature_layer=layers, vision_feature_select_strategy=strategy,
                       multimodal_projector_bias=bool(raw.get("multimodal_projector_bias", True)),
                       image_seq_length=int(seq) if seq is not None else None)


def load_llava_config(model_dir: str | Path, dtype: str | None = None) -> LlavaConfig:
    """Read ``model_dir/config.json``."""
    path = Path(model_dir) / "config.json"
    raw = read_json(path, missing=f"{path}: missing config.json")
    return llava_config_from_hf_dict(raw, where=str(path), dtype=dtype)


def llava_from_weights(cfg: LlavaConfig, weights: dict[str, Any],
                       where: str = "weights") -> LlavaForConditionalGeneration:
    """A VLM whose parameters are ``weights`` (checkpoint names of any layout); names and shapes are checked."""
    shapes = param_shapes(cfg)
    params: dict[str, jax.Array] = {}
    for name, value in weights.items():
        flat = flat_name(name)
        if _IGNORED.search(name) or (cfg.text.tie_word_embeddings and flat == "language_model.lm_head.weight"):
            continue
        if flat not in shapes:
            raise EvoMergeInputError(f"{where}: unexpected tensor {name!r} (not in a model of this config.json)")
        if tuple(value.shape) != shapes[flat]:
            raise EvoMergeInputError(f"{where}: tensor {name!r} has shape {tuple(value.shape)}, "
                                     f"config needs {shapes[flat]}")
        params[flat] = jnp.asarray(value, dtype=dtype_of(cfg.text))
    missing = [n for n in shapes if n not in params]
    if missing:
        raise EvoMergeInputError(f"{where}: missing tensor {missing[0]!r}" +
                                 (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return vlm_model_of(cfg, params)


def load_llava(model_dir: str | Path, dtype: str | None = None) -> LlavaForConditionalGeneration:
    """Load an HF LLaVA directory (config.json + single or sharded safetensors)."""
    model_dir = Path(model_dir)
    cfg = load_llava_config(model_dir, dtype=dtype)
    return llava_from_weights(cfg, _read_safetensors(model_dir), where=str(model_dir))


def save_llava_params(cfg: LlavaConfig, params: dict[str, Any], model_dir: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` for a flat params dict (e.g. a merge), atomically."""
    shapes = param_shapes(cfg)
    for name, shape in shapes.items():
        if name not in params:
            raise EvoMergeInputError(f"VLM params: missing tensor {name!r}")
        if tuple(params[name].shape) != shape:
            raise EvoMergeInputError(f"VLM params: tensor {name!r} has shape {tuple(params[name].shape)}, "
                                     f"config needs {shape}")
    tensors = {n: jnp.asarray(np.asarray(params[n])) for n in shapes}
    return write_hf_dir(model_dir, cfg.to_hf_dict(), tensors)


def save_llava(model: LlavaForConditionalGeneration, model_dir: str | Path) -> Path:
    """Export the Flax VLM to a directory that ``LlavaForConditionalGeneration.from_pretrained`` loads."""
    return save_llava_params(model.config, vlm_params(model), model_dir)
