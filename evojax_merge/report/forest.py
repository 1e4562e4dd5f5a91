"""A forest plot per claim (matplotlib's object API on the Agg canvas): one panel per inequality of the
claim, one row per world (its paired difference ``d_w`` and the test-set bootstrap's 95% percentile
interval), and the pooled estimate with its 95% interval (report/stats.py); a solid line at 0 and a
dashed one at the claim's threshold when it is not 0. A world that failed the gate is drawn hollow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from evojax_merge.report.plots import _save
from evojax_merge.report.predictions import Prediction
from evojax_merge.report.stats import world_differences


def worth_drawing(prediction: Prediction) -> bool:
    """A claim with at least one gap over two or more replicates (a single run has nothing to pool)."""
    return any(p.gap is not None and len(p.gap.replicates) >= 2 for p in prediction.parts)


def forest_figure(prediction: Prediction, path: Path, gates: Mapping | None = None, metric: str = "F1") -> Path:
    gates = gates or {}
    parts = [p for p in prediction.parts if p.gap is not None]
    rows = max(len(world_differences(p.gap)) for p in parts) + 1
    fig = Figure(figsize=(4.6 * len(parts), 1.2 + 0.38 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(parts), squeeze=False)[0])
    for ax, part in zip(axes, parts, strict=True):
        g = part.gap
        worlds = world_differences(g)
        labels = []
        for i, (world, d, boot) in enumerate(worlds):
            failed = gates.get(world) is False
            y = len(worlds) - i
            if boot is not None:
                ax.plot([boot.lo, boot.hi], [y, y], color="C0", lw=1.5)
            ax.plot([d], [y], "o", color="C0", mfc="white" if failed else "C0", ms=6)
            name = "all runs" if world is None else f"world {world}"
            labels.append(name + (" (gate failed)" if failed else ""))
        if g.has_interval:
            ax.plot([g.lo, g.hi], [0, 0], color="C3", lw=2.5)
        ax.plot([g.mean], [0], "D", color="C3", ms=7)
        labels.append(f"pooled ({g.n} {g.unit}{'s' * (g.n != 1)})")
        ax.axvline(0.0, color="black", lw=1)
        if part.threshold != 0:
            ax.axvline(part.threshold, color="0.4", lw=1, ls="--", label=f"threshold {part.threshold:g}")
            ax.legend(fontsize=7, loc="best")
        ax.set_yticks(list(range(len(worlds), -1, -1)), labels, fontsize=8)
        ax.set_ylim(-0.8, len(worlds) + 0.8)
        ax.set_xlabel(f"Δ test {metric} ×100", fontsize=8)
        ax.set_title(f"{g.a} − {g.b}  (predicted {part.relation} {part.threshold:g}: {part.verdict})", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"{prediction.claim}: {prediction.verdict}\nworlds: bootstrap 95% interval over test records; "
                 "pooled: 95% interval", fontsize=9)
    return _save(fig, path)


def claims_to_draw(predictions: Sequence[Prediction]) -> list[Prediction]:
    return [p for p in predictions if worth_drawing(p)]
