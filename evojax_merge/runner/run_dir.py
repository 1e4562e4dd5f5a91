"""The run contract, the same for every experiment: what a run directory holds, and how a rerun resumes.

    config_resolved.json   the composed config (first; the service key masked)
    checkpoints/<label>/   every search's orbax steps (CMA-ES stages, DAM's training loop)
    predictions/<task>/<method>.jsonl, merged_adapters/<target>__<method>/   (PEFT)
    results.json, results.md   the table (per method: P/R/F1 and per-task cells with costs and genomes)
    result.json            written last: the run is done (SLURM templates requeue a job without it)

With replicates named (``experiment.seeds`` / ``experiment.world_seeds``) each is such a directory
(``seeds/seed_<s>`` or ``worlds/world_<w>/seed_<s>``); the run's own directory then holds the mean table,
``report/REPORT.md`` (``python -m evojax_merge.report``) and a ``result.json`` listing the replicates.
A replicate that wrote ``result.json`` is not run again.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.fileio import write_text_atomic
from evojax_merge.runner import build
from evojax_merge.runner.engine import check_methods, run_cells

log = logging.getLogger(__name__)
_RUN_LOCAL = {"resume", "checkpoint", "hydra", "logger", "progress", "distributed"}


def fingerprint(resolved: dict, label: str) -> dict:
    """What must not change between a run and its resume (not: resume, checkpointing, logging)."""
    return {"label": label, **{k: v for k, v in resolved.items() if k not in _RUN_LOCAL}}


def _masked(resolved: dict) -> dict:
    world = resolved.get("world") or {}
    if isinstance(world.get("service"), dict) and world["service"].get("api_key"):
        world = {**world, "service": {**world["service"], "api_key": "***"}}
    return {**resolved, "world": world}


def prepare_dir(out_dir: Path) -> Path:
    """The run directory, created; an unwritable one is a one-line error."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".writable"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise EvoMergeInputError(f"hydra.run.dir: {out_dir} is not writable ({e.strerror or e})") from None
    return out_dir


def stage_runner_factory(cfg: DictConfig, out_dir: Path, tracker, guard, resolved: dict):
    """``label -> StageRunner``: orbax checkpoints (resume after preemption) and per-generation logging."""
    from evojax_merge.search.checkpoint import CheckpointRunner
    from evojax_merge.search.cmaes import HISTORY_COLUMNS, init_stage, run_stage

    def runner_for(label: str):
        logged: dict[str, int] = {}  # stage -> generations logged (the host sees the state between chunks)

        def log_generation(spec, state, step=None):
            done, history = int(state.generation), np.asarray(state.history)
            for g in range(logged.get(spec.name, 0), done):
                row = dict(zip(HISTORY_COLUMNS, map(float, history[g]), strict=True))
                genome = np.asarray(state.best_genome) if g == done - 1 else None
                tracker.log_generation(label, spec.name, g, row, genome, spec.layout.searched)
            logged[spec.name] = done

        if not cfg.checkpoint.enabled:
            def run(spec, fitness_fn, key):
                return run_stage(spec, fitness_fn, init_stage(spec, key, fitness_fn), on_generation=log_generation,
                                 progress=cfg.progress, visit_every=cfg.checkpoint.interval)

            return run
        safe = "".join(ch if ch.isalnum() or ch in "-_.@=" else "_" for ch in label)
        runner = CheckpointRunner(out_dir / "checkpoints" / safe, interval=cfg.checkpoint.interval,
                                  max_to_keep=cfg.checkpoint.max_to_keep, resume=cfg.resume,
                                  fingerprint=fingerprint(resolved, label), preemption=guard,
                                  on_generation=log_generation, progress=cfg.progress)
        return runner  # it logs its own resume

    return runner_for


def search_record(outcome, target: str, label: str) -> dict:
    """A search's best genome, fitness and generations (a two-stage merge search, or one stage)."""
    from evojax_merge.search.result_io import generations_done, search_result_record

    found = outcome.search
    if hasattr(found, "alpha"):
        return search_result_record(found, target=target, label=label)
    return {"method": label, "target": target, "label": label,
            "best_genome": np.asarray(found.best_genome).tolist(), "best_fitness": float(found.best_fitness),
            "generations_done": generations_done(found)}


