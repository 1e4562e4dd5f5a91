"""Write a rank-r adapter as a PEFT adapter directory that ``PeftModel.from_pretrained`` loads."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from evojax_merge.lora.adapter import LoraAdapter
from evojax_merge.lora.pool import ADAPTER_CONFIG, ADAPTER_WEIGHTS


def peft_state_dict(adapter: LoraAdapter) -> dict[str, np.ndarray]:
    """PEFT key names: ``base_model.model.model.<module>.lora_{A,B}.weight``."""
    out = {}
    for m in adapter.A:
        out[f"base_model.model.model.{m}.lora_A.weight"] = np.asarray(adapter.A[m], np.float32)
        out[f"base_model.model.model.{m}.lora_B.weight"] = np.asarray(adapter.B[m], np.float32)
    return out


def save_peft_adapter(
    adapter: LoraAdapter,
    out_dir: str | Path,
    base_model_name_or_path: str | None = None,
    metadata: dict | None = None,
) -> Path:
    """Save ``adapter`` to ``out_dir`` (atomically: written to a temp dir, then renamed).

    The scale is written as ``lora_alpha = scale · r`` (plain LoRA), so PEFT's forward computes
    the same ``s · (x A^T) B^T``.
    """
    out_dir = Path(out_dir)
    rank = int(next(iter(adapter.A.values())).shape[0])
    scale = float(np.asarray(adapter.scale))
    target_modules = sorted({m.rsplit(".", 1)[1] for m in adapter.A})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": scale * rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "target_modules": target_modules,
        "base_model_name_or_path": base_model_name_or_path,
        "inference_mode": True,
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
        save_file(peft_state_dict(adapter), str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        if metadata is not None:
            (tmp / "evojax_merge.json").write_text(json.dumps(metadata, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir
