"""Provider-side export: a genome document -> a PEFT adapter directory.

This is deliberately not a route: the merged weights never leave the provider through the API.
A user sends the provider the genome (``RemoteMergeService.genome(alpha, beta)``), and the
provider runs ``python -m evojax_merge.service export``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.fileio import read_json
from evojax_merge.lora import load_pool, save_peft_adapter
from evojax_merge.merge import PRUNE_MODES
from evojax_merge.models import load_config
from evojax_merge.search.evo_merging import merged_adapter
from evojax_merge.service.validation import FieldError, check_adapter_names, check_vector_field


def read_genome(path: str | Path) -> dict:
    """A genome document: ``{"alpha": [N], "beta": [N], "adapters"?: [names], "prune"?: "A"}``."""
    path = Path(path)
    doc = read_json(path, missing=f"{path}: genome file not found")
    if not isinstance(doc, dict) or "alpha" not in doc or "beta" not in doc:
        raise EvoMergeInputError(f"{path}: expected an object with 'alpha' and 'beta'")
    return doc


def export_genome(model_dir: str | Path, pool_spec: str, genome: Mapping, out_dir: str | Path,
                  alpha_bounds: tuple[float, float] = (0.0, 1.0),
                  beta_bounds: tuple[float, float] = (-1.5, 1.5)) -> Path:
    """Merge the pool as ``genome`` says and save the rank-r result as a PEFT adapter."""
    pool = load_pool(pool_spec, load_config(model_dir))
    prune = genome.get("prune", "A")
    try:
        if prune not in PRUNE_MODES:
            raise FieldError("prune", f"{prune!r}, expected one of {PRUNE_MODES}")
        keep = check_adapter_names(genome.get("adapters"), pool.names)
        sub = pool.subset(keep)
        alpha = check_vector_field(genome["alpha"], sub.num_adapters, alpha_bounds, "alpha")
        beta = check_vector_field(genome["beta"], sub.num_adapters, beta_bounds, "beta")
    except (FieldError, TypeError) as e:
        raise EvoMergeInputError(f"genome: {e}") from None
    adapter = merged_adapter(sub.stack, alpha, beta, prune)
    meta = {"method": "evo_merging", "pool": pool_spec, "adapters": list(sub.names), "prune": prune,
            "alpha": alpha.tolist(), "beta": beta.tolist()}
    return save_peft_adapter(adapter, out_dir, base_model_name_or_path=str(model_dir), metadata=meta)
