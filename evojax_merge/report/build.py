"""Build a report from run directories: REPORT.md plus figures/, and optionally W&B.

The runs are replicates (world, search seed) of one experiment; report/analysis.py turns them into
stats, paired gaps with 95% intervals (report/stats.py) and the test-set bootstrap (report/bootstrap.py).

Everything is read and checked before anything is written; the files are made in a staging
directory next to the output and moved in at the end, so a failure leaves no half-written report.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.provenance import provenance
from evojax_merge.report import method_plots, plots
from evojax_merge.report.analysis import Analysis, analyses
from evojax_merge.report.bootstrap import BOOT_SEED, N_BOOT
from evojax_merge.report.markdown import provenance_section, report_markdown
from evojax_merge.report.predictions import check_predictions
from evojax_merge.report.runs import RunRecord, check_same_experiment, find_run_dirs, load_run
from evojax_merge.report.stats import LabelStats, Summary, size_series

FIGURES = "figures"


def _slug(label: str) -> str:
    return re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9=.-]+", "_", label)).strip("_")


def default_out(paths: Sequence[str | Path]) -> Path:
    """``report/`` in the deepest folder holding every given path."""
    folders = [Path(p).resolve() for p in paths]
    folders = [p.parent if p.is_file() else p for p in folders]
    return Path(os.path.commonpath([str(p) for p in folders])) / "report"


def _figures(runs: Sequence[RunRecord], analysis: Analysis, title: str, where: Path) -> list[tuple[str, str]]:
    """Draw every figure into ``where``; returns ``(caption, path relative to the report)``."""
    from evojax_merge.report import forest

    stats, costs = analysis.stats, analysis.costs
    where.mkdir(parents=True, exist_ok=True)
    made: list[tuple[str, str]] = []

    def add(caption: str, name: str) -> Path:
        made.append((caption, f"{FIGURES}/{name}"))
        return where / name

    metric = runs[0].metric
    plots.f1_bars(title, list(stats.values()), add(f"test {metric} per method, mean ± std over {analysis.unit}s",
                                                   "f1_bars.png"), metric, analysis.unit)
    for claim in forest.claims_to_draw(check_predictions(stats, analysis.gap)):
        forest.forest_figure(claim, add(f"{claim.claim}: per world and pooled", f"forest_{_slug(claim.key)}.png"),
                             analysis.gates, metric)
    for param, xlabel in (("N", "pool size N (adapters)"), ("V", "validation examples V")):
        series = size_series(stats, param)
        if series:
            plots.size_curves(f"{title}: F1 against {xlabel}", xlabel, series,
                              add(f"F1 against {xlabel}", f"{'pool' if param == 'N' else 'val'}_size.png"))
    for label in plots.searched_labels(runs):
        curves = plots.collect_fitness(runs, label)
        if curves:
            plots.fitness_figure(label, curves, add(f"{label}: best and mean fitness per generation",
                                                    f"fitness_{_slug(label)}.png"))
        adapters, targets, alpha, beta, seeds = plots.collect_genomes(runs, label)
        if adapters:
            plots.genome_figure(label, adapters, targets, alpha, beta, seeds,
                                add(f"{label}: α and β, adapters × targets", f"genome_{_slug(label)}.png"))
    _method_figures(runs, stats, costs, title, add)
    return made


def _method_figures(runs: Sequence[RunRecord], stats: dict[str, LabelStats], costs: dict[str, dict[str, Summary]],
                    title: str, add) -> None:
    """What some methods leave in their cells: DFS paths, DAM coefficients and loss curves, costs."""
    metric = runs[0].metric
    for label in method_plots.labels_with(runs, "path"):
        method_plots.dfs_path_figure(label, method_plots.collect_cells(runs, label, "path"),
                                     add(f"{label}: the found layer paths (slot × source)", f"path_{_slug(label)}.png"))
    for label in method_plots.labels_with(runs, "coefficients"):
        cells = method_plots.collect_cells(runs, label, "coefficients")
        method_plots.coefficient_figure(label, cells, cells[0][2].get("sources"),
                                        add(f"{label}: coefficients per weight and source",
                                            f"coefficients_{_slug(label)}.png"))
    for label in method_plots.labels_with(runs, "train_history"):
        method_plots.training_figure(label, method_plots.collect_cells(runs, label, "train_history"),
                                     add(f"{label}: training loss per step", f"training_{_slug(label)}.png"))
    if any("wall_s" in c or "forward_examples" in c for c in costs.values()):
        method_plots.quality_vs_cost(f"{title}: quality against cost", metric, stats, costs,
                                     add(f"test {metric} against wall time and forward examples",
                                         "quality_vs_cost.png"))


def world_sections(runs: Sequence[RunRecord], where: Path) -> str:
    """Markdown a world adds to the report: results.json's ``world.report`` names ``module:function``, called as
    ``function(run_dirs, figures_dir) -> str`` (its figures go in ``figures_dir``); "" when it names none."""
    import importlib
    import json

    world = json.loads(runs[0].results_path.read_text()).get("world")
    target = world.get("report") if isinstance(world, dict) else None
    if not target:
        return ""
    module, _, name = str(target).partition(":")
    return "\n" + getattr(importlib.import_module(module), name)([r.path for r in runs], where)


def _from_report(path: str | Path, out: Path) -> str:
    """``path`` relative to the report directory ``out`` (where its command is run from)."""
    return os.path.relpath(Path(path).resolve(), out.resolve())


def _install(staging: Path, out: Path) -> None:
    """Move the staged REPORT.md and figures/ into ``out`` (replacing a previous report's)."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = out / FIGURES
    trash = staging / ".old-figures"
    if old.exists():
        os.replace(old, trash)
    os.replace(staging / FIGURES, old)
    os.replace(staging / "REPORT.md", out / "REPORT.md")
    shutil.rmtree(staging, ignore_errors=True)


def _finite(x: float) -> float | None:
    return x if x == x else None  # NaN -> None


def wandb_tables(stats: dict[str, LabelStats]) -> dict[str, tuple[list[str], list[list]]]:
    def gap_row(g):
        if g is None:
            return [None, None, None, False]
        return [g.mean, _finite(g.lo), _finite(g.hi), g.marked]

    summary = [[s.label, s.f1.n, s.f1.mean, s.f1.std, s.precision.mean, s.recall.mean, *gap_row(s.vs_best_single)]
               for s in stats.values()]
    per_seed = [[s.label, w, seed, f1] for s in stats.values() for (w, seed), f1 in s.per_replicate.items()]
    per_target = [[s.label, t, v.mean, v.std, v.n] for s in stats.values() for t, v in s.per_target.items()]
    return {
        "report/methods": (["method", "n", "f1_mean", "f1_std", "precision_mean", "recall_mean",
                            "gap_vs_best_single", "gap_lo95", "gap_hi95", "gap_marked"], summary),
        "report/per_seed": (["method", "world", "seed", "f1"], per_seed),
        "report/per_target": (["method", "target", "f1_mean", "f1_std", "n"], per_target),
    }


def build_report(paths: Sequence[str | Path], out: str | Path | None = None, wandb: bool | None = None,
                 argv: Sequence[str] | None = None, n_boot: int = N_BOOT, boot_seed: int = BOOT_SEED) -> Path:
    """Read the runs under ``paths``, write ``out/REPORT.md`` and ``out/figures/*.png``; returns REPORT.md.

    ``wandb``: ``None`` logs when the runs' own config has a W&B logger, ``True``/``False`` force it.
    ``n_boot``: resamples of the test-set bootstrap (0: none); ``boot_seed``: its generator's seed.
    """
    runs = [load_run(d) for d in find_run_dirs(paths)]
    check_same_experiment(runs)
    analysis, gated = analyses(runs, n_boot, boot_seed)
    stats = analysis.stats
    out = Path(out) if out is not None else default_out(paths)
    if out.exists() and not out.is_dir():
        raise EvoMergeInputError(f"{out}: --out exists and is not a directory")
    first = runs[0]
    title = f"{first.experiment} ({first.setting} setting)"
    common = os.path.commonpath([str(r.path) for r in runs])
    if len(runs) == 1:
        common = str(runs[0].path.parent)
    # paths relative to the report's own directory: a committed report names no directory of one machine
    shown = _from_report(common, out)
    args = [_from_report(a, out) if Path(a).exists() else a for a in (argv if argv is not None else sys.argv[1:])]
    report_prov = provenance("evojax_merge.report", args)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        figures = _figures(runs, analysis, title, staging / FIGURES)
        provenance_text = provenance_section(runs, common, report_prov["command"], report_prov["git_commit"],
                                             report_prov["git_dirty"], shown=shown)
        text = report_markdown(first.experiment, first.setting, analysis, figures, provenance_text,
                               metric=first.metric, gated=gated)
        text += world_sections(runs, staging / FIGURES)
        (staging / "REPORT.md").write_text(text, encoding="utf-8")
        _install(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _log_wandb(runs, stats, out, text, figures, wandb)
    return out / "REPORT.md"


def _log_wandb(runs: Sequence[RunRecord], stats: dict[str, LabelStats], out: Path, text: str,
               figures: Sequence[tuple[str, str]], wandb: bool | None) -> None:
    from evojax_merge.tracking import make_tracker

    logger = dict(runs[0].config.get("logger") or {"name": "none"})
    if wandb is True and logger.get("name", "none") == "none":
        logger = {"name": "wandb", "project": "evojax_merge", "mode": "offline"}
    if wandb is False or logger.get("name", "none") == "none":
        return
    config = {"experiment": runs[0].experiment, "seeds": sorted({r.seed for r in runs}),
              "worlds": sorted({r.world for r in runs if r.world is not None}),
              "runs": [str(r.path) for r in runs]}
    tracker = make_tracker(logger, config, out, f"report-{runs[0].experiment}")
    try:
        images = {f"report/{Path(path).stem}": out / path for _, path in figures}
        tracker.log_report(wandb_tables(stats), images, text)
    finally:
        tracker.finish()
