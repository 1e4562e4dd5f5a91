"""The Flax Llama-family decoder, its config, loaders and loss."""

from evojax_merge.models.config import ModelConfig, config_from_hf_dict, load_config
from evojax_merge.models.io import load_model, model_from_weights, model_weights, save_model
from evojax_merge.models.llama import KVCache, LlamaForCausalLM
from evojax_merge.models.loss import IGNORE_INDEX, causal_lm_loss, token_nll

__all__ = [
    "IGNORE_INDEX",
    "KVCache",
    "LlamaForCausalLM",
    "ModelConfig",
    "causal_lm_loss",
    "config_from_hf_dict",
    "load_config",
    "load_model",
    "model_from_weights",
    "model_weights",
    "save_model",
    "token_nll",
]
