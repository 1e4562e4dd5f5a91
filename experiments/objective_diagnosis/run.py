"""The objective diagnosis (issue 23, item 5): on the default IE world the CMA-ES searches reach the lowest
validation CE of every row but not the best test F1. Overfitting of the search's fixed validation subset,
CE as the wrong objective for generated F1, test noise, or a search that cannot reach the oracle?

    nice -n 19 python experiments/objective_diagnosis/run.py                 # every piece (resumable)
    nice -n 19 python experiments/objective_diagnosis/run.py --only main score summary

Pieces, each written to its output and skipped on a rerun:

- runs (``--work``, default ``outputs/objective_diagnosis/<run>``): the real entry point,
  ``python -m evojax_merge.train +experiment=ood logger=none progress=false hydra.run.dir=... <overrides>``
  (the main job: target ner_medicine, 60 of its 200 validation records = 4 batches of 15, 10 + 20
  generations, the shipped world ie-seed0).

  - ``main``: the main job itself (every method);
  - ``valseed_<s>``: Evo-Merging on validation subset ``data.validation.seed=s`` (s = 0..9);
  - ``resample``: Evo-Merging and LoraHub with ``data.validation.resample=true``; ``resample_seed_<s>``:
    Evo-Merging on other batch draws;
  - ``budget_paper``: Evo-Merging at the paper's 20 + 40 generations on the same 60 records;
  - ``val195``: Evo-Merging on 195 of the 200 records (``data.validation.num_batches=13``, every row);
  - ``f1``, ``f1_valseed_<s>``: the ``evo_merging_f1`` row (search on the generated answers' F1);
  - ``ce_all``, ``ce_all_seed_<s>``: the ``evo_merging_ce_all`` row (CE on all 200 records, the other rows'
    data.validation unchanged; search seed s);
  - ``refbatch``, ``refbatch_seed_<s>``: the ``evo_merging_resample_candidate`` row (the reference code's
    protocol: fresh batches of 4 x 15 for every candidate evaluation; draws seeded by s).

  A run is done when its ``result.json`` exists; an unfinished one resumes from its checkpoints.
- ``score``: for each run, every row's merge rebuilt from the run directory (genomes and grid points in
  results.json; the gate's oracle recipe from the world manifest) and scored by CE and by generated F1 on
  (a) the search's own validation records (``MergeEvaluator.batch_index(0)``: the seeded subset),
  (b) the other validation records, (c) the whole test split, with the project's functions (the run's own
  evaluator, ``LocalBackend.answers`` = ``generate_for_population``, ``record_counts`` = ``ie_counts``).
  Checks: each rebuilt row's CE on (a) is the run's recorded ``val_ce`` and its test F1 the recorded F1.
  Written to ``results/scores/<run>.json`` (per-record counts included).
- ``summary``: Spearman rank correlations (scipy.stats.spearmanr) of CE vs F1 across rows on (a), (b), (c),
  the overfitting gap F1(a) - F1(b) per row and per validation subset, paired test-record bootstraps
  (evojax_merge.report.bootstrap), written to ``results/summary.json`` and ``results/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = HERE / "results"
SEEDS = range(10)
BASE = ["+experiment=ood", "logger=none", "progress=false"]

RUNS: dict[str, list[str]] = {
    "main": [],
    **{f"valseed_{s}": ["method=evo_merging", f"data.validation.seed={s}"] for s in SEEDS},
    "resample": ["method=[evo_merging,lorahub]", "data.validation.resample=true"],
    "budget_paper": ["method=evo_merging", "budget.stage1_generations=20", "budget.stage2_generations=40"],
    "val195": ["method=evo_merging", "data.validation.num_batches=13"],
    **{f"resample_seed_{s}": ["method=evo_merging", "data.validation.resample=true", f"data.validation.seed={s}"]
       for s in (1, 2)},
    "f1": ["method=evo_merging_f1"],
    "ce_all": ["method=evo_merging_ce_all"],
    **{f"ce_all_seed_{s}": ["method=evo_merging_ce_all", f"seed={s}"] for s in (1, 2)},
    **{f"f1_valseed_{s}": ["method=evo_merging_f1", f"data.validation.seed={s}"] for s in (1, 2)},
    "refbatch": ["method=evo_merging_resample_candidate"],
    **{f"refbatch_seed_{s}": ["method=evo_merging_resample_candidate", f"data.validation.seed={s}"] for s in (1, 2)},
}


def command(run: str) -> str:
    return " ".join(["python -m evojax_merge.train", *BASE, *RUNS[run]])


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------- runs


def do_run(run: str, work: Path) -> float:
    """The entry point on ``run``'s overrides in ``work/run``; 0 when it had finished before."""
    out = work / run
    if (out / "result.json").is_file() and (out / "results.json").is_file():
        return 0.0
    t0 = time.perf_counter()
    log(f"{run}: {command(run)}")
    with open(work / f"{run}.log", "a") as fh:
        argv = [sys.executable, "-m", "evojax_merge.train", *BASE, *RUNS[run], f"hydra.run.dir={out}"]
        proc = subprocess.run(argv, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                              env={**os.environ, "WANDB_MODE": "offline"})
    if proc.returncode != 0:
        raise SystemExit(f"{run}: the entry point failed (rc {proc.returncode}); see {work / f'{run}.log'}")
    took = time.perf_counter() - t0
    log(f"{run}: done in {took:.0f} s")
    return took


