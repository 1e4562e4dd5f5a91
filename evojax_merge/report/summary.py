"""The paper run's one-page summary: every table's headline and the paper's predictions, held or not.

``OUT/SUMMARY.md`` beside ``OUT/<table>/report/REPORT.md``: per table, each method's test F1 (mean ± std
over seeds) and the predictions its report checks; then the prediction that needs two tables
(distractors cost Evo-Merging at most 3 F1 while TA and TIES drop 10 or more: id against distractors).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from evojax_merge.report.markdown import methods_table, prediction_lines
from evojax_merge.report.predictions import check_distractor_cost, check_predictions
from evojax_merge.report.stats import LabelStats, label_stats


def summary_markdown(stats: Mapping[str, Mapping[str, LabelStats]], reports: Mapping[str, str],
                     seeds: Sequence[int], seconds: float, command: str,
                     table_seconds: Mapping[str, float] | None = None) -> str:
    """SUMMARY.md's text: ``stats`` and ``reports`` (relative paths) per table, in the run's order;
    ``table_seconds``: each table's runs' own wall time, summed over its seeds."""
    table_seconds = table_seconds or {}
    runs = f"; the runs themselves took {sum(table_seconds.values()) / 60:.0f} min" if table_seconds else ""
    parts = [f"# The paper's tables: {len(stats)} tables x {len(seeds)} seeds ({', '.join(map(str, seeds))})",
             f"`{command}` — {seconds / 60:.0f} min in this invocation (runs finished earlier were skipped){runs}. "
             "Test F1 ×100, mean ± std over seeds; each table's report has the gaps, costs, figures and provenance."]
    for table, s in stats.items():
        took = f" — runs: {table_seconds[table] / 60:.1f} min over its seeds" if table in table_seconds else ""
        parts += [f"## {table}", f"[REPORT.md]({reports[table]}){took}", methods_table(s)]
        checked = check_predictions(s)
        if checked:
            parts.append(prediction_lines(checked))
    if "id" in stats and "distractors" in stats:
        cross = check_distractor_cost(stats["id"], stats["distractors"])
        if cross:
            parts += ["## Across tables: id against distractors", prediction_lines(cross)]
    return "\n\n".join(parts) + "\n"


def write_summary(out_dir: Path, table_dirs: Mapping[str, Sequence[Path]], reports: Mapping[str, str],
                  seeds: Sequence[int], seconds: float, command: str) -> Path:
    """Write ``out_dir/SUMMARY.md`` (atomically); returns its path."""
    from evojax_merge.fileio import write_text_atomic
    from evojax_merge.report.runs import group_by_seed, load_run

    runs = {table: [load_run(d) for d in dirs] for table, dirs in table_dirs.items()}  # each results.json once
    stats = {table: label_stats(group_by_seed(rs)) for table, rs in runs.items()}
    took = {table: sum(r.run_seconds for r in rs) for table, rs in runs.items()}
    rel = {t: str(Path(p).relative_to(out_dir)) if Path(p).is_relative_to(out_dir) else str(p)
           for t, p in reports.items()}
    return write_text_atomic(out_dir / "SUMMARY.md", summary_markdown(stats, rel, seeds, seconds, command, took))
