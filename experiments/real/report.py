"""REPORT.md of the real experiment (experiments/real/run.py) from what its units wrote so far.

    python experiments/real/report.py WORK OUT [--profile cpu] [--bootstrap 1000]

Reads ``WORK/units/*.json`` (wall time, peak RSS), ``WORK/runs/ood/<target>/results.json`` and predictions,
``WORK/runs/own/<set>/results.json`` (base and the set's own adapter), ``WORK/adapters/<set>/evojax_merge.json``
(first and last training loss), and writes ``OUT/REPORT.md``, ``OUT/summary.json``, each finished target's
``OUT/<target>/results.json`` and each own-adapter run's ``OUT/own/<set>/results.json`` (each with its test
predictions), the unit records (``OUT/units``), the adapters' checksums (``OUT/adapters.sha256.json``) and, with
``--with-adapters``, the trained pool (``OUT/adapters``):
what ``run.py WORK --restore OUT`` puts back to resume in an empty WORK. Unfinished targets are listed as such;
averages are over the finished ones.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "experiments" / "real"))

from prepare import OOD_TARGETS, SETS  # noqa: E402

ROWS = ("base", "best_single", "uniform", "task_arithmetic", "ties", "dare", "breadcrumbs", "della", "lorahub",
        "evo_merging", "own")
LABEL = {"base": "base", "best_single": "best single (validation)", "uniform": "uniform", "task_arithmetic": "TA",
         "ties": "TIES", "dare": "DARE", "breadcrumbs": "Breadcrumbs", "della": "DELLA", "lorahub": "LoraHub",
         "evo_merging": "Evo-Merging", "own": "own adapter (ID reference)"}
# The paper's OOD averages over the same six targets (average F1).
PAPER = {
    "Llama-3.1-8B (main text)": {"evo_merging": 52.13, "lorahub": 40.94, "best_single": 36.32, "ties": 23.81,
                                 "task_arithmetic": 17.61},
    "Qwen2.5-7B (Table 13)": {"evo_merging": 61.23, "lorahub": 56.28, "best_single": 52.51, "breadcrumbs": 36.02,
                              "ties": 32.86, "task_arithmetic": 32.83, "della": 29.66},
}


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _counts(run: Path, label: str, task: str) -> np.ndarray | None:
    """Per-record ``(tp, predicted, gold)`` of one row's test predictions (``report/records.py``)."""
    from evojax_merge.report.records import _rows, record_counts

    path = run / "predictions" / task / f"{label}.jsonl"
    return record_counts(_rows(path), None) if path.is_file() else None


def _own(work: Path) -> dict:
    own = {}
    for s in SETS:
        run = work / "runs" / "own" / s
        res = _json(run / "results.json")
        if res is None or not (work / "units" / f"own__{s}.json").is_file():
            continue
        cell = {m: res["methods"][m]["per_task"][s] for m in ("base", "best_single")}
        meta = _json(work / "adapters" / s / "evojax_merge.json") or {}
        own[s] = {"base_f1": 100 * cell["base"]["f1"], "own_f1": 100 * cell["best_single"]["f1"],
                  "base_val_ce": cell["base"]["val_ce"], "own_val_ce": cell["best_single"]["val_ce"],
                  "train": {k: meta.get(k) for k in ("first_loss", "last_loss", "steps") if k in meta},
                  "memory": res.get("memory", {}), "padding": cell["base"].get("prompt", {}).get("padding"),
                  "counts": {"base": _counts(run, "base", s), "own": _counts(run, "best_single", s)}}
    return own


def collect(work: Path) -> dict:
    """Every finished unit's figures: ``{"targets": {t: ...}, "own": {set: ...}, "units": {unit: ...}}``."""
    units = {}
    for p in sorted((work / "units").glob("*.json")):
        u = json.loads(p.read_text())
        units[u["unit"]] = u
    own = _own(work)
    targets = {}
    for t in OOD_TARGETS:
        run = work / "runs" / "ood" / t
        res = _json(run / "results.json")
        if res is None or not (work / "units" / f"ood__{t}.json").is_file():
            continue
        rows = {}
        for m in ROWS[:-1]:
            if m in res["methods"]:
                cell = res["methods"][m]["per_task"][t]
                rows[m] = {"f1": 100 * cell["f1"], "val_ce": cell.get("val_ce"), "params": cell.get("params"),
                           "wall_s": cell.get("wall_s"), "counts": _counts(run, m, t)}
        if t in own:
            rows["own"] = {"f1": own[t]["own_f1"], "val_ce": own[t]["own_val_ce"], "counts": own[t]["counts"]["own"]}
        any_cell = next(iter(res["methods"].values()))["per_task"][t]
        targets[t] = {"rows": rows, "padding": any_cell.get("prompt", {}).get("padding"),
                      "test_fit": any_cell.get("prompt", {}).get("test"), "memory": res.get("memory", {}),
                      "experiment_s": res.get("timings", {}).get("experiment_s"), "results": run / "results.json"}
    return {"targets": targets, "own": own, "units": units}


