"""The report's method-specific figures, drawn from what a method leaves in its per-target cells.

- ``dfs_path_figure``: a found data-flow path, slot x source, one panel per seed (cells with ``path``);
- ``coefficient_figure``: DAM's mean column coefficient per weight and source, averaged over seeds
  (cells with ``coefficients``: ``{weight: [per-source mean]}``);
- ``training_figure``: a gradient method's loss and its parts per step (cells with ``train_history``);
- ``quality_vs_cost``: the metric against wall time and against examples forwarded (cells with
  ``wall_s`` / ``forward_examples``).

The ``collect_*`` functions read run records; the ``*_figure`` functions draw (matplotlib's object API).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from evojax_merge.report.plots import _save
from evojax_merge.report.runs import RunRecord
from evojax_merge.report.stats import LabelStats, Summary


def labels_with(runs: Sequence[RunRecord], key: str) -> list[str]:
    """Labels with at least one cell carrying ``key``."""
    return sorted({label for r in runs for label, res in r.methods.items()
                   if any(key in c for c in res["per_task"].values())})


def collect_cells(runs: Sequence[RunRecord], label: str, key: str) -> list[tuple[int, str, dict]]:
    """``(seed, target, cell)`` for every cell of ``label`` carrying ``key``, by seed."""
    return [(r.seed, t, c) for r in sorted(runs, key=lambda r: (r.world is not None, r.world or 0, r.seed))
            for t, c in r.methods.get(label, {}).get("per_task", {}).items() if key in c]


def dfs_path_figure(label: str, cells: Sequence[tuple[int, str, dict]], path: Path) -> Path:
    """One panel per (seed, target): colour = the input scale W[prev, j] of each layer on the path."""
    fig = Figure(figsize=(max(6.0, 0.4 * max(c["num_slots"] for _, _, c in cells) + 2), 1.6 * len(cells) + 0.8),
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(cells), 1, squeeze=False)[:, 0])
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.92")
    for ax, (seed, target, cell) in zip(axes, cells, strict=True):
        sources = [Path(s).name for s in cell["sources"]]
        grid = np.full((len(sources), int(cell["num_slots"])), np.nan)
        for step in cell["path"]:
            grid[step["source_index"], step["slot"]] = step["scale"]
        image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, interpolation="nearest")
        for k, step in enumerate(cell["path"]):
            ax.text(step["slot"], step["source_index"], f"L{step['layer']}\n#{k}", ha="center", va="center",
                    fontsize=6, color="white")
        ax.set_yticks(range(len(sources)), sources, fontsize=8)
        ax.set_title(f"seed {seed} · {target}: {len(cell['path'])} layers on the path", fontsize=9)
        fig.colorbar(image, ax=ax, label="input scale", shrink=0.9)
    axes[-1].set_xlabel("slot (all sources' layers in a row, repeated); cell: layer, step on the path", fontsize=8)
    fig.suptitle(f"{label}: found data-flow paths", fontsize=10)
    return _save(fig, path)


def _weight_order(name: str):
    m = re.search(r"layers\.(\d+)\.", name)
    return (int(m.group(1)) if m else -1, name)


def coefficient_figure(label: str, cells: Sequence[tuple[int, str, dict]], sources: Sequence[str] | None,
                       path: Path) -> Path:
    """Rows: weights (by layer); columns: sources; value: the mean coefficient, averaged over cells."""
    weights = sorted({w for _, _, c in cells for w in c["coefficients"]}, key=_weight_order)
    width = max(len(v) for _, _, c in cells for v in c["coefficients"].values())
    sums, counts = np.zeros((len(weights), width)), np.zeros((len(weights), width))
    for _, _, cell in cells:
        for i, w in enumerate(weights):
            v = np.asarray(cell["coefficients"].get(w, []), np.float64)
            sums[i, : v.size] += np.nan_to_num(v)
            counts[i, : v.size] += np.isfinite(v)
    with np.errstate(invalid="ignore"):
        data = sums / counts
    names = list(sources) if sources and len(sources) == width else [f"source {i}" for i in range(width)]
    fig = Figure(figsize=(2.2 + 1.1 * width, max(3.0, 0.16 * len(weights) + 1.4)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(data, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="mean column coefficient")
    ax.set_xticks(range(width), names, fontsize=8)
    ax.set_yticks(range(len(weights)), [w.removeprefix("model.") for w in weights],
                  fontsize=7 if len(weights) <= 60 else 4)
    seeds = len({s for s, _, _ in cells})
    ax.set_title(f"{label}: coefficients per weight (mean over {seeds} seed{'s' * (seeds != 1)})", fontsize=9)
    return _save(fig, path)


def training_figure(label: str, cells: Sequence[tuple[int, str, dict]], path: Path) -> Path:
    """The loss and each logged part against the step, a line per (seed, target)."""
    parts = list(dict.fromkeys(k for _, _, c in cells for row in c["train_history"] for k in row if k != "step"))
    fig = Figure(figsize=(3.6 * max(1, len(parts)), 3.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(parts)), squeeze=False)[0])
    for ax, part in zip(axes, parts, strict=False):
        for k, (seed, target, cell) in enumerate(cells):
            rows = [r for r in cell["train_history"] if part in r]
            ax.plot([r.get("step", i) for i, r in enumerate(rows)], [r[part] for r in rows], color=f"C{k % 10}",
                    linewidth=1, label=f"seed {seed} · {target}")
        ax.set_title(part, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=6)
    fig.suptitle(f"{label}: training loss per step", fontsize=10)
    return _save(fig, path)


def quality_vs_cost(title: str, metric: str, stats: Mapping[str, LabelStats],
                    costs: Mapping[str, Mapping[str, Summary]], path: Path) -> Path:
    """Two panels: the metric (mean ± std over seeds) against wall seconds and against forward examples."""
    fig = Figure(figsize=(10.0, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, xlabel in ((axes[0], "wall_s", "wall time per target (s)"),
                            (axes[1], "forward_examples", "examples through a forward pass")):
        for k, (label, cost) in enumerate(costs.items()):
            if key not in cost or label not in stats or not cost[key].mean > 0:
                continue
            s = stats[label].f1
            ax.errorbar([cost[key].mean], [s.mean], yerr=[s.std if math.isfinite(s.std) else 0.0], marker="o",
                        capsize=3, color=f"C{k % 10}", label=label)
            ax.annotate(label, (cost[key].mean, s.mean), xytext=(4, 3), textcoords="offset points", fontsize=7)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # decades only: the minor labels overlap
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel(f"test {metric} ×100 (mean ± std over seeds)")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
