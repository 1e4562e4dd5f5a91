"""Per-seed run directories for experiments that loop over their seeds in one job (Sakana, DAM).

``python -m evojax_merge.report`` reads one run directory per seed: a ``results.json`` with
``config.seed`` and a ``methods`` table (``{label: {precision, recall, f1, per_task: {target: cell}}}``,
fractions). These experiments write ``OUT/seeds/seed_<s>/results.json`` themselves and then build
``OUT/report/REPORT.md`` from them, so their tables and plots are the report command's, and
``python -m evojax_merge.report OUT/seeds`` rebuilds it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from evojax_merge.fileio import write_text_atomic
from evojax_merge.provenance import provenance

# what a method's ``details`` may leave for the report's figures, under the report's names
_REPORT_KEYS = ("path", "num_slots", "sources", "coefficients", "lambda", "density")


def report_cell(score: float, details: Mapping, val_ce: float | None = None, wall_s: float | None = None) -> dict:
    """One (seed, target) cell: the score (precision = recall = f1 for an accuracy), the costs, and what
    the report draws. A CMA-ES history becomes ``stages`` (fitness curves); a gradient method's
    (it has ``coefficients``) becomes ``train_history`` (loss curves)."""
    cell: dict = {"precision": score, "recall": score, "f1": score}
    if val_ce is not None:
        cell["val_ce"] = float(val_ce)
    if wall_s is not None:
        cell["wall_s"] = float(wall_s)
    for key in ("forward_examples", "backward_examples"):
        if key in details:
            cell[key] = int(details[key])
    cell.update({k: details[k] for k in _REPORT_KEYS if k in details})
    history = details.get("history")
    if history and "coefficients" in details:
        cell["train_history"] = history
    elif history:
        stages = {"ps": {"history": details["ps_history"]}} if details.get("ps_history") else {}
        stages["dfs" if "path" in details else "cmaes"] = {"history": history}
        cell["stages"] = stages
    return cell


def write_seed_runs(out_dir: str | Path, config: Mapping, metric: str,
                    cells: Mapping[int, Mapping[str, Mapping[str, Mapping]]]) -> list[Path]:
    """``cells``: ``{seed: {label: {target: cell}}}``; writes ``out_dir/seed_<s>/results.json`` per seed."""
    prov = provenance("evojax_merge.train", sys.argv[1:])
    dirs = []
    for seed, methods in sorted(cells.items()):
        table = {}
        for label, per_task in methods.items():
            table[label] = {k: float(np.mean([c[k] for c in per_task.values()])) for k in ("precision", "recall", "f1")}
            table[label]["per_task"] = dict(per_task)
        run_dir = Path(out_dir) / f"seed_{seed}"
        record = {"metric": metric, "config": {**config, "seed": int(seed)}, "methods": table, "provenance": prov}
        write_text_atomic(run_dir / "results.json", json.dumps(record, indent=1, default=float))
        dirs.append(run_dir)
    return dirs


def build_seed_report(dirs: list[Path], out: str | Path) -> Path:
    """REPORT.md and figures/ of the report command from the per-seed run directories."""
    import matplotlib

    matplotlib.use("Agg")
    from evojax_merge.report.build import build_report

    return build_report(dirs, out, wandb=None, argv=[str(d) for d in dirs])
