"""Per-row accuracy intervals and pairwise exact McNemar tests from a run's predictions (issue 23, item 6).

    python experiments/fair_baselines/mcnemar_table.py RUN_DIR --out experiments/fair_baselines/sakana_fair

RUN_DIR is a run directory (``predictions/<task>/<method>.jsonl``) or a run with replicates
(``seeds/seed_<s>/predictions/...``). Every row of one replicate and task answered the same test records in
the same order, so two rows are compared record by record: b = records only the first got right, c = records
only the second got right, p = the exact two-sided McNemar p-value (``evojax_merge/report/mcnemar.py``),
and Holm's adjustment over all pairs of that replicate and task. A record is right when the generated
answer equals the gold one after stripping whitespace (the Sakana world's exact-match accuracy).

Writes ``MCNEMAR.md`` (accuracy with its 95% Clopper-Pearson interval per row and replicate, then the pair
table) and ``mcnemar.json`` (the same numbers, and per row a string of 0/1 over the test records, so every
count can be recomputed without the run's predictions) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from scipy.stats import binomtest

from evojax_merge.report.mcnemar import holm, pairwise


def replicates(run: Path) -> dict[str, Path]:
    """``{name: run dir}``: the finished replicate directories (seeds/seed_<s> with a result.json; one still
    running is left out), or the run itself."""
    if not (run / "seeds").is_dir():
        return {run.name: run}
    seeds = sorted((run / "seeds").glob("seed_*"), key=lambda p: int(p.name.split("_")[1]))
    return {p.name: p for p in seeds if (p / "result.json").is_file()}


def correctness(pred_dir: Path) -> dict[str, list[bool]]:
    """``{method: [right?]}`` over the records of one task's predictions directory, in record order."""
    out = {}
    for f in sorted(pred_dir.glob("*.jsonl")):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        rows.sort(key=lambda r: r["index"])
        out[f.stem] = [str(r["prediction"]).strip() == str(r["gold"]).strip() for r in rows]
    lengths = {len(v) for v in out.values()}
    if len(lengths) > 1:
        raise SystemExit(f"{pred_dir}: rows cover different numbers of records: {sorted(lengths)}")
    return out


def _row_order(rep: Path) -> list[str]:
    f = rep / "results.json"
    return list(json.loads(f.read_text())["methods"]) if f.is_file() else []


def interval(k: int, n: int) -> tuple[float, float]:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return ci.low, ci.high


def analyse(run: Path, methods: list[str] | None) -> dict:
    result = {"run": str(run), "replicates": {}}
    for name, rep in replicates(run).items():
        for pred_dir in sorted((rep / "predictions").iterdir()):
            correct = correctness(pred_dir)
            order = methods or _row_order(rep)  # the run's own row order (results.json), then any others
            correct = {m: correct[m] for m in [*order, *sorted(correct)] if m in correct}
            if methods:
                correct = {m: v for m, v in correct.items() if m in methods}
            n = len(next(iter(correct.values())))
            acc = {m: {"right": sum(v), "n": n, "accuracy": sum(v) / n, "ci95": interval(sum(v), n)}
                   for m, v in correct.items()}
            pairs = pairwise(correct)
            for row, adj in zip(pairs, holm([r["p"] for r in pairs]), strict=True):
                row["p_holm"] = adj
            bits = {m: "".join("1" if x else "0" for x in v) for m, v in correct.items()}  # re-testable by hand
            result["replicates"].setdefault(name, {})[pred_dir.name] = {"rows": acc, "pairs": pairs, "correct": bits}
    return result


def markdown(result: dict) -> str:
    reps = result["replicates"]
    lines = ["# Exact McNemar tests between rows on the same test problems", "",
             f"Run: `{Path(result['run']).name}`. Accuracy ×100: the mean ± sample sd over the replicates, then per "
             "replicate with its 95% Clopper-Pearson interval over the test problems; for each pair, b = problems "
             "only the first row got right, c = only "
             "the second, p = exact two-sided McNemar p-value, p_Holm = Holm-adjusted over all pairs of that "
             "replicate. Built by `experiments/fair_baselines/mcnemar_table.py`.", ""]
    tasks = sorted({t for r in reps.values() for t in r})
    for task in tasks:
        names = [n for n in reps if task in reps[n]]
        methods = list(reps[names[0]][task]["rows"])
        lines += [f"## {task}: accuracy per replicate", "",
                  "| method | mean ± sd | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for m in methods:
            accs = [100 * reps[n][task]["rows"][m]["accuracy"] for n in names if m in reps[n][task]["rows"]]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cells = [f"{statistics.fmean(accs):.1f} ± {sd:.1f}"]
            for n in names:
                r = reps[n][task]["rows"].get(m)
                cells.append("" if r is None else
                             f"{100 * r['accuracy']:.1f} [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]")
            lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
        n_rec = reps[names[0]][task]["rows"][methods[0]]["n"]
        lines += ["", f"{n_rec} test problems per replicate.", "",
                  f"## {task}: pairwise McNemar (b / c, p, p_Holm)", "",
                  "| row A | row B | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        keyed = {n: {(p["a"], p["b_method"]): p for p in reps[n][task]["pairs"]} for n in names}
        for a, b in keyed[names[0]]:
            cells = []
            for n in names:
                p = keyed[n].get((a, b))
                cells.append("" if p is None else f"{p['b']} / {p['c']}, p = {_p(p['p'])}, {_p(p['p_holm'])}"
                             + (" \\*" if p["p_holm"] < 0.05 else ""))
            lines.append(f"| `{a}` | `{b}` | " + " | ".join(cells) + " |")
        lines += ["", "\\* Holm-adjusted p < 0.05.", ""]
    return "\n".join(lines)


def _p(p: float) -> str:
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--methods", nargs="*", default=None, help="only these rows, in this order")
    args = ap.parse_args()
    result = analyse(args.run, args.methods)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mcnemar.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "MCNEMAR.md").write_text(markdown(result))
    print(args.out / "MCNEMAR.md")


if __name__ == "__main__":
    main()