# --------------------------------------------------------------------------------------------- score


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from evojax_merge.runner.build import config_dir
    from evojax_merge.world.registry import register_configs

    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose("config", overrides=[*BASE, *overrides])


def batches_for(n: int, cap: int = 20):
    """A ValidationConfig that scores all ``n`` records: the largest batch <= cap dividing n."""
    from evojax_merge.search.fitness import ValidationConfig

    b = max(d for d in range(1, min(cap, n) + 1) if n % d == 0)
    return ValidationConfig(batch_size=b, num_batches=n // b, resample=False, seed=0)


class Scorer:
    """One world opened once; every run's rows scored in it."""

    def __init__(self):
        self.backends: dict[str, object] = {}

    def backend(self, cfg):
        from evojax_merge.runner import build
        from evojax_merge.world.specs import OpenContext

        world = build.build_world(cfg)
        key = json.dumps(world.describe(), sort_keys=True) + str(cfg.world.build)
        if key not in self.backends:
            spec = build.experiment_spec(cfg)
            ctx = OpenContext(cfg.cache_dir, build.prompt_settings(cfg), cfg.population_chunk, spec.max_new_tokens,
                              False)
            self.backends[key] = world.open(ctx)
        return self.backends[key]

    def score_run(self, run: str, work: Path) -> dict:
        from evojax_merge.errors import EvoMergeInputError
        from evojax_merge.methods.base import MergeTask, Outcome
        from evojax_merge.methods.emr import UNIFIED, EMRMerge
        from evojax_merge.methods.task_vectors import TaskVectorMerge, preselected
        from evojax_merge.methods.tsv_m import TSVMerge
        from evojax_merge.report.bootstrap import micro_f1
        from evojax_merge.report.records import record_counts
        from evojax_merge.runner import build
        from evojax_merge.search.evo_merging import merged_adapter
        from evojax_merge.search.grid import streamed_delta
        from evojax_merge.zoo.gate import combine, recipe

        t0 = time.perf_counter()
        run_dir = work / run
        results = json.loads((run_dir / "results.json").read_text())
        cfg = compose(RUNS[run])
        recorded_cfg = json.loads((run_dir / "config_resolved.json").read_text())
        for key in ("data", "budget", "method", "experiment"):  # the run is the config composed here
            from omegaconf import OmegaConf

            if OmegaConf.to_container(cfg[key], resolve=True) != recorded_cfg[key]:
                raise SystemExit(f"{run}: config.{key} of {run_dir} differs from the one composed here")
        backend = self.backend(cfg)
        world = backend.world
        setting, methods = build.build_setting(cfg), build.build_methods(cfg)
        spec, validation = build.experiment_spec(cfg), build.validation_config(cfg)
        seed = int(cfg.seed)
        (plan,) = setting.cells(backend, seed)
        target = plan.target
        val_records, val = setting.validation(backend, plan, validation)
        test_records = backend.records[target]["test"][: spec.test_examples]
        cell = backend.open_cell(target, plan.pool_idx, val_records, val, spec.max_len)
        search_idx = np.asarray(cell.evaluator_for("A").batch_index(0)).reshape(-1)
        held_idx = np.setdiff1d(np.arange(len(val_records)), search_idx)
        held_records = [val_records[i] for i in held_idx]
        cells = {"held": backend.open_cell(target, plan.pool_idx, held_records, batches_for(len(held_records)),
                                           spec.max_len) if len(held_records) else None,
                 "val": backend.open_cell(target, plan.pool_idx, val_records, batches_for(len(val_records)),
                                          spec.max_len),
                 "test": backend.open_cell(target, plan.pool_idx, test_records, batches_for(len(test_records)),
                                           spec.max_len)}
        task = MergeTask(target=target, pool_names=cell.pool_names, evaluator_for=cell.evaluator_for,
                         stack=cell.stack, world=world, seed=seed, progress=False, val_records=val_records)

        # every row's merge, rebuilt from the run directory
        rows: dict[str, dict] = {}
        for label, res in results["methods"].items():
            c = res["per_task"][target]
            method = methods[label]
            if "alpha" in c:  # a genome: Evo-Merging, LoraHub (both rows), uniform, best single, base
                prune = getattr(method, "prune", "A")
                alpha, beta = np.asarray(c["alpha"], np.float32), np.asarray(c["beta"], np.float32)
                adapter = merged_adapter(cell.stack, alpha, beta, prune) if beta.any() else None
                rows[label] = {"outcome": Outcome(label, adapter=adapter, genome=(alpha, beta), prune=prune),
                               "kind": "genome", "prune": prune, "alpha": alpha, "beta": beta, "recorded": c}
                continue
            if isinstance(method, TaskVectorMerge):
                fn = method.module_delta(c["params"])
            elif isinstance(method, TSVMerge):
                fn = method.module_delta(c["params"]["lambda"])
            elif isinstance(method, EMRMerge):
                mod = c["modulator"]
                i = -1 if mod == UNIFIED else c["selected"].index(mod)
                fn = method.module_delta(i, float(c["rescalers"][mod]) if i >= 0 else 1.0)
            else:
                raise EvoMergeInputError(f"{run}: cannot rebuild row {label!r}")
            sub, selected = preselected(task, method.preselect_top_k)
            if [task.pool_names[i] for i in selected] != c["selected"]:
                raise SystemExit(f"{run}/{label}: preselection differs from the run's")
            delta = streamed_delta(cell.evaluator_for("A"), sub, fn)
            rows[label] = {"outcome": Outcome(label, delta=delta), "kind": "delta", "delta": delta, "recorded": c}
        if run == "main":  # the gate's oracle recipe (picked on the gate's half of the validation records)
            gate = world.info["gate"]["targets"][target]
            adapter = combine(world.pool.stack, list(world.pool.names), [gate["oracle"]]).adapter(0)
            rows["oracle"] = {"outcome": Outcome("oracle", adapter=adapter), "kind": "adapter", "adapter": adapter,
                              "recorded": {"recipe": recipe(gate["oracle"]), "gate_report_f1": gate["oracle_f1"]}}

        # CE on each record set
        def ce_of(row, c) -> float:
            if row["kind"] == "genome":
                return float(c.evaluator_for(row["prune"]).evaluate(row["alpha"][None], row["beta"][None])[0])
            if row["kind"] == "delta":
                return float(c.evaluator_for("A").evaluate_dense(row["delta"]))
            return float(c.evaluator_for("A").evaluate_adapter(row["adapter"]))

        sets = {"search": cell, **{k: v for k, v in cells.items() if v is not None}}
        out_rows: dict[str, dict] = {}
        for label, row in rows.items():
            out_rows[label] = {"ce": {k: ce_of(row, c) for k, c in sets.items()}}
        # generated answers: all validation records and the test split, every row in the run's order
        outcomes = [row["outcome"] for row in rows.values()]
        t_gen = time.perf_counter()
        answers = {"val": backend.answers(cell, outcomes, val_records, spec.max_len, task=target),
                   "test": backend.answers(cell, outcomes, test_records, spec.max_len, task=target)}
        gen_s = time.perf_counter() - t_gen
        task_type = backend.task_type(target)
        checks = {}
        for i, (label, row) in enumerate(rows.items()):
            counts = {}
            for split, recs in (("val", val_records), ("test", test_records)):
                counts[split] = record_counts([{"prediction": p, "gold": r["output"]}
                                               for p, r in zip(answers[split][i], recs, strict=True)], task_type)
                assert abs(micro_f1(counts[split].sum(0)) - backend.score(target, answers[split][i], recs)["f1"]) < 1e-9
            f1 = {"search": micro_f1(counts["val"][search_idx].sum(0)),
                  "held": micro_f1(counts["val"][held_idx].sum(0)) if len(held_idx) else None,
                  "val": micro_f1(counts["val"].sum(0)), "test": micro_f1(counts["test"].sum(0))}
            out_rows[label]["f1"] = {k: None if v is None else float(v) for k, v in f1.items()}
            out_rows[label]["counts"] = {k: v.astype(int).tolist() for k, v in counts.items()}
            rec = row["recorded"]
            if "val_ce" in rec:
                checks[label] = {"val_ce_recorded": rec["val_ce"], "val_ce_rebuilt": out_rows[label]["ce"]["search"],
                                 "test_f1_recorded": rec["f1"], "test_f1_rebuilt": out_rows[label]["f1"]["test"]}
            for k in ("val_fitness", "val_f1", "params", "selected", "modulator", "recipe", "gate_report_f1"):
                if k in rec:
                    out_rows[label][k] = rec[k]
            if row["kind"] == "genome":
                out_rows[label]["alpha"], out_rows[label]["beta"] = row["alpha"].tolist(), row["beta"].tolist()
        seen = None
        if val.resample:  # the records the search's generations drew
            gens = max(int(cfg.budget.stage1_generations), int(cfg.budget.stage2_generations))
            seen = int(np.unique(cell.evaluator_for("A").index_table(gens)).size)
        for c in [cell, *cells.values()]:
            if c is not None:
                c.close()
        return {
            "run": run, "command": command(run), "target": target,
            "validation": {"seed": val.seed, "resample": val.resample, "batch_size": val.batch_size,
                           "num_batches": val.num_batches, "records": len(val_records)},
            "sets": {"search": len(search_idx), "held": len(held_idx), "val": len(val_records),
                     "test": len(test_records)},
            "search_index": search_idx.tolist(), "resample_records_seen": seen,
            "pool": cell.pool_names, "rows": out_rows, "checks": checks,
            "timings": {"score_s": time.perf_counter() - t0, "generation_s": gen_s,
                        "run_s": results.get("timings", {}).get("experiment_s"),
                        "search_s": {k: v["per_task"][target].get("search_s") for k, v in results["methods"].items()}},
        }


def do_score(runs: list[str], work: Path) -> None:
    (RESULTS / "scores").mkdir(parents=True, exist_ok=True)
    scorer = Scorer()
    for run in runs:
        out = RESULTS / "scores" / f"{run}.json"
        if out.is_file() or not (work / run / "result.json").is_file():
            continue
        log(f"{run}: scoring")
        rec = scorer.score_run(run, work)
        bad = {k: v for k, v in rec["checks"].items()
               if abs(v["val_ce_rebuilt"] - v["val_ce_recorded"]) > 1e-4 * max(1.0, abs(v["val_ce_recorded"]))
               or abs(v["test_f1_rebuilt"] - v["test_f1_recorded"]) > 1e-6}
        rec["checks_failed"] = sorted(bad)
        if bad:
            log(f"{run}: rebuilt rows differ from the run's record: {bad}")
        out.write_text(json.dumps(rec, indent=1))
        log(f"{run}: scored in {rec['timings']['score_s']:.0f} s (generation {rec['timings']['generation_s']:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(REPO / "outputs" / "objective_diagnosis"), help="where the runs go")
    p.add_argument("--only", nargs="*", default=None,
                   help=f"pieces: run names ({', '.join(RUNS)}), score, summary (default: all)")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    pieces = args.only or [*RUNS, "score", "summary"]
    timings_path = RESULTS / "timings.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    for piece in pieces:
        if piece in RUNS:
            took = do_run(piece, work)
            if took:
                timings[piece] = round(took, 1)
                timings_path.write_text(json.dumps(timings, indent=1))
        elif piece == "score":
            do_score(list(RUNS), work)
        elif piece == "summary":
            from summary import write_summary  # experiments/objective_diagnosis/summary.py

            write_summary(RESULTS)
        else:
            raise SystemExit(f"unknown piece {piece!r}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    raise SystemExit(main())
