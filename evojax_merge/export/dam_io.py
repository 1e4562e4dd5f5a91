"""DAM's files: full sources read from HF directories, the merged model or adapter written back.

- :func:`load_full_sources`: N HF checkpoints of one architecture as a :class:`FullDamModel`
  (shapes checked; a mismatch names the source and the tensor).
- :func:`save_merged_model`: the merged full model as an HF directory (config + safetensors).
- :func:`save_merged_adapter`: the merged LoRA pool as a PEFT adapter of rank N·r.
- :func:`save_coefficients` / :func:`load_coefficients`: the learned coefficients (safetensors).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.export import save_peft_adapter
from evojax_merge.merge.dam import DamParts, stack_sources
from evojax_merge.models.io import load_model, model_weights, save_model
from evojax_merge.search.dam import FullDamModel, LoraDamModel


def load_full_sources(dirs: Sequence[str | Path], parts: DamParts | None = None, dtype: str | None = None,
                      names: Sequence[str] | None = None) -> FullDamModel:
    """N HF model directories, stacked on a leading axis; they must share every tensor shape."""
    dirs = [Path(d) for d in dirs]
    names = list(names) if names is not None else [d.name for d in dirs]
    models = [load_model(d, dtype=dtype) for d in dirs]
    for m, name in zip(models[1:], names[1:], strict=True):
        if m.config.num_hidden_layers != models[0].config.num_hidden_layers:
            raise EvoMergeInputError(f"dam: source {name!r} has {m.config.num_hidden_layers} layers, "
                                     f"{names[0]!r} has {models[0].config.num_hidden_layers}")
    stacked = stack_sources([model_weights(m) for m in models], names)
    return FullDamModel(models[0], stacked, names, parts)


def save_merged_model(model: FullDamModel, coeffs: Mapping[str, np.ndarray], out_dir: str | Path) -> Path:
    """Write the merged full model as an HF checkpoint (atomically)."""
    merged = model.merged_weights({k: jnp.asarray(v) for k, v in coeffs.items()})
    return save_model(model.model_for(merged), out_dir)


def save_merged_adapter(model: LoraDamModel, coeffs: Mapping[str, np.ndarray], out_dir: str | Path,
                        base_model_name_or_path: str | None = None, metadata: dict | None = None) -> Path:
    """Write the merged LoRA pool as a PEFT adapter directory (rank N·r, scale 1)."""
    adapter = model.merged_adapter({k: jnp.asarray(v) for k, v in coeffs.items()})
    return save_peft_adapter(adapter, out_dir, base_model_name_or_path, metadata)


def save_coefficients(coeffs: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """The coefficients, one tensor per key (``[N, width]``), as safetensors."""
    from safetensors.numpy import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(save({k: np.ascontiguousarray(v, np.float32) for k, v in coeffs.items()}))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_coefficients(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise EvoMergeInputError(f"{path}: coefficient file does not exist")
    try:
        out = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise EvoMergeInputError(f"{path}: unreadable coefficients ({e})") from None
    for k, v in out.items():
        if not np.isfinite(v).all():
            raise EvoMergeInputError(f"{path}: non-finite coefficients in {k!r}")
    return out


