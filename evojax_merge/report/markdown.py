"""REPORT.md's text: tables of mean ± std over worlds (or seeds), paired gaps with 95% intervals, the
paper's claims, figures and provenance. No I/O."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from evojax_merge.report.predictions import Prediction, check_predictions, interval_text
from evojax_merge.report.stats import BEST_SINGLE, Gap, LabelStats, Summary, split_label, world_differences

MARK = "\\*"  # Markdown-escaped asterisk


def fmt(s: Summary) -> str:
    """``12.34 ± 1.20``; a single unit has no std: ``12.34``."""
    return f"{s.mean:.2f} ± {s.std:.2f}" if math.isfinite(s.std) else f"{s.mean:.2f}"


def fmt_gap(g: Gap | None) -> str:
    """``+1.23 [+0.40, +2.06] *``: the paired mean difference and its 95% interval, marked when the
    interval excludes 0 and the gap varies."""
    if g is None:
        return ""
    return interval_text(g) + (f" {MARK}" if g.marked else "")


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def prediction_lines(checked: Sequence[Prediction]) -> str:
    """One Markdown bullet per prediction: its claim, **held**, **not held** or **undetermined**, the evidence."""
    return "\n".join(f"- {p.claim}: **{p.verdict}** ({p.evidence})." for p in checked)


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
        verdict = ("is undefined (one replicate)" if not g.has_interval else "has no spread"
                   if not g.varies else "excludes 0" if g.marked else "includes 0")
        lines.append(f"- Top two{where}: `{g.a}` − `{g.b}` = {fmt_gap(g)} (n = {g.n} {g.unit}{'s' * (g.n != 1)}); "
                     f"its 95% interval {verdict}.")
    return "\n".join(lines)


def per_target_table(stats: Mapping[str, LabelStats]) -> str:
    targets = sorted({t for s in stats.values() for t in s.per_target})
    rows = [[f"`{s.label}`", *[fmt(s.per_target[t]) if t in s.per_target else "" for t in targets]]
            for s in _ordered(stats)]
    return _table(["method", *targets], rows)


def _rep_key(rep) -> tuple:
    return (rep[0] is not None, rep[0] or 0, rep[1])


def per_replicate_table(stats: Mapping[str, LabelStats]) -> str:
    """One column per replicate: ``seed s`` with one world, ``world w, seed s`` with several."""
    reps = sorted({k for s in stats.values() for k in s.per_replicate}, key=_rep_key)
    several = len({w for w, _ in reps}) > 1
    rows = [[f"`{s.label}`", *[f"{s.per_replicate[k]:.2f}" if k in s.per_replicate else "" for k in reps]]
            for s in _ordered(stats)]
    return _table(["method", *[f"world {w}, seed {k}" if several else f"seed {k}" for w, k in reps]], rows)


def world_table(gaps: Sequence[Gap], gates: Mapping | None = None) -> str:
    """Per gap, each world's paired difference with the test-set bootstrap's 95% percentile interval, and
    the pooled estimate with its 95% interval."""
    gates = gates or {}
    worlds = list(dict.fromkeys(w for g in gaps for w, _, _ in world_differences(g)))

    def cell(g: Gap, world) -> str:
        for w, d, boot in world_differences(g):
            if w == world:
                return f"{d:+.2f}" + (f" [{boot.lo:+.2f}, {boot.hi:+.2f}]" if boot is not None else "")
        return ""

    def head(w) -> str:
        name = "all runs" if w is None else f"world {w}"
        return name + (" (gate failed)" if gates.get(w) is False else "")

    rows = [[f"`{g.a}` − `{g.b}`", *[cell(g, w) for w in worlds], fmt_gap(g)] for g in gaps]
    return _table(["difference", *map(head, worlds), "pooled"], rows)


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
                       report_dirty: bool | None = None, shown: str | None = None) -> str:
    """Which commands and commits produced the runs (``unknown`` where a run did not record it).

    ``common`` is the runs' common directory; ``shown`` is how the report names it (relative to the
    report's directory, so a committed report names no directory of one machine).
    """
    commits = {_commit(r) for r in runs}
    if len(commits) == 1:
        summary = f"All runs come from commit {next(iter(commits))}."
    else:
        summary = "The runs come from several commits: " + ", ".join(sorted(commits)) + "."
    rows = [["" if r.world is None else str(r.world), str(r.seed), f"`{_rel(r.path, common)}`",
             f"`{r.command}`" if r.command else "unknown", r.command_source, _commit(r)]
            for r in sorted(runs, key=lambda r: (*_rep_key(r.replicate), str(r.path)))]
    table = _table(["world", "seed", "run directory", "command", "command from", "commit"], rows)
    made = "unknown"
    if report_commit:
        made = f"`{report_commit[:12]}`" + (" with uncommitted changes" if report_dirty else "")
    shown = common if shown is None else shown
    return (f"{summary}\n\nRun directories under `{shown}` (relative to this report's directory):\n\n{table}\n\n"
            f"This report, run from its own directory: `{report_command}` (commit {made}).")


def _commit(run) -> str:
    if not run.commit:
        return "unknown"
    return f"`{run.commit[:12]}`" + (" (uncommitted changes)" if run.dirty else "")


def _rel(path, common: str) -> str:
    import os

    rel = os.path.relpath(path, common)
    return "." if rel == "." else rel


def _intro(a, metric: str) -> str:
    if a.unit == "world":
        unit = ("The unit of replication is the world: a method's value on a world is the mean over its search "
                "seeds; mean ± sample standard deviation (n − 1) over worlds; `n` is the worlds a method ran on. ")
        interval = ("the 95% interval mean ± t(0.975, n − 1) · SD / √n over the n worlds' differences (each "
                    "world draws its own test records, so their spread holds the test-set variance too)")
    else:
        unit = ("With one world the unit of replication is the search seed: mean ± sample standard deviation "
                "(n − 1) over seeds; `n` is the seeds a method ran with. ")
        interval = ("the 95% interval mean ± sqrt((t(0.975, n − 1) · SD / √n)² + (1.96 · SE_boot)²), the "
                    "search seeds' t-interval combined with the paired bootstrap over the world's test records "
                    "(the t term alone where the runs kept no predictions)")
    return (f"{a.design} ({a.which}). Test {metric} ×100 averaged over each run's targets. {unit}A gap (Δ) is paired "
            f"inside each replicate (world, seed): the mean difference and {interval}. {MARK} marks a gap whose "
            "interval excludes 0. A gap with no spread (the same on every replicate and test resample, such as "
            "two rows that do not depend on the search seed when no predictions were kept) is never marked: it "
            "is no evidence that it would survive other test data or another world.")


def _bootstrap_note(a) -> str:
    if not a.n_boot:
        return "The test-set bootstrap is off (`--bootstrap 0`)."
    text = (f"Test-set bootstrap: B = {a.n_boot} resamples (seed {a.boot_seed}) of each world's test records, "
            "the same records for both methods and every search seed of the world; micro F1 per task from the "
            "records' counts, averaged over tasks. Per world: the paired difference and the 2.5th–97.5th "
            "percentiles of its resamples.")
    if a.boot_notes:
        text += " Left out:\n\n" + "\n".join(f"- {n}" for n in a.boot_notes)
    return text


def _methods_part(a, metric: str) -> list[str]:
    parts = [methods_table(a.stats, metric)]
    if a.top_two:
        parts.append(top_two_lines(a.top_two))
    return parts


def report_markdown(experiment: str, setting: str, analysis, figures: Sequence[tuple[str, str]], provenance: str,
                    metric: str = "F1", gated=None) -> str:
    """The whole REPORT.md from an :class:`~evojax_merge.report.analysis.Analysis`; ``gated``: the same over
    the worlds that passed the gate, when some failed (``None`` when none did, or no world passed: an
    analysis of no run is passed as ``False``). ``figures`` are ``(caption, relative path)``."""
    a = analysis
    n, unit = a.units, a.unit
    k = len(a.worlds)
    title = f"{k} world{'s' * (k != 1)}" if k > 1 else f"{n} seed{'s' * (n != 1)}"
    parts = [f"# {experiment} ({setting} setting): test {metric} over {title}", _intro(a, metric)]
    if n < 3:
        parts.append(f"> **Only {n} {unit}{'s' * (n != 1)}:** at least 3 are expected; "
                     + ("with one there is no interval and nothing is marked." if n == 1 else
                        f"t(0.975, {n - 1}) = 12.71 makes every interval wide."))
    parts += ["## Methods", *_methods_part(a, metric)]
    if gated is False:
        parts += ["## Methods on the worlds that passed the gate", "No world passed the gate: every result above "
                  "is on a world where an oracle merge could not beat the best single adapter."]
    elif gated is not None:
        parts += [f"## Methods on the worlds that passed the gate ({len(gated.worlds)} of {k})",
                  *_methods_part(gated, metric)]
    checked = check_predictions(a.stats, a.gap)
    if checked:
        parts += ["## The paper's predictions", "Hypotheses this world tests, not targets: each **held** when its "
                  "95% interval lies wholly on the predicted side of the threshold, **not held** when wholly on the "
                  "other side, else **undetermined**.", prediction_lines(checked)]
        if gated:
            parts += [f"On the {len(gated.worlds)} worlds that passed the gate:",
                      prediction_lines(check_predictions(gated.stats, gated.gap))]
    gaps = _shown_gaps(a, checked)
    if gaps and (k > 1 or a.has_bootstrap):
        parts += ["## Paired differences per world", world_table(gaps, a.gates)]
    parts.append(_bootstrap_note(a))
    cost = cost_table(a.stats, a.costs, metric)
    if cost:
        parts += ["## Cost", f"Per method and replicate, the mean over targets; then mean ± std over {unit}s. Forward "
                  "examples: examples pushed through a model forward (search, grid or training); backward: "
                  "examples differentiated.", cost]
    parts += [f"## {metric} per target", per_target_table(a.stats), f"## {metric} per replicate",
              per_replicate_table(a.stats)]
    for param, name in (("N", "Pool size"), ("V", "Validation size")):
        table = size_table(a.stats, param)
        if table:
            parts += [f"## {name} ({param})", table]
    if figures:
        parts.append("## Figures")
        parts += [f"![{caption}]({path})" for caption, path in figures]
    parts += ["## Provenance", provenance]
    return "\n\n".join(parts) + "\n"


def _shown_gaps(a, checked: Sequence[Prediction]) -> list[Gap]:
    """Every method against best_single, then the claims' other gaps, each once."""
    out: dict[tuple[str, str], Gap] = {}
    for s in _ordered(a.stats):
        if s.vs_best_single is not None:
            out[s.label, s.vs_best_single.b] = s.vs_best_single
    for p in checked:
        for part in p.parts:
            if part.gap is not None:
                out.setdefault((part.gap.a, part.gap.b), part.gap)
    return list(out.values())
