"""The paper run's one-page summary: every table's headline and the paper's predictions, each **held**,
**not held** or **undetermined** with its 95% interval (report/predictions.py).

``OUT/SUMMARY.md`` beside ``OUT/<table>/report/REPORT.md``: per table, the design (worlds × search seeds,
the gate), each method's test F1 (mean ± std over worlds, or seeds with one world) and the predictions its
report checks, again on the gated worlds when some failed; then the prediction that needs two tables
(distractors cost Evo-Merging at most 3 F1 while TA and TIES drop 10 or more: id against distractors).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from evojax_merge.report.markdown import methods_table, prediction_lines
from evojax_merge.report.predictions import check_distractor_cost, check_predictions
from evojax_merge.report.stats import GapFn, LabelStats


def summary_markdown(stats: Mapping[str, Mapping[str, LabelStats]], reports: Mapping[str, str],
                     seeds: Sequence[int], seconds: float, command: str,
                     table_seconds: Mapping[str, float] | None = None, gaps: Mapping[str, GapFn] | None = None,
                     designs: Mapping[str, str] | None = None,
                     gated: Mapping[str, tuple[Mapping[str, LabelStats], GapFn, int]] | None = None) -> str:
    """SUMMARY.md's text: ``stats`` and ``reports`` (relative paths) per table, in the run's order;
    ``table_seconds``: each table's runs' own wall time, summed over its replicates; ``gaps``: each table's
    paired-gap function (with the test-set bootstrap), default from its stats; ``designs``: each table's
    design in words; ``gated``: per table whose gate failed somewhere, (stats, gap, worlds) on the worlds
    that passed."""
    table_seconds, gaps, designs, gated = table_seconds or {}, gaps or {}, designs or {}, gated or {}
    runs = f"; the runs themselves took {sum(table_seconds.values()) / 60:.0f} min" if table_seconds else ""
    parts = [f"# The paper's tables: {len(stats)} tables x {len(seeds)} seeds ({', '.join(map(str, seeds))})",
             f"`{command}` — {seconds / 60:.0f} min in this invocation (runs finished earlier were skipped){runs}. "
             "Test F1 ×100, mean ± std over worlds (over seeds with one world); each table's report has the gaps, "
             "costs, figures and provenance. A prediction is **held** when its 95% interval lies wholly on the "
             "predicted side of its threshold, **not held** when wholly on the other side, else **undetermined**."]
    for table, s in stats.items():
        took = f" — runs: {table_seconds[table] / 60:.1f} min over its replicates" if table in table_seconds else ""
        design = f"{designs[table]}. " if table in designs else ""
        parts += [f"## {table}", f"{design}[REPORT.md]({reports[table]}){took}", methods_table(s)]
        checked = check_predictions(s, gaps.get(table))
        if checked:
            parts.append(prediction_lines(checked))
        if table in gated:
            g_stats, g_gap, worlds = gated[table]
            g_checked = check_predictions(g_stats, g_gap)
            if g_checked:
                parts += [f"On the {worlds} worlds that passed the gate:", prediction_lines(g_checked)]
    if "id" in stats and "distractors" in stats:
        cross = check_distractor_cost(stats["id"], stats["distractors"])
        if cross:
            parts += ["## Across tables: id against distractors", prediction_lines(cross)]
    return "\n\n".join(parts) + "\n"


def write_summary(out_dir: Path, table_dirs: Mapping[str, Sequence[Path]], reports: Mapping[str, str],
                  seeds: Sequence[int], seconds: float, command: str) -> Path:
    """Write ``out_dir/SUMMARY.md`` (atomically); returns its path."""
    from evojax_merge.fileio import write_text_atomic
    from evojax_merge.report.analysis import analyses
    from evojax_merge.report.runs import find_run_dirs, load_run

    runs = {table: [load_run(d) for d in find_run_dirs(dirs)] for table, dirs in table_dirs.items()}
    done = {table: analyses(rs) for table, rs in runs.items()}  # each results.json and predictions/ once
    stats = {table: a.stats for table, (a, _) in done.items()}
    gated = {table: (g.stats, g.gap, len(g.worlds)) for table, (_, g) in done.items() if g}
    took = {table: sum(r.run_seconds for r in rs) for table, rs in runs.items()}
    rel = {t: str(Path(p).relative_to(out_dir)) if Path(p).is_relative_to(out_dir) else str(p)
           for t, p in reports.items()}
    return write_text_atomic(out_dir / "SUMMARY.md", summary_markdown(
        stats, rel, seeds, seconds, command, took, {t: a.gap for t, (a, _) in done.items()},
        {t: a.design for t, (a, _) in done.items()}, gated))
