"""The objective diagnosis's numbers, from results/scores/*.json (written by run.py's ``score``):
``results/summary.json`` and ``results/summary.md``. Pure arithmetic on the scores, no model.

    python experiments/objective_diagnosis/summary.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

HERE = Path(__file__).resolve().parent
SETS = ("search", "held", "test")
SET_NAMES = {"search": "(a) search's 60", "held": "(b) held-out 140", "test": "(c) test 200", "val": "all 200 val"}
CONTROLS = ("base", "uniform", "oracle", "task_arithmetic", "ties", "best_single")


def micro_f1(counts: np.ndarray) -> float:
    from evojax_merge.report.bootstrap import micro_f1 as f1

    return float(f1(np.asarray(counts, np.float64).sum(0)))


def rho(x, y) -> dict:
    r = spearmanr(x, y)
    return {"rho": float(r.statistic), "p": float(r.pvalue), "n": len(x)}


def boot(a: np.ndarray, b: np.ndarray, target: str, n_boot: int = 2000) -> dict:
    from evojax_merge.report.bootstrap import paired_bootstrap

    r = paired_bootstrap({target: np.asarray(a)}, {target: np.asarray(b)}, n_boot=n_boot, seed=0)
    return {"diff": r.diff, "se": r.se, "lo": r.lo, "hi": r.hi}


def load(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((results / "scores").glob("*.json"))}


def fmt(x, scale=100.0, nd=1) -> str:
    return "" if x is None else f"{scale * x:.{nd}f}"


def correlations(rows: dict[str, dict], labels: list[str]) -> dict:
    ce = {k: [rows[r]["ce"][k] for r in labels] for k in ("search", "held", "val", "test")}
    f1 = {k: [rows[r]["f1"][k] for r in labels] for k in ("search", "held", "val", "test")}
    out = {f"ce_{k}~f1_{k}": rho(ce[k], f1[k]) for k in ("search", "held", "val", "test")}
    out["ce_search~f1_test"] = rho(ce["search"], f1["test"])  # the issue's Spearman(val CE, test F1)
    out["f1_held~f1_test"] = rho(f1["held"], f1["test"])
    out["f1_search~f1_test"] = rho(f1["search"], f1["test"])
    out["ce_held~ce_test"] = rho(ce["held"], ce["test"])
    return out


def subsets(scores: dict[str, dict]) -> dict:
    """Evo-Merging on each validation subset: its gap, and the gap of merges that did not see the subset."""
    main = scores["main"]
    val_counts = {r: np.asarray(v["counts"]["val"]) for r, v in main["rows"].items()}
    out = []
    for name in sorted((k for k in scores if k.startswith("valseed_")), key=lambda k: int(k.split("_")[1])):
        s = scores[name]
        evo = s["rows"]["evo_merging"]
        idx = np.asarray(s["search_index"])
        held = np.setdiff1d(np.arange(s["sets"]["val"]), idx)
        controls = {r: micro_f1(val_counts[r][idx]) - micro_f1(val_counts[r][held]) for r in CONTROLS
                    if r in val_counts}
        f1row = scores.get(f"f1_{name}") or (scores.get("f1") if name == "valseed_0" else None)
        out.append({"run": name, "seed": s["validation"]["seed"], "ce_search": evo["ce"]["search"],
                    "ce_held": evo["ce"]["held"], "ce_test": evo["ce"]["test"], "f1_search": evo["f1"]["search"],
                    "f1_held": evo["f1"]["held"], "f1_test": evo["f1"]["test"],
                    "gap": evo["f1"]["search"] - evo["f1"]["held"], "control_gap": controls,
                    "f1_search_row": None if f1row is None else {
                        k: f1row["rows"]["evo_merging_f1"]["f1"][k] for k in ("search", "held", "test")}})
    from scipy.stats import ttest_1samp, ttest_rel

    gaps = [s["gap"] for s in out]
    tests = {"gap>0": ttest_1samp(gaps, 0.0)}
    for r in ("base", "uniform", "oracle", "task_arithmetic"):
        ctrl = [s["control_gap"].get(r) for s in out]
        if len(gaps) > 1 and None not in ctrl:
            tests[f"gap-{r}"] = ttest_rel(gaps, ctrl)
    within = {}
    if len(out) > 2:  # CE against F1 among the 10 Evo merges themselves (one method, other subsets)
        within = {"ce_held~f1_held": rho([s["ce_held"] for s in out], [s["f1_held"] for s in out]),
                  "ce_test~f1_test": rho([s["ce_test"] for s in out], [s["f1_test"] for s in out]),
                  "f1_held~f1_test": rho([s["f1_held"] for s in out], [s["f1_test"] for s in out])}
    return {"per_seed": out, "within_evo": within,
            "t_tests": {k: {"t": float(v.statistic), "p": float(v.pvalue), "n": len(gaps)}
                        for k, v in tests.items()} if len(gaps) > 1 else {}}


GROUPS = {  # search protocols, each over its runs: (runs, row, whether the search read only the 60 of (a))
    "CE, fixed 60 (valseed_0..9)": ([f"valseed_{s}" for s in range(10)], "evo_merging", True),
    "CE, 60 drawn per generation (data.validation.resample)": (["resample", "resample_seed_1", "resample_seed_2"],
                                                               "evo_merging", False),
    "CE, 60 drawn per candidate (evo_merging_resample_candidate)": (["refbatch", "refbatch_seed_1",
                                                                     "refbatch_seed_2"],
                                                                    "evo_merging_resample_candidate", False),
    "CE, 195 fixed (val195)": (["val195"], "evo_merging", False),
    "CE, all 200 (evo_merging_ce_all)": (["ce_all", "ce_all_seed_1", "ce_all_seed_2"], "evo_merging_ce_all", False),
    "CE, fixed 60, 20 + 40 generations": (["budget_paper"], "evo_merging", True),
    "-F1, fixed 60 (evo_merging_f1)": (["f1", "f1_valseed_1", "f1_valseed_2"], "evo_merging_f1", True),
}


def tiled(groups: list[np.ndarray]) -> list[np.ndarray]:
    """Per-record counts of groups of k_i runs, each tiled to lcm(k_i) runs (their means over runs unchanged),
    so that report.bootstrap.paired_bootstrap can pair them record by record."""
    k = int(np.lcm.reduce([len(g) for g in groups]))
    return [np.concatenate([g] * (k // len(g))) for g in groups]


def protocol_groups(scores: dict[str, dict]) -> dict:
    main = scores["main"]
    target = main["target"]
    found = {}
    for name, (runs, row, partial) in GROUPS.items():
        have = [r for r in runs if r in scores]
        if have:
            found[name] = {"runs": have, "row": row, "partial": partial,
                           "counts": np.stack([np.asarray(scores[r]["rows"][row]["counts"]["test"]) for r in have]),
                           "f1_test": [scores[r]["rows"][row]["f1"]["test"] for r in have],
                           "ce_test": [scores[r]["rows"][row]["ce"]["test"] for r in have],
                           "f1_held": [scores[r]["rows"][row]["f1"]["held"] for r in have],
                           "gap": [scores[r]["rows"][row]["f1"]["search"] - scores[r]["rows"][row]["f1"]["held"]
                                   for r in have]}
    refs = {r: np.asarray(main["rows"][r]["counts"]["test"])[None] for r in ("ties", "oracle", "task_arithmetic")}
    base_name = next(iter(GROUPS))
    out = {}
    for name, g in found.items():
        vs = {}
        for ref, counts in refs.items():
            a, b = tiled([g["counts"], counts])
            vs[ref] = boot(a, b, target)
        if name != base_name and base_name in found:
            a, b = tiled([g["counts"], found[base_name]["counts"]])
            vs["fixed 60"] = boot(a, b, target)
        out[name] = {k: v for k, v in g.items() if k != "counts"} | {"vs": vs}
    return out


def write_summary(results: Path = HERE / "results") -> dict:
    scores = load(results)
    if "main" not in scores:
        raise SystemExit("no results/scores/main.json yet: run `run.py --only main score` first")
    main = scores["main"]
    target = main["target"]
    rows = main["rows"]
    methods = [r for r in rows if r != "oracle"]
    summary: dict = {"target": target, "sets": main["sets"], "command": main["command"]}
    summary["main"] = {r: {"ce": v["ce"], "f1": v["f1"], "gap": v["f1"]["search"] - v["f1"]["held"]}
                       for r, v in rows.items()}
    summary["spearman"] = {"methods": correlations(rows, methods), "methods+oracle": correlations(rows, list(rows))}
    summary["checks_failed"] = {k: v.get("checks_failed", []) for k, v in scores.items()}
    test = {r: np.asarray(v["counts"]["test"]) for r, v in rows.items()}
    summary["bootstrap_vs_evo"] = {r: boot(test["evo_merging"], test[r], target) for r in rows if r != "evo_merging"}
    held_idx = np.setdiff1d(np.arange(main["sets"]["val"]), main["search_index"])
    held = {r: np.asarray(v["counts"]["val"])[held_idx] for r, v in rows.items()}
    summary["bootstrap_vs_evo_held"] = {r: boot(held["evo_merging"], held[r], target) for r in rows
                                        if r != "evo_merging"}
    summary["subsets"] = subsets(scores) if any(k.startswith("valseed_") for k in scores) else {}
    others = {}
    for name, s in scores.items():
        if name == "main" or name.startswith("valseed_") or name.startswith("f1_valseed_"):
            continue
        others[name] = {r: {"ce": v["ce"], "f1": v["f1"], "gap": (v["f1"]["search"] - v["f1"]["held"])
                            if v["f1"]["held"] is not None else None,
                            "vs_evo_main": boot(np.asarray(v["counts"]["test"]), test["evo_merging"], target),
                            "vs_ta_main": boot(np.asarray(v["counts"]["test"]), test["task_arithmetic"], target)}
                        for r, v in s["rows"].items()}
        others[name]["_command"] = s["command"]
        others[name]["_resample_records_seen"] = s.get("resample_records_seen")
    summary["other_runs"] = others
    summary["groups"] = protocol_groups(scores)
    (results / "summary.json").write_text(json.dumps(summary, indent=1))
    (results / "summary.md").write_text(markdown(summary, scores))
    return summary


def markdown(summary: dict, scores: dict) -> str:
    L = [f"# Objective diagnosis: numbers ({summary['target']})", "",
         f"Main job: `{summary['command']}`. CE = answer-only cross-entropy, F1 x100 of greedy answers. Sets: "
         + ", ".join(f"{SET_NAMES[k]} = {summary['sets'][k]}" for k in ("search", "held", "test")) + ".", "",
         "## 1. Every row of the main job on (a), (b), (c)", "",
         "Last two columns: the row minus Evo-Merging, paired bootstrap over the records of (b) and of (c) "
         "(2000 resamples, 95% percentile interval).", "",
         "| row | CE (a) | CE (b) | CE (c) | F1 (a) | F1 (b) | F1 (c) | gap F1 (a)-(b) | (b) - Evo [95% CI] "
         "| (c) - Evo [95% CI] |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    main = summary["main"]
    for r in sorted(main, key=lambda r: -main[r]["f1"]["test"]):
        v = main[r]
        cis = []
        for key in ("bootstrap_vs_evo_held", "bootstrap_vs_evo"):
            b = summary[key].get(r)
            cis.append("" if b is None else f"{-b['diff']:+.1f} [{-b['hi']:+.1f}, {-b['lo']:+.1f}]")
        L.append(f"| {r} | {v['ce']['search']:.4f} | {v['ce']['held']:.4f} | {v['ce']['test']:.4f} | "
                 f"{fmt(v['f1']['search'])} | {fmt(v['f1']['held'])} | {fmt(v['f1']['test'])} | "
                 f"{fmt(v['gap'], nd=1)} | {cis[0]} | {cis[1]} |")
    L += ["", "## 2. Spearman rank correlation of CE and F1 across rows", "",
          "Negative = lower CE goes with higher F1 (a good objective). `n` rows.", "",
          "| pair | methods: rho (p) | n | methods + oracle: rho (p) | n |", "|---|---|---|---|---|"]
    sp = summary["spearman"]
    for k in sp["methods"]:
        a, b = sp["methods"][k], sp["methods+oracle"][k]
        L.append(f"| {k} | {a['rho']:+.2f} ({a['p']:.3f}) | {a['n']} | {b['rho']:+.2f} ({b['p']:.3f}) | {b['n']} |")
    if summary["subsets"]:
        L += ["", "## 3. Evo-Merging over 10 validation subsets (data.validation.seed)", "",
              "gap = F1(a) - F1(b) on that seed's split; controls: the same gap of merges that never searched "
              "that subset (main job's merges; TA/TIES/best single picked their grid point on seed 0's subset).",
              "", "| seed | CE (a) | CE (b) | F1 (a) | F1 (b) | F1 (c) | gap | base gap | uniform gap | oracle gap | "
              "TA gap | F1-search: F1 (a) / (b) / (c) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        per = summary["subsets"]["per_seed"]
        for s in per:
            cg = s["control_gap"]
            fr = s["f1_search_row"]
            L.append(f"| {s['seed']} | {s['ce_search']:.4f} | {s['ce_held']:.4f} | {fmt(s['f1_search'])} | "
                     f"{fmt(s['f1_held'])} | {fmt(s['f1_test'])} | {fmt(s['gap'])} | {fmt(cg.get('base'))} | "
                     f"{fmt(cg.get('uniform'))} | {fmt(cg.get('oracle'))} | {fmt(cg.get('task_arithmetic'))} | "
                     + ("" if fr is None else f"{fmt(fr['search'])} / {fmt(fr['held'])} / {fmt(fr['test'])}") + " |")

        def ms(xs):
            xs = np.asarray([x for x in xs if x is not None], np.float64)
            return f"{100 * xs.mean():.1f} ± {100 * xs.std(ddof=1):.1f}" if len(xs) > 1 else ""

        L.append(f"| mean ± sd | {np.mean([s['ce_search'] for s in per]):.4f} | "
                 f"{np.mean([s['ce_held'] for s in per]):.4f} | {ms(s['f1_search'] for s in per)} | "
                 f"{ms(s['f1_held'] for s in per)} | {ms(s['f1_test'] for s in per)} | {ms(s['gap'] for s in per)} | "
                 f"{ms(s['control_gap'].get('base') for s in per)} | "
                 f"{ms(s['control_gap'].get('uniform') for s in per)} | "
                 f"{ms(s['control_gap'].get('oracle') for s in per)} | "
                 f"{ms(s['control_gap'].get('task_arithmetic') for s in per)} | "
                 + " / ".join(ms((s['f1_search_row'] or {}).get(k) for s in per) for k in ("search", "held", "test"))
                 + " |")
        wi = summary["subsets"].get("within_evo", {})
        if wi:
            L += ["", "Spearman among the 10 Evo-Merging merges: " + "; ".join(
                f"{k}: {v['rho']:+.2f} (p {v['p']:.3f})" for k, v in wi.items()) + "."]
        tt = summary["subsets"].get("t_tests", {})
        if tt:
            L += ["", "t-tests over the subsets (scipy): " + "; ".join(
                f"{k}: t = {v['t']:.2f}, p = {v['p']:.3f} (n = {v['n']})" for k, v in tt.items()) + "."]
    if summary["other_runs"]:
        L += ["", "## 4. Other protocols and objectives", "",
              "| run | row | CE (a) | CE all val | CE (c) | F1 (a) | F1 all val | F1 (c) | (c) - Evo main [95% CI] | "
              "(c) - TA [95% CI] |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, rows in summary["other_runs"].items():
            for r, v in rows.items():
                if r.startswith("_"):
                    continue
                e, t = v["vs_evo_main"], v["vs_ta_main"]
                L.append(f"| {name} | {r} | {v['ce']['search']:.4f} | {v['ce']['val']:.4f} | {v['ce']['test']:.4f} | "
                         f"{fmt(v['f1']['search'])} | {fmt(v['f1']['val'])} | {fmt(v['f1']['test'])} | "
                         f"{e['diff']:+.1f} [{e['lo']:+.1f}, {e['hi']:+.1f}] | "
                         f"{t['diff']:+.1f} [{t['lo']:+.1f}, {t['hi']:+.1f}] |")
        L += [""] + [f"- `{n}`: `{rows['_command']}`" + (f" (resampled batches drew {rows['_resample_records_seen']} "
                                                           "distinct validation records)"
                                                           if rows.get("_resample_records_seen") else "")
                     for n, rows in summary["other_runs"].items()]
    if summary["groups"]:
        L += ["", "## 5. Search protocols over their runs", "",
              "Test F1 of each protocol's merges, mean ± sd over its runs (validation subsets, batch draws or search "
              "seeds); minus TIES, the oracle and the fixed-60 protocol: the difference of means with a paired "
              "bootstrap over the test records (runs averaged; 95% interval).", "",
              "| protocol | runs | F1 (c) | CE (c) | F1 (b) | gap (a)-(b) | - TIES | - oracle | - fixed 60 |",
              "|---|---|---|---|---|---|---|---|---|"]

        def msd(xs, scale=100.0, nd=1):
            xs = np.asarray([x for x in xs if x is not None], np.float64)
            if not len(xs):
                return ""
            sd = f" ± {scale * xs.std(ddof=1):.{nd}f}" if len(xs) > 1 else ""
            return f"{scale * xs.mean():.{nd}f}{sd}"

        for name, g in summary["groups"].items():
            ci = {k: f"{v['diff']:+.1f} [{v['lo']:+.1f}, {v['hi']:+.1f}]" for k, v in g["vs"].items()}
            held = msd(g["f1_held"]) if g["partial"] else "n/a"
            gap = msd(g["gap"]) if held != "n/a" else "n/a"
            L.append(f"| {name} | {len(g['runs'])} | {msd(g['f1_test'])} | {msd(g['ce_test'], 1.0, 3)} | {held} | "
                     f"{gap} | {ci['ties']} | {ci['oracle']} | {ci.get('fixed 60', '')} |")
        L += ["", "(b) and the gap are n/a where the search read (nearly) every validation record (resampled "
              "batches draw all 200 over a search)."]
    failed = {k: v for k, v in summary["checks_failed"].items() if v}
    L += ["", "Checks: every rebuilt row's CE on (a) equals the run's recorded val CE (1e-4 relative) and its test F1 "
          "the recorded F1 (1e-6)" + (": all pass." if not failed else f"; failed: {failed}.")]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    s = write_summary()
    print((HERE / "results" / "summary.md").read_text())
