"""Model hyper-parameters, read from a Hugging Face ``config.json``."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.fileio import read_json

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The Llama-family decoder's shape. Frozen and hashable, so it can be a static jit argument."""

    model_type: str = "llama"
    vocab_size: int = 2048
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 32
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # Llama-3 rope scaling as a hashable tuple: (factor, low_freq_factor, high_freq_factor,
    # original_max_position_embeddings); None for plain RoPE.
    rope_llama3: tuple[float, float, float, int] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v bias (Qwen2 always, Llama optionally)
    mlp_bias: bool = False
    sliding_window: int | None = None  # Mistral / Qwen2 with use_sliding_window
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    dtype: str = "float32"  # parameter and compute dtype: "float32" or "bfloat16"

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(d_out, d_in) of every LoRA-targetable projection, keyed by projection name."""
        h, hd = self.hidden_size, self.head_dim
        return {
            "q_proj": (self.num_attention_heads * hd, h),
            "k_proj": (self.num_key_value_heads * hd, h),
            "v_proj": (self.num_key_value_heads * hd, h),
            "o_proj": (h, self.num_attention_heads * hd),
            "gate_proj": (self.intermediate_size, h),
            "up_proj": (self.intermediate_size, h),
            "down_proj": (h, self.intermediate_size),
        }

    def inv_freq(self) -> np.ndarray:
        """RoPE inverse frequencies, with Llama-3 scaling when configured (as transformers)."""
        dim = self.head_dim
        # As transformers' float32 ``1 / base ** (arange(0, dim, 2).float() / dim)``: the power
        # correctly rounded to float32 (torch's vectorised pow nearly always is; numpy's float32 pow
        # is an ulp off for several entries, which at position p moves the angle by p ulps), then
        # a float32 reciprocal.
        exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
        power = (self.rope_theta ** exponent.astype(np.float64)).astype(np.float32)
        inv = (np.float32(1.0) / power).astype(np.float32)
        if self.rope_llama3 is None:
            return inv
        factor, low, high, old_len = self.rope_llama3
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)

    def to_hf_dict(self) -> dict[str, Any]:
        """A ``config.json`` that transformers loads as the same model."""
        rope: dict[str, Any] = {"rope_theta": self.rope_theta, "rope_type": "default"}
        if self.rope_llama3 is not None:
            f, lo, hi, old = self.rope_llama3
            rope = {
                "rope_theta": self.rope_theta,
                "rope_type": "llama3",
                "factor": f,
                "low_freq_factor": lo,
                "high_freq_factor": hi,
                "original_max_position_embeddings": old,
            }
        arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
        out = {
            "architectures": [arch[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.dtype,
        }
        if self.model_type == "llama":
            out["attention_bias"] = self.attention_bias
            out["mlp_bias"] = self.mlp_bias
        return out


def _rope_settings(raw: dict[str, Any], where: str) -> tuple[float, tuple | None]:
    # transformers >= 5 writes `rope_parameters`; older files write rope_theta + rope_scaling.
    params = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    rope = {**scaling, **params}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type in (None, "default"):
        return theta, None
    if rope_type != "llama3":
        raise EvoMergeInputError(f"{where}: unsupported rope type {rope_type!r} (default or llama3)")
    llama3 = (
        float(rope["factor"]),
        float(rope["low_freq_factor"]),
        float(rope["high_freq_factor"]),
        int(rope["original_max_position_embeddings"]),
    )
    return theta, llama3


def config_from_hf_dict(raw: dict[str, Any], where: str = "config.json", dtype: str | None = None) -> ModelConfig:
    """Build a ``ModelConfig`` from a parsed HF ``config.json``; ``where`` names it in errors."""
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise EvoMergeInputError(
            f"{where}: unsupported architecture model_type={model_type!r} "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    if raw.get("hidden_act", "silu") != "silu":
        raise EvoMergeInputError(f"{where}: unsupported hidden_act {raw['hidden_act']!r} (silu)")
    try:
        heads = int(raw["num_attention_heads"])
        hidden = int(raw["hidden_size"])
        theta, llama3 = _rope_settings(raw, where)
        sliding = None
        if model_type == "mistral" or raw.get("use_sliding_window", False):
            sliding = raw.get("sliding_window")
        eos = raw.get("eos_token_id")
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        return ModelConfig(
            model_type=model_type,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_llama3=llama3,
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_bias=True if model_type == "qwen2" else bool(raw.get("attention_bias", False)),
            mlp_bias=bool(raw.get("mlp_bias", False)),
            sliding_window=int(sliding) if sliding else None,
            bos_token_id=raw.get("bos_token_id"),
            eos_token_id=eos,
            pad_token_id=raw.get("pad_token_id"),
            dtype=dtype or _dtype_name(raw.get("dtype") or raw.get("torch_dtype")),
        )
    except KeyError as e:
        raise EvoMergeInputError(f"{where}: missing key {e.args[0]!r}") from None


def _dtype_name(name: str | None) -> str:
    return "bfloat16" if name == "bfloat16" else "float32"


def load_config(model_dir: str | Path, dtype: str | None = None) -> ModelConfig:
    """Read ``model_dir/config.json``."""
    path = Path(model_dir) / "config.json"
    raw = read_json(path, missing=f"{path}: missing config.json")
    return config_from_hf_dict(raw, where=str(path), dtype=dtype)
