"""REPORT.md's text: tables of mean ± std over seeds, the marked gaps, figures and provenance. No I/O."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from evojax_merge.report.predictions import Prediction, check_predictions
from evojax_merge.report.stats import BEST_SINGLE, SE_ZERO, Gap, LabelStats, Summary, split_label

MARK = "\\*"  # Markdown-escaped asterisk


def fmt(s: Summary) -> str:
    """``12.34 ± 1.20``; a single seed has no std: ``12.34``."""
    return f"{s.mean:.2f} ± {s.std:.2f}" if math.isfinite(s.std) else f"{s.mean:.2f}"


def fmt_gap(g: Gap | None) -> str:
    """``+1.23 ± 0.40 *``: the paired mean difference ± its SE, marked beyond two SE."""
    if g is None:
        return ""
    body = f"{g.mean:+.2f} ± {g.se:.2f}" if math.isfinite(g.se) else f"{g.mean:+.2f}"
    return body + (f" {MARK}" if g.marked else "")


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def prediction_lines(checked: Sequence[Prediction]) -> str:
    """One Markdown bullet per prediction: its claim, **held** or **not held**, and the evidence."""
    return "\n".join(f"- {p.claim}: **{'held' if p.held else 'not held'}** ({p.evidence})." for p in checked)


def _suffix_key(label: str) -> tuple:
    """``@N=3`` before ``@N=10``: each ``@`` parameter compared by its number where it is one."""
    def value(v: str):
        try:
            return (0, float(v), "")
        except ValueError:
            return (1, 0.0, v)

    return tuple((name, value(v)) for name, v in split_label(label)[1].items())


def _ordered(stats: Mapping[str, LabelStats]) -> list[LabelStats]:
    """Grouped by ``@`` suffix (numbers in numeric order), best mean F1 first within a group."""
    return sorted(stats.values(), key=lambda s: (_suffix_key(s.label), -s.f1.mean, s.label))


def methods_table(stats: Mapping[str, LabelStats], metric: str = "F1") -> str:
    if metric != "F1":  # an accuracy has no precision and recall of its own
        rows = [[f"`{s.label}`", str(s.f1.n), fmt(s.f1), fmt_gap(s.vs_best_single)] for s in _ordered(stats)]
        return _table(["method", "n", metric, f"Δ vs {BEST_SINGLE}"], rows)
    head = ["method", "n", "F1", f"Δ vs {BEST_SINGLE}", "precision", "recall"]
    rows = [[f"`{s.label}`", str(s.f1.n), fmt(s.f1), fmt_gap(s.vs_best_single), fmt(s.precision), fmt(s.recall)]
            for s in _ordered(stats)]
    return _table(head, rows)


_COST_HEAD = {"val_ce": "val CE", "wall_s": "wall s", "forward_examples": "forward examples",
              "backward_examples": "backward examples"}


def cost_table(stats: Mapping[str, LabelStats], costs: Mapping[str, Mapping[str, Summary]], metric: str) -> str | None:
    """Quality beside cost, per method: mean ± std over seeds of each cost a method's cells carry."""
    keys = [k for k in _COST_HEAD if any(k in c for c in costs.values())]
    if not keys:
        return None
    rows = [[f"`{s.label}`", fmt(s.f1), *[_fmt_cost(costs.get(s.label, {}).get(k), k) for k in keys]]
            for s in _ordered(stats)]
    return _table(["method", metric, *[_COST_HEAD[k] for k in keys]], rows)


def _fmt_cost(s: Summary | None, key: str) -> str:
    if s is None:
        return ""
    if key == "val_ce":
        return f"{s.mean:.4f} ± {s.std:.4f}" if math.isfinite(s.std) else f"{s.mean:.4f}"
    body = f"{s.mean:.1f}" if key == "wall_s" else f"{s.mean:,.0f}"
    return body + (f" ± {s.std:.1f}" if key == "wall_s" and math.isfinite(s.std) else "")


def top_two_lines(gaps: Mapping[str, Gap]) -> str:
    lines = []
    for key, g in gaps.items():
        where = f" (among `{key}`)" if key else ""
        verdict = ("exceeds" if g.marked else "cannot be tested against" if not math.isfinite(g.se)
                   or g.se <= SE_ZERO else "is within")
        lines.append(f"- Top two{where}: `{g.a}` − `{g.b}` = {fmt_gap(g)} (n = {g.n}); the gap {verdict} "
                     "two standard errors.")
    return "\n".join(lines)


def per_target_table(stats: Mapping[str, LabelStats]) -> str:
    targets = sorted({t for s in stats.values() for t in s.per_target})
    rows = [[f"`{s.label}`", *[fmt(s.per_target[t]) if t in s.per_target else "" for t in targets]]
            for s in _ordered(stats)]
    return _table(["method", *targets], rows)


def per_seed_table(stats: Mapping[str, LabelStats]) -> str:
    seeds = sorted({k for s in stats.values() for k in s.per_seed})
    rows = [[f"`{s.label}`", *[f"{s.per_seed[k]:.2f}" if k in s.per_seed else "" for k in seeds]]
            for s in _ordered(stats)]
    return _table(["method", *[f"seed {k}" for k in seeds]], rows)


