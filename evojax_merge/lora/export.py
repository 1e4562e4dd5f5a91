"""Write a rank-r adapter as a PEFT adapter directory that ``PeftModel.from_pretrained`` loads.

A merged adapter keeps what its pool's adapters declare: every field of the first source
``adapter_config.json`` (base model name, target modules, task type, dropout, ...) except those
the merge defines (rank, ``lora_alpha`` for the merged scale), and the dtype of the source
weights (F32, F16 or BF16).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.flax import save_file

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.fileio import read_json
from evojax_merge.lora.adapter import LoraAdapter
from evojax_merge.lora.pool import ADAPTER_CONFIG, ADAPTER_WEIGHTS

SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# Fields the merged adapter defines itself, or that would describe weights it does not carry.
_MERGE_DEFINED = ("r", "lora_alpha", "peft_type", "inference_mode", "use_dora", "rank_pattern", "alpha_pattern",
                  "modules_to_save", "bias", "fan_in_fan_out")


def peft_state_dict(adapter: LoraAdapter, dtype: str = "float32") -> dict[str, jnp.ndarray]:
    """PEFT key names: ``base_model.model.model.<module>.lora_{A,B}.weight``, cast to ``dtype``."""
    out = {}
    for m in adapter.A:
        out[f"base_model.model.model.{m}.lora_A.weight"] = jnp.asarray(adapter.A[m], dtype)
        out[f"base_model.model.model.{m}.lora_B.weight"] = jnp.asarray(adapter.B[m], dtype)
    return out


def source_weights_dtype(adapter_dir: str | Path) -> str:
    """The dtype (``float32``/``float16``/``bfloat16``) of a PEFT adapter's LoRA tensors, read from the header."""
    f = Path(adapter_dir) / ADAPTER_WEIGHTS
    try:
        with safe_open(str(f), framework="numpy") as fh:
            kinds = {fh.get_slice(k).get_dtype() for k in fh.keys()}
    except (SafetensorError, OSError) as e:
        raise EvoMergeInputError(f"{f}: unreadable safetensors ({e})") from None
    if len(kinds) != 1 or next(iter(kinds)) not in SAFETENSORS_DTYPES:
        raise EvoMergeInputError(f"{f}: LoRA tensors of dtype {sorted(kinds)} (one of F32, F16, BF16)")
    return SAFETENSORS_DTYPES[kinds.pop()]


def _target_modules(source: object, exported: list[str]) -> object:
    """The source's ``target_modules`` when it covers every exported projection, else their list."""
    if isinstance(source, str):  # a regex or "all-linear": PEFT resolves it against the base
        return source
    if isinstance(source, (list, tuple)) and set(exported) <= set(source):
        return list(source)
    return exported


def save_peft_adapter(
    adapter: LoraAdapter,
    out_dir: str | Path,
    base_model_name_or_path: str | None = None,
    metadata: dict | None = None,
    source_dirs: Sequence[str | Path] | None = None,
) -> Path:
    """Save ``adapter`` to ``out_dir`` (atomically: written to a temp dir, then renamed).

    The scale is written as ``lora_alpha = scale · r`` (``scale · √r`` when the source uses rsLoRA),
    so PEFT's forward computes the same ``s · (x A^T) B^T``. With ``source_dirs`` (the pool's
    adapters) the config keeps the first source's fields and the weights its dtype;
    ``base_model_name_or_path`` fills in only where the source names no base model.
    """
    out_dir = Path(out_dir)
    rank = int(next(iter(adapter.A.values())).shape[0])
    scale = float(np.asarray(adapter.scale))
    target_modules = sorted({m.rsplit(".", 1)[1] for m in adapter.A})
    source: dict = {}
    dtype = "float32"
    if source_dirs:
        first = Path(source_dirs[0])
        source = read_json(first / ADAPTER_CONFIG, missing=f"{first}: missing {ADAPTER_CONFIG}")
        dtype = source_weights_dtype(first)
    rslora = bool(source.get("use_rslora", False))
    config = {
        "task_type": "CAUSAL_LM",
        "lora_dropout": 0.0,
        "use_rslora": False,
        **{k: v for k, v in source.items() if k not in _MERGE_DEFINED},
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": scale * (math.sqrt(rank) if rslora else rank),
        "bias": "none",
        "use_dora": False,
        "fan_in_fan_out": False,
        "target_modules": _target_modules(source.get("target_modules"), target_modules),
        "base_model_name_or_path": source.get("base_model_name_or_path") or base_model_name_or_path,
        "inference_mode": True,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
        save_file(peft_state_dict(adapter, dtype), str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        if metadata is not None:
            (tmp / "evojax_merge.json").write_text(json.dumps(metadata, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir
