"""Tiny random transformers models and PEFT adapters, built offline as test oracles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, MistralConfig, Qwen2Config

TINY = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def hf_config(arch: str, **overrides):
    kw = {**TINY, **overrides}
    if arch == "llama":
        return LlamaConfig(**kw)
    if arch == "llama3":
        rope = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        }
        return LlamaConfig(**kw, rope_parameters=rope, tie_word_embeddings=True)
    if arch == "mistral":
        return MistralConfig(**kw, sliding_window=6)
    if arch == "qwen2":
        return Qwen2Config(**kw, rope_theta=1e6)
    raise ValueError(arch)


def build_hf_model(arch: str, out_dir: Path, seed: int = 0, **overrides):
    """A random transformers causal LM, saved to ``out_dir``; returns the torch model (eval mode)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(arch, **overrides)).eval()
    if arch == "qwen2":  # random (non-zero) q/k/v biases, so the bias path is really checked
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.1)
    model.save_pretrained(out_dir)
    return model


def build_peft_adapter(base_model, out_dir: Path, seed: int, r: int = 4, alpha: float = 8.0,
                       targets=ALL_PROJECTIONS, use_rslora: bool = False):
    """A PEFT LoRA on ``base_model`` with random non-zero A and B, saved to ``out_dir``."""
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(
        copy.deepcopy(base_model),
        LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), use_rslora=use_rslora),
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.normal_(0, 0.2)
    peft_model.save_pretrained(out_dir)
    return out_dir


def random_batch(vocab: int, batch: int = 3, length: int = 11, seed: int = 0):
    """Token ids and a right-padded attention mask (row i has ``length - 2i`` real tokens)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(batch, length))
    mask = np.ones((batch, length), np.int64)
    for i in range(batch):
        mask[i, length - 2 * i :] = 0
    return ids, mask