def size_table(stats: Mapping[str, LabelStats], param: str) -> str | None:
    """Rows: the label without ``@<param>=``; columns: its values. ``None`` when no label has it."""
    cells: dict[str, dict[str, Summary]] = {}
    values: dict[str, float] = {}
    for s in stats.values():
        base, params = split_label(s.label)
        if param not in params:
            continue
        rest = "".join(f"@{k}={v}" for k, v in params.items() if k != param)
        cells.setdefault(base + rest, {})[params[param]] = s.f1
        try:
            values[params[param]] = float(params[param])
        except ValueError:
            values[params[param]] = math.inf
    if not cells:
        return None
    columns = sorted(values, key=lambda v: (values[v], v))
    rows = [[f"`{name}`", *[fmt(row[c]) if c in row else "" for c in columns]] for name, row in sorted(cells.items())]
    return _table(["method", *[f"{param}={c}" for c in columns]], rows)


def provenance_section(runs: Sequence, common: str, report_command: str, report_commit: str | None,
                       report_dirty: bool | None = None) -> str:
    """Which commands and commits produced the runs (``unknown`` where a run did not record it)."""
    commits = {_commit(r) for r in runs}
    if len(commits) == 1:
        summary = f"All runs come from commit {next(iter(commits))}."
    else:
        summary = "The runs come from several commits: " + ", ".join(sorted(commits)) + "."
    rows = [[str(r.seed), f"`{_rel(r.path, common)}`", f"`{r.command}`" if r.command else "unknown",
             r.command_source, _commit(r)] for r in sorted(runs, key=lambda r: (r.seed, str(r.path)))]
    table = _table(["seed", "run directory", "command", "command from", "commit"], rows)
    made = "unknown"
    if report_commit:
        made = f"`{report_commit[:12]}`" + (" with uncommitted changes" if report_dirty else "")
    return (f"{summary}\n\nRun directories under `{common}`:\n\n{table}\n\n"
            f"This report: `{report_command}` (commit {made}).")


def _commit(run) -> str:
    if not run.commit:
        return "unknown"
    return f"`{run.commit[:12]}`" + (" (uncommitted changes)" if run.dirty else "")


def _rel(path, common: str) -> str:
    import os

    rel = os.path.relpath(path, common)
    return "." if rel == "." else rel


def report_markdown(experiment: str, setting: str, stats: Mapping[str, LabelStats], gaps: Mapping[str, Gap],
                    figures: Sequence[tuple[str, str]], provenance: str, metric: str = "F1",
                    costs: Mapping[str, Mapping[str, Summary]] | None = None) -> str:
    """The whole REPORT.md; ``figures`` are ``(caption, relative path)``; ``metric`` names what ``f1`` holds."""
    seeds = sorted({k for s in stats.values() for k in s.per_seed})
    n = len(seeds)
    parts = [
        f"# {experiment} ({setting} setting): test {metric} over {n} seed{'s' * (n != 1)}",
        f"Seeds {', '.join(map(str, seeds))} (n = {n}). Test {metric} ×100 averaged over each run's targets; "
        "mean ± sample standard deviation (n − 1) over seeds; `n` is the seeds a method ran with. "
        f"A gap (Δ) is paired over seeds: the mean per-seed difference ± its standard error; {MARK} marks a gap "
        "larger than two standard errors. A gap with SE 0.00 is between rows that are the same on every seed "
        "(TA, TIES, DARE, uniform, base and best single do not depend on the search seed) and is never marked: "
        "it does not vary over the replicates, which is no evidence that it would survive other test data or "
        "another world.",
    ]
    if n < 3:
        parts.append(f"> **Only {n} seed{'s' * (n != 1)}:** at least 3 are expected; with one seed there is no "
                     "standard deviation and nothing is marked.")
    parts += ["## Methods", methods_table(stats, metric)]
    if gaps:
        parts.append(top_two_lines(gaps))
    checked = check_predictions(stats)
    if checked:
        parts += ["## The paper's predictions", "Hypotheses this world tests, not targets: each held or not on the "
                  f"mean {metric} over seeds.", prediction_lines(checked)]
    cost = cost_table(stats, costs or {}, metric)
    if cost:
        parts += ["## Cost", "Per method and seed, the mean over targets; then mean ± std over seeds. Forward "
                  "examples: examples pushed through a model forward (search, grid or training); backward: "
                  "examples differentiated.", cost]
    parts += [f"## {metric} per target", per_target_table(stats), f"## {metric} per seed", per_seed_table(stats)]
    for param, title in (("N", "Pool size"), ("V", "Validation size")):
        table = size_table(stats, param)
        if table:
            parts += [f"## {title} ({param})", table]
    if figures:
        parts.append("## Figures")
        parts += [f"![{caption}]({path})" for caption, path in figures]
    parts += ["## Provenance", provenance]
    return "\n\n".join(parts) + "\n"
