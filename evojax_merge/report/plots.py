"""The report's figures as PNG files: matplotlib's object API on the Agg canvas (no pyplot state).

- ``fitness_figure``: best-so-far and population-mean fitness per generation, a panel per target and stage;
- ``genome_figure``: alpha and beta heatmaps, adapters x targets, averaged over replicates;
- ``f1_bars``: test F1 per method, mean with a std error bar and a dot per world (or seed, with one world);
- ``size_curves``: F1 against the pool size N or the validation size V.

The ``collect_*`` functions turn run records into the arrays drawn; the ``*_figure`` functions draw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from evojax_merge.report.runs import RunRecord, adapter_names
from evojax_merge.report.stats import LabelStats, Summary

DPI = 110


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)
    return path


def searched_labels(runs: Sequence[RunRecord]) -> list[str]:
    """Labels with a CMA-ES search (their cells carry stages and alpha/beta)."""
    return sorted({label for r in runs for label, res in r.methods.items()
                   if any(isinstance(c.get("stages"), dict) for c in res["per_task"].values())})


def collect_fitness(runs: Sequence[RunRecord], label: str) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """``{target: {stage: {"best": [replicates, G], "mean": [replicates, G]}}}``, NaN-padded to the longest stage."""
    rows: dict[str, dict[str, dict[str, list[list[float]]]]] = {}
    for run in sorted(runs, key=lambda r: (r.world is not None, r.world or 0, r.seed)):
        for target, cell in run.methods.get(label, {}).get("per_task", {}).items():
            for stage, rec in (cell.get("stages") or {}).items():
                history = rec.get("history") or []
                slot = rows.setdefault(target, {}).setdefault(stage, {"best": [], "mean": []})
                for key in ("best", "mean"):
                    slot[key].append([_float(row.get(key)) for row in history])
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for target, stages in sorted(rows.items()):
        for stage, series in stages.items():
            length = max(len(s) for s in series["best"])
            out.setdefault(target, {})[stage] = {
                key: np.array([s + [math.nan] * (length - len(s)) for s in series[key]], np.float64)
                for key in ("best", "mean")}
    return out


def _float(v) -> float:
    return float(v) if isinstance(v, int | float) else math.nan


def collect_genomes(runs: Sequence[RunRecord], label: str) -> tuple[list[str], list[str], np.ndarray, np.ndarray, int]:
    """``(adapters, targets, alpha [A, T], beta [A, T], replicates)``: the mean over replicates (world, seed),
    NaN where an adapter was not in a target's pool. Adapters whose names are unknown are rows ``#i`` (pool
    position)."""
    values: dict[tuple[str, str], dict[str, list[float]]] = {}
    seeds = set()
    for run in runs:
        for target, cell in run.methods.get(label, {}).get("per_task", {}).items():
            alpha, beta = cell.get("alpha"), cell.get("beta")
            if not isinstance(alpha, list) or not isinstance(beta, list) or len(alpha) != len(beta):
                continue
            seeds.add(run.replicate)
            names = adapter_names(run, label, target, cell) or [f"#{i}" for i in range(len(alpha))]
            for name, a, b in zip(names, alpha, beta, strict=True):
                slot = values.setdefault((name, target), {"alpha": [], "beta": []})
                slot["alpha"].append(_float(a))
                slot["beta"].append(_float(b))
    adapters = sorted({a for a, _ in values}, key=_natural)
    targets = sorted({t for _, t in values})
    alpha = np.full((len(adapters), len(targets)), np.nan)
    beta = np.full_like(alpha, np.nan)
    for (name, target), slot in values.items():
        i, j = adapters.index(name), targets.index(target)
        alpha[i, j], beta[i, j] = np.nanmean(slot["alpha"]), np.nanmean(slot["beta"])
    return adapters, targets, alpha, beta, len(seeds)


def _natural(name: str):
    return (0, int(name[1:]), "") if name.startswith("#") and name[1:].isdigit() else (1, 0, name)


def fitness_figure(label: str, curves: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]], path: Path) -> Path:
    targets = list(curves)
    stages = list(dict.fromkeys(s for t in targets for s in curves[t]))
    fig = Figure(figsize=(4.2 * len(stages), 2.6 * len(targets) + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(targets), len(stages), squeeze=False))
    for i, target in enumerate(targets):
        for j, stage in enumerate(stages):
            ax = axes[i, j]
            series = curves[target].get(stage)
            ax.set_title(f"{target} · {stage}", fontsize=9)
            if series is None:
                ax.set_axis_off()
                continue
            best, mean = series["best"], series["mean"]
            x = np.arange(1, best.shape[1] + 1)
            with np.errstate(all="ignore"):
                ax.plot(x, np.nanmean(best, 0), color="C0", label="best so far (mean over runs)")
                if best.shape[0] > 1:
                    ax.fill_between(x, np.nanmin(best, 0), np.nanmax(best, 0), color="C0", alpha=0.2,
                                    label="best: range over runs")
                ax.plot(x, np.nanmean(mean, 0), color="C1", linestyle="--", label="population mean")
            ax.set_xlabel("generation", fontsize=8)
            ax.set_ylabel("fitness (lower is better)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0, 0].legend(fontsize=7)
    n = max((s["best"].shape[0] for t in curves.values() for s in t.values()), default=0)
    fig.suptitle(f"{label}: fitness per generation ({n} run{'s' * (n != 1)})", fontsize=11)
    return _save(fig, path)


def genome_figure(label: str, adapters: Sequence[str], targets: Sequence[str], alpha: np.ndarray, beta: np.ndarray,
                  seeds: int, path: Path) -> Path:
    rows, cols = len(adapters), len(targets)
    height = max(3.0, 0.2 * rows + 1.6)
    fig = Figure(figsize=(2 * (2.2 + 0.55 * cols) + 1.5, height), layout="constrained")
    ax_a, ax_b = fig.subplots(1, 2, sharey=True)
    finite_b = np.abs(beta[np.isfinite(beta)])
    limit = float(finite_b.max()) if finite_b.size and finite_b.max() > 0 else 1.0
    finite_a = alpha[np.isfinite(alpha)]
    a_lo = min(0.0, float(finite_a.min())) if finite_a.size else 0.0
    a_hi = max(1.0, float(finite_a.max())) if finite_a.size else 1.0
    panels = ((ax_a, alpha, "viridis", {"vmin": a_lo, "vmax": a_hi}, "α (keep fraction)"),
              (ax_b, beta, "RdBu_r", {"norm": TwoSlopeNorm(0.0, -limit, limit)}, "β (signed scale)"))
    for ax, data, cmap_name, scale, title in panels:
        cmap = matplotlib.colormaps[cmap_name].with_extremes(bad="0.85")
        image = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap=cmap, interpolation="nearest", **scale)
        fig.colorbar(image, ax=ax, shrink=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(cols), targets, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(rows), adapters, fontsize=8 if rows <= 40 else 5)
        if rows * cols <= 240:
            for i in range(rows):
                for j in range(cols):
                    if np.isfinite(data[i, j]):
                        r, g, b, _ = image.cmap(image.norm(data[i, j]))
                        dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # perceived luminance of the cell
                        ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=6,
                                color="white" if dark else "black")
    ax_a.set_ylabel("adapter", fontsize=9)
    fig.suptitle(f"{label}: searched genome, mean over {seeds} run{'s' * (seeds != 1)} (grey: not in the pool)",
                 fontsize=10)
    return _save(fig, path)


def f1_bars(title: str, stats: Sequence[LabelStats], path: Path, metric: str = "F1", unit: str = "seed") -> Path:
    ordered = sorted(stats, key=lambda s: (-s.f1.mean, s.label))
    fig = Figure(figsize=(max(5.0, 0.7 * len(ordered) + 2), 4.2), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(ordered))
    means = [s.f1.mean for s in ordered]
    errors = [s.f1.std if math.isfinite(s.f1.std) else 0.0 for s in ordered]
    ax.bar(x, means, yerr=errors, capsize=4, color="C0", alpha=0.75, label=f"mean ± std over {unit}s")
    for i, s in enumerate(ordered):
        ys = list(s.per_unit.values())
        ax.scatter([i] * len(ys), ys, color="black", s=10, zorder=3, label=f"each {unit}" if i == 0 else None)
        if s.vs_best_single is not None and s.vs_best_single.marked:
            ax.annotate("*", (i, means[i] + errors[i]), xytext=(0, 3), textcoords="offset points", ha="center",
                        va="bottom", fontsize=14)
    ax.set_xticks(x, [s.label for s in ordered], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel(f"test {metric} ×100")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title(title + "\n* the 95% interval of the paired gap to best_single excludes 0", fontsize=10)
    return _save(fig, path)


def size_curves(title: str, xlabel: str, series: Mapping[str, Sequence[tuple[float, Summary]]], path: Path) -> Path:
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.subplots()
    for k, (name, points) in enumerate(series.items()):
        xs = [p[0] for p in points]
        ys = [p[1].mean for p in points]
        errs = [p[1].std if math.isfinite(p[1].std) else 0.0 for p in points]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, color=f"C{k % 10}", label=name)
    ax.set_xscale("log")
    xs_all = sorted({p[0] for points in series.values() for p in points})
    ax.set_xticks(xs_all, [f"{x:g}" for x in xs_all])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test F1 ×100 (mean ± std over replicates)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