def _fmt(x: float | None, nd: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _table(targets: dict, done: list[str]) -> tuple[list[str], dict[str, float]]:
    if not done:
        return ["## OOD test F1 x100", "", "No target has finished yet.", ""], {}
    lines = ["## OOD test F1 x100 (each target: the pool minus its own adapter)", "",
             "| method | " + " | ".join(done) + " | average |", "|---|" + "---|" * (len(done) + 1)]
    avg: dict[str, float] = {}
    for m in ROWS:
        vals = [targets[t]["rows"].get(m, {}).get("f1") for t in done]
        ok = [v for v in vals if v is not None]
        if not ok:
            continue
        avg[m] = float(np.mean(ok)) if len(ok) == len(done) else math.nan
        lines.append(f"| {LABEL[m]} | " + " | ".join(_fmt(v, 1) for v in vals) + f" | {_fmt(avg[m])} |")
    return lines, avg


def _bootstrap(targets: dict, done: list[str], n_boot: int) -> tuple[list[str], dict]:
    from evojax_merge.report.bootstrap import paired_bootstrap

    evo = {t: targets[t]["rows"].get("evo_merging", {}).get("counts") for t in done}
    if not done or any(c is None for c in evo.values()):
        return [], {}
    lines = ["", f"## Paired bootstrap over test records (B = {n_boot}): Evo-Merging minus each row", "",
             "Average F1 over the finished targets (x100); the same resampled records for both rows.", "",
             "| Evo-Merging minus | difference | 95% interval |", "|---|---|---|"]
    boots = {}
    for m in ROWS:
        other = {t: targets[t]["rows"].get(m, {}).get("counts") for t in done}
        if m == "evo_merging" or any(c is None for c in other.values()):
            continue
        r = paired_bootstrap(evo, other, n_boot=n_boot)
        boots[m] = {"diff": r.diff, "lo": r.lo, "hi": r.hi}
        lines.append(f"| {LABEL[m]} | {r.diff:+.2f} | [{r.lo:+.2f}, {r.hi:+.2f}] |")
    return lines, boots


def _paper(avg: dict[str, float], boots: dict) -> list[str]:
    lines = ["", "## The paper's OOD averages beside this run's", ""]
    for model, paper in PAPER.items():
        order = sorted(paper, key=lambda m: -paper[m])
        lines += [f"**{model}**", "", "| method | paper | here |", "|---|---|---|"]
        lines += [f"| {LABEL[m]} | {paper[m]:.2f} | {_fmt(avg.get(m))} |" for m in order]
        lines += ["", "Adjacent pairs of the paper's ordering, here (difference of averages; the bootstrap "
                  "interval where one side is Evo-Merging):", ""]
        for hi_m, lo_m in zip(order, order[1:], strict=False):
            a, b = avg.get(hi_m, math.nan), avg.get(lo_m, math.nan)
            if math.isnan(a) or math.isnan(b):
                lines.append(f"- {LABEL[hi_m]} > {LABEL[lo_m]}: not measured")
                continue
            verdict = "holds" if a > b else ("tie" if a == b else "does not hold")
            extra = ""
            if hi_m == "evo_merging" and lo_m in boots:
                bt = boots[lo_m]
                sure = "excludes 0" if bt["lo"] > 0 or bt["hi"] < 0 else "includes 0"
                extra = f"; interval [{bt['lo']:+.2f}, {bt['hi']:+.2f}] {sure}"
            lines.append(f"- {LABEL[hi_m]} > {LABEL[lo_m]}: {a:.2f} vs {b:.2f}, {verdict}{extra}")
        lines.append("")
    return lines


def _method_times(targets: dict, done: list[str]) -> tuple[list[str], dict[str, float]]:
    """Each row's search (or grid) seconds per target, before its test generation: TIES's grid against TA's."""
    if not done:
        return [], {}
    lines = ["", "## Search seconds per row (validation passes and merges; test generation apart)", "",
             "| method | " + " | ".join(done) + " | mean |", "|---|" + "---|" * (len(done) + 1)]
    mean: dict[str, float] = {}
    for m in ROWS[:-1]:
        vals = [targets[t]["rows"].get(m, {}).get("wall_s") for t in done]
        if all(v is None for v in vals):
            continue
        mean[m] = float(np.mean([v for v in vals if v is not None]))
        lines.append(f"| {LABEL[m]} | " + " | ".join(_fmt(v, 0) for v in vals) + f" | {mean[m]:.0f} |")
    if mean.get("task_arithmetic") and "ties" in mean:
        ratio = mean["ties"] / mean["task_arithmetic"]
        lines += ["", f"TIES's grid against TA's (the same points): {ratio:.2f}x "
                  f"({'within' if ratio <= 2 else 'not within'} the issue's 2x)."]
    return lines, mean


def _own_table(own: dict) -> list[str]:
    lines = ["## The adapters on their own task (test F1 x100, validation CE)", "",
             "| set | type | base F1 | own adapter F1 | base val CE | own val CE | lowers val CE | "
             "train loss first -> last |", "|---|---|---|---|---|---|---|---|"]
    for s in SETS:
        if s not in own:
            lines.append(f"| {s} | {SETS[s][1]} | not yet | | | | | |")
            continue
        o, tr = own[s], own[s]["train"]
        lines.append(f"| {s} | {SETS[s][1]} | {_fmt(o['base_f1'], 1)} | {_fmt(o['own_f1'], 1)} | "
                     f"{_fmt(o['base_val_ce'], 4)} | {_fmt(o['own_val_ce'], 4)} | "
                     f"{'yes' if o['own_val_ce'] < o['base_val_ce'] else 'no'} | "
                     f"{_fmt(tr.get('first_loss'), 3)} -> {_fmt(tr.get('last_loss'), 3)} |")
    return lines


def _costs(units: dict, targets: dict, own: dict) -> tuple[list[str], dict[str, float]]:
    lines = ["", "## Wall time, peak RSS and padding per unit", "",
             "| unit | wall (s) | attempts (s) | peak RSS (GB) | validation padding waste | one-length waste |",
             "|---|---|---|---|---|---|"]
    for name, u in units.items():
        pad = " | "
        kind, _, t = name.partition("/")
        p = (targets.get(t, {}) if kind == "ood" else own.get(t, {}) if kind == "own" else {}).get("padding")
        if p:
            pad = f"{100 * p['waste']:.1f}% | {100 * p['one_length_waste']:.1f}%"
        attempts = " + ".join(f"{w:.0f}" for w in u.get("attempts_wall_s", []))
        lines.append(f"| {name} | {u['wall_s']:.0f} | {attempts} | {_fmt(u.get('peak_rss_gb'))} | {pad} |")
    phases: dict[str, float] = {}
    for name, u in units.items():
        key = name.split("/")[0]
        phases[key] = phases.get(key, 0.0) + sum(u.get("attempts_wall_s", [u["wall_s"]]))
    merging = {n: u.get("peak_rss_gb") for n, u in units.items() if n.split("/")[0] in ("own", "ood")}
    pads = {n: (targets.get(n.partition("/")[2], {}) if n.startswith("ood/") else own.get(n.partition("/")[2], {}))
            .get("padding") for n in merging}
    if merging:
        worst = max(merging, key=lambda n: merging[n] or 0.0)
        lines += ["", f"The issue's targets over the merging runs (own/*, ood/*): peak RSS at most "
                  f"{_fmt(merging[worst])} GB ({worst}; target 4 GB)"]
        known = {n: p["waste"] for n, p in pads.items() if p}
        if known:
            wp = max(known, key=known.get)
            lines[-1] += f"; validation padding waste at most {100 * known[wp]:.1f}% ({wp}; target 15%)"
        lines[-1] += "."
    lines += ["", "Wall time per phase (all attempts): "
              + ", ".join(f"{k} {v / 60:.1f} min" for k, v in phases.items())
              + f"; total {sum(phases.values()) / 3600:.2f} h.", ""]
    return lines, phases


def build(work: Path, out: Path, profile: str = "cpu", n_boot: int = 1000, with_adapters: bool = False) -> Path:
    """Write ``out/REPORT.md`` (and summary.json, per-target results.json and predictions, the unit records, and
    with ``with_adapters`` the trained adapters); returns REPORT.md's path."""
    data = collect(Path(work))
    targets, own, units = data["targets"], data["own"], data["units"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = [t for t in OOD_TARGETS if t in targets]
    splits = _json(Path(work) / "data" / "splits.json") or {}
    lines = ["# The paper's OOD table on SmolLM2-135M-Instruct with the authors' IE sets", "",
             f"Made by `python experiments/real/run.py WORK --profile {profile} --report {out}"
             f"{' --with-adapters' if with_adapters else ''}` "
             "(`experiments/real/README.md`); re-made from WORK by `python experiments/real/report.py WORK OUT`.", "",
             "## Set-up", "",
             f"- Splits per set (seed {splits.get('seed')}): {splits.get('sizes')}; few-shot history: "
             f"{splits.get('history')} (`experiments/real/prepare.py`).",
             "- Budget: `conf/experiment/real_ood.yaml` and the profile flags of `experiments/real/run.py`.", "",
             f"Targets finished: {len(done)} of {len(OOD_TARGETS)} ({', '.join(done) or 'none'})."
             + ("" if len(done) == len(OOD_TARGETS) else
                f" Not yet: {', '.join(t for t in OOD_TARGETS if t not in targets)}."), ""]
    table, avg = _table(targets, done)
    boot_lines, boots = _bootstrap(targets, done, n_boot)
    cost_lines, phases = _costs(units, targets, own)
    time_lines, method_s = _method_times(targets, done)
    lines += table + boot_lines + _paper(avg, boots) + _own_table(own) + cost_lines + time_lines
    (out / "REPORT.md").write_text("\n".join(lines) + "\n")
    summary = {"targets_finished": done, "average_f1": avg, "bootstrap_evo_minus": boots,
               "own": {s: {k: v for k, v in o.items() if k != "counts"} for s, o in own.items()},
               "per_target": {t: {"f1": {m: r["f1"] for m, r in targets[t]["rows"].items()},
                                  "val_ce": {m: r["val_ce"] for m, r in targets[t]["rows"].items()},
                                  "params": {m: r["params"] for m, r in targets[t]["rows"].items() if r.get("params")},
                                  "padding": targets[t]["padding"], "test_fit": targets[t]["test_fit"],
                                  "memory": targets[t]["memory"]} for t in done},
               "units": {n: {k: u[k] for k in ("wall_s", "attempts_wall_s", "peak_rss_gb", "returncode") if k in u}
                         for n, u in units.items()}, "wall_s_per_phase": phases, "search_s_per_method": method_s,
               "splits": splits}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    # what `run.py --restore OUT` needs to resume in an empty WORK: each finished run's results.json and test
    # predictions, every unit's record and (with_adapters) the trained pool
    for t in done:
        _copy_run(Path(work) / "runs" / "ood" / t, out / t)
    for s in own:
        _copy_run(Path(work) / "runs" / "own" / s, out / "own" / s)
    (out / "units").mkdir(exist_ok=True)
    for p in sorted((Path(work) / "units").glob("*.json")):
        shutil.copyfile(p, out / "units" / p.name)
    from evojax_merge.fileio import file_sha256

    trained = sorted((Path(work) / "adapters").glob("*/adapter_model.safetensors"))
    sums = {p.parent.name: file_sha256(p) for p in trained}
    (out / "adapters.sha256.json").write_text(json.dumps(sums, indent=1) + "\n")  # what the results were made with
    if with_adapters:
        for p in trained:
            dst = out / "adapters" / p.parent.name
            dst.mkdir(parents=True, exist_ok=True)
            for f in ("adapter_config.json", "adapter_model.safetensors", "evojax_merge.json"):
                if (p.parent / f).is_file():
                    shutil.copyfile(p.parent / f, dst / f)
    return out / "REPORT.md"


def _copy_run(run: Path, dst: Path) -> None:
    """A run's results.json and predictions (small: no weights, no checkpoints)."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "results.json", dst / "results.json")
    if (run / "predictions").is_dir():
        shutil.copytree(run / "predictions", dst / "predictions", dirs_exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--with-adapters", action="store_true",
                    help="also copy the trained adapters (SmolLM2: 9.4 MB each), so run.py --restore OUT resumes "
                         "without training them again")
    args = ap.parse_args(argv)
    print(build(args.work, args.out, args.profile, args.bootstrap, args.with_adapters))
    return 0


if __name__ == "__main__":
    sys.exit(main())