def write_result_json(out_dir: Path, searches: dict[str, dict], seed: int, extra: dict | None = None) -> None:
    """``result.json``: every search's best genome, fitness and generations; the first at the top level."""
    import jax

    from evojax_merge.search.result_io import write_json_atomic

    if jax.process_index() != 0:
        return
    first = next(iter(searches.values()), {"best_genome": [], "best_fitness": None, "generations_done": 0})
    write_json_atomic(out_dir / "result.json", {
        "best_genome": first["best_genome"], "best_fitness": first["best_fitness"],
        "generations_done": sum(s["generations_done"] for s in searches.values()), "seed": seed,
        "searches": searches, **(extra or {}),
    })


def _title(cfg: DictConfig, spec) -> str:
    return f"{spec.name}: {cfg.setting.get('name') or cfg.setting._target_.rsplit('.', 1)[-1].lower()} setting"


def run_replicate(cfg: DictConfig, backend, world_spec, setting, methods: dict, spec, seed: int, out_dir: Path,
                  guard=None) -> dict:
    """One (world realization, search seed): every cell and method, and the whole run contract in ``out_dir``."""
    from evojax_merge.lora.export import save_peft_adapter
    from evojax_merge.provenance import provenance
    from evojax_merge.runner.report import results_table, write_results
    from evojax_merge.tracking import make_tracker

    prepare_dir(out_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["seed"] = int(seed)
    resolved["world_realization"] = world_spec.describe()
    resolved["setting"] = {**resolved["setting"], "name": setting.name}  # the report's title
    write_text_atomic(out_dir / "config_resolved.json", json.dumps(_masked(resolved), indent=2, default=str))
    tracker = make_tracker(OmegaConf.to_container(cfg.logger, resolve=True), resolved, out_dir, spec.name)
    searches: dict[str, dict] = {}
    base_dir = getattr(getattr(backend, "world", None), "base_dir", None)
    pool = getattr(getattr(backend, "world", None), "pool", None)

    def on_result(plan, label, outcome):
        if outcome.search is not None:
            searches[f"{plan.target}/{label}"] = search_record(outcome, plan.target, label)
        if outcome.search is not None and outcome.adapter is not None and pool is not None:
            d = save_peft_adapter(outcome.adapter, out_dir / "merged_adapters" / f"{plan.target}__{label}",
                                  base_model_name_or_path=str(base_dir),
                                  source_dirs=[pool.paths[i] for i in plan.pool_idx],
                                  metadata={"method": label, "target": plan.target,
                                            "pool": [pool.names[i] for i in plan.pool_idx]})
            tracker.log_adapter(f"{plan.target}-{label}", d)

    t0 = time.perf_counter()
    runner_for = stage_runner_factory(cfg, out_dir, tracker, guard, resolved)
    results = run_cells(backend, setting, methods, build.validation_config(cfg), spec, int(seed), runner_for,
                        on_result, progress=cfg.progress, predictions_dir=out_dir / "predictions")
    results["timings"] = {"experiment_s": time.perf_counter() - t0}
    info = getattr(getattr(backend, "world", None), "info", None) or {}
    results["world"] = world_spec.describe()
    results["zoo"] = {k: info[k] for k in ("zoo_root", "timings", "adapter_test", "adapters", "gate") if k in info}
    results["setting"] = setting.describe()
    results["metric"] = getattr(backend, "metric", "F1")  # what f1 holds (the report names it)
    results["config"] = _masked(resolved)
    results["provenance"] = provenance("evojax_merge.train")  # read by python -m evojax_merge.report
    table = results_table(results)
    write_results(out_dir, results, _title(cfg, spec))
    write_result_json(out_dir, searches, int(seed))
    tracker.log_results(results, table)
    tracker.finish()
    return results


def _replicate_dir(out_dir: Path, world_seed: int | None, seed: int, several_worlds: bool) -> Path:
    base = out_dir / "worlds" / f"world_{world_seed}" if several_worlds else out_dir
    return base / "seeds" / f"seed_{seed}"


def mean_table(runs: list[dict]) -> dict:
    """The methods' P/R/F1 averaged over replicates, each cell with its per-replicate values."""
    table: dict[str, dict] = {}
    for run in runs:
        for label, res in run["methods"].items():
            row = table.setdefault(label, {"per_task": {}, "replicates": 0})
            row["replicates"] += 1
            for task, cell in res["per_task"].items():
                c = row["per_task"].setdefault(task, {"per_replicate": []})
                c["per_replicate"].append({k: cell.get(k) for k in ("precision", "recall", "f1", "val_ce",
                                                                     "forward_examples", "search_s")})
    for row in table.values():
        for cell in row["per_task"].values():
            for key in ("precision", "recall", "f1"):
                vals = [r[key] for r in cell["per_replicate"]]
                cell[key], cell[f"{key}_std"] = float(np.mean(vals)), float(np.std(vals))
        for key in ("precision", "recall", "f1"):
            row[key] = float(np.mean([c[key] for c in row["per_task"].values()]))
    return {"methods": table}


def run(cfg: DictConfig, out_dir: Path, guard=None) -> dict:
    """The experiment of ``cfg`` into ``out_dir``: one replicate, or each replicate and their mean and report."""
    from evojax_merge.provenance import provenance
    from evojax_merge.runner.report import results_table, write_results
    from evojax_merge.search.fitness import resolve_population_chunk
    from evojax_merge.world.specs import OpenContext

    resolve_population_chunk(cfg.population_chunk)
    if cfg.checkpoint.interval < 1:
        raise EvoMergeInputError("checkpoint.interval must be >= 1")
    spec, world, setting = build.experiment_spec(cfg), build.build_world(cfg), build.build_setting(cfg)
    methods = build.build_methods(cfg)
    build.validation_config(cfg)
    check_methods(methods, world.provides, world.kind)
    prepare_dir(out_dir)
    resolved = _masked(OmegaConf.to_container(cfg, resolve=True))
    if spec.world_seeds or spec.seeds:  # the replicates' parent: its config first, as every run directory's
        write_text_atomic(out_dir / "config_resolved.json", json.dumps(resolved, indent=2, default=str))
    ctx = OpenContext(cfg.cache_dir, build.prompt_settings(cfg), cfg.population_chunk, spec.max_new_tokens,
                      bool(cfg.progress))
    world_seeds = list(spec.world_seeds) or [None]
    seeds = [int(s) for s in spec.seeds] or [int(cfg.seed)]
    single = not spec.world_seeds and not spec.seeds  # named replicates always get their directories and a report
    dirs, runs, t_start = [], [], time.perf_counter()
    for world_seed in world_seeds:
        realized = world if world_seed is None else world.with_seed(int(world_seed))
        backend = None
        for seed in seeds:
            run_dir = out_dir if single else _replicate_dir(out_dir, world_seed, seed, len(world_seeds) > 1)
            if not single and (run_dir / "result.json").is_file() and (run_dir / "results.json").is_file():
                log.info("%s: done before, skipped", run_dir)
                runs.append(json.loads((run_dir / "results.json").read_text()))
                dirs.append(run_dir)
                continue
            if backend is None:
                t0 = time.perf_counter()
                backend = realized.open(ctx)
                log.info("world %s (seed %s) ready in %.1fs", realized.kind, realized.seed, time.perf_counter() - t0)
            runs.append(run_replicate(cfg, backend, realized, setting, methods, spec, seed, run_dir, guard))
            dirs.append(run_dir)
    if single:
        results = runs[0]
        print(f"\n{spec.name}, test score x100:\n{results_table(results)}\n\nwritten to {out_dir}")
        return results
    results = {**mean_table(runs), "metric": runs[0].get("metric", "F1"),
               "replicates": [str(d.relative_to(out_dir)) for d in dirs],
               "timings": {"experiment_s": time.perf_counter() - t_start},
               "config": resolved, "provenance": provenance("evojax_merge.train")}
    write_results(out_dir, results, f"{_title(cfg, spec)}, mean over {len(dirs)} replicates")
    report = replicate_report(dirs, out_dir / "report")
    write_result_json(out_dir, {}, int(cfg.seed), {"replicates": results["replicates"], "report": str(report)})
    print(f"\n{spec.name}, test score x100, mean over {len(dirs)} replicates:\n{results_table(results)}\n\n"
          f"written to {out_dir}; report: {report}")
    return results


def replicate_report(dirs: list[Path], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from evojax_merge.report.build import build_report

    return build_report(dirs, out, wandb=None, argv=[str(d) for d in dirs])
