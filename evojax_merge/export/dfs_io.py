"""Save and load a DFS model (docs/methods.md §4) as an HF directory plus its path and scales.

    <dir>/config.json        the source architecture with ``num_hidden_layers`` = path length
    <dir>/model.safetensors  embeddings, final norm, head, and layer k = the k-th layer on the path
    <dir>/dfs.json           {"scales": [s_0, ...], "path": [{slot, source, layer, scale}, ...]}

Layer k takes ``layer_k(s_k · h)``. Without ``dfs.json`` transformers loads the directory as a plain
Llama (all scales 1); :func:`load_dfs` reads the scales back, and its logits equal the searched
model's. Written into a temp directory and renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from safetensors.flax import save_file

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.fileio import read_json
from evojax_merge.merge.sakana_dfs import DFSModel
from evojax_merge.models.config import load_config
from evojax_merge.models.io import _read_safetensors


def save_dfs(model: DFSModel, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    on = np.asarray(model.on)
    slots = np.flatnonzero(on)
    if slots.size == 0:
        raise EvoMergeInputError(f"{out_dir}: the DFS path is empty (no slot with I_t > 0)")
    js = np.asarray(model.layer_of_slot)[slots]
    scales = [float(s) for s in np.asarray(model.scale)[slots]]
    weights = {k: jnp.asarray(v) for k, v in model.top.items()}
    for k, j in enumerate(js):
        for suf, arr in model.layers.items():
            weights[f"model.layers.{k}.{suf}"] = jnp.asarray(arr[int(j)])
    cfg = dataclasses.replace(model.config, num_hidden_layers=int(slots.size))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2))
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "dfs.json").write_text(json.dumps({"scales": scales, "path": list(model.path)}, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def load_dfs(model_dir: str | Path, dtype: str | None = None) -> DFSModel:
    """Read a directory written by :func:`save_dfs` back as a :class:`DFSModel`."""
    model_dir = Path(model_dir)
    cfg = load_config(model_dir, dtype=dtype)
    meta = read_json(model_dir / "dfs.json", missing=f"{model_dir}: missing dfs.json (not a DFS model)")
    scales = meta.get("scales") if isinstance(meta, dict) else None
    if not isinstance(scales, list) or len(scales) != cfg.num_hidden_layers:
        raise EvoMergeInputError(f"{model_dir / 'dfs.json'}: 'scales' must list {cfg.num_hidden_layers} numbers")
    if not np.isfinite(np.asarray(scales, np.float64)).all():
        raise EvoMergeInputError(f"{model_dir / 'dfs.json'}: 'scales' has a non-finite value")
    weights = _read_safetensors(model_dir)
    n = cfg.num_hidden_layers
    prefix = "model.layers.0."
    sufs = sorted(k[len(prefix):] for k in weights if k.startswith(prefix))
    try:
        layers = {s: jnp.stack([jnp.asarray(weights[f"model.layers.{k}.{s}"]) for k in range(n)]) for s in sufs}
        top = {k: jnp.asarray(weights[k]) for k in ("model.embed_tokens.weight", "model.norm.weight")}
    except KeyError as e:
        raise EvoMergeInputError(f"{model_dir}: missing tensor {e.args[0]!r}") from None
    if "lm_head.weight" in weights:
        top["lm_head.weight"] = jnp.asarray(weights["lm_head.weight"])
    return DFSModel(cfg, top, layers, jnp.arange(n), jnp.ones(n, bool), jnp.asarray(scales, jnp.float32),
                    json.dumps(meta.get("path", [])))
