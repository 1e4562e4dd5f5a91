"""Hydra entry point: build everything from the config, run the experiment, print its table.

    python -m evojax_merge.train +experiment=ood
    python -m evojax_merge.train +experiment=smoke logger=none
    python -m evojax_merge.train -m +experiment=ood method=evo,lorahub,ties seed=0,1,2
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from evojax_merge.errors import EvoMergeInputError

log = logging.getLogger("evojax_merge.train")


def _tuples(d: dict) -> dict:
    """Hydra lists -> tuples, so they fit the frozen dataclasses."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def zoo_config(cfg: DictConfig):
    from evojax_merge.zoo.build import ZooBuildConfig

    return ZooBuildConfig.from_dict(OmegaConf.to_container(cfg.zoo, resolve=True))


def method_settings(cfg: DictConfig):
    from evojax_merge.runner.methods import MethodSettings
    from evojax_merge.search.evo_merging import EvoMergingConfig, LoraHubConfig
    from evojax_merge.search.grid import BaselineGridConfig

    s = OmegaConf.to_container(cfg.strategy, resolve=True)
    try:
        return MethodSettings(evo_merging=EvoMergingConfig(**_tuples(s["evo_merging"])), prune=s["prune"],
                              lorahub=LoraHubConfig(**_tuples(s["lorahub"])),
                              grid=BaselineGridConfig(**_tuples(s["grid"])), seed=int(cfg.seed))
    except TypeError as e:
        raise EvoMergeInputError(f"strategy: {e}") from None


def experiment_spec(cfg: DictConfig):
    from evojax_merge.runner.experiment import ExperimentSpec

    e = _tuples(OmegaConf.to_container(cfg.experiment, resolve=True))
    try:
        return ExperimentSpec(**e, methods=tuple(cfg.method.names), seed=int(cfg.seed))
    except TypeError as err:
        raise EvoMergeInputError(f"experiment: {err}") from None


def validate(cfg: DictConfig) -> None:
    """Impossible configs fail here, with the key named, before anything is built."""
    evo = cfg.strategy.evo_merging
    checks = [
        (evo.population_size >= 2, "strategy.evo_merging.population_size must be >= 2"),
        (evo.sigma0 > 0, "strategy.evo_merging.sigma0 must be > 0"),
        (evo.alpha_bounds[0] < evo.alpha_bounds[1], "strategy.evo_merging.alpha_bounds must be [low, high]"),
        (evo.beta_bounds[0] < evo.beta_bounds[1], "strategy.evo_merging.beta_bounds must be [low, high]"),
        (cfg.strategy.prune in ("A", "B", "both", "none"), "strategy.prune must be A, B, both or none"),
        (cfg.data.validation.batch_size >= 1, "data.validation.batch_size must be >= 1"),
        (cfg.data.validation.num_batches >= 1, "data.validation.num_batches must be >= 1"),
        (cfg.model.dtype in ("float32", "bfloat16"), "model.dtype must be float32 or bfloat16"),
        (cfg.checkpoint.interval >= 1, "checkpoint.interval must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise EvoMergeInputError(message)


def load_world(cfg: DictConfig):
    from evojax_merge.runner.world import load_user_world, load_zoo_world

    if cfg.model.source == "zoo":
        if cfg.pool.source != "zoo" or cfg.data.source != "zoo":
            raise EvoMergeInputError("model.source=zoo needs pool.source=zoo and data.source=zoo")
        return load_zoo_world(zoo_config(cfg), cfg.cache_dir, cfg.model.dtype, progress=cfg.progress)
    if cfg.model.source != "hf":
        raise EvoMergeInputError(f"model.source: {cfg.model.source!r} is not zoo or hf")
    adapters = cfg.pool.adapters
    adapters = list(adapters) if not isinstance(adapters, str) else adapters
    return load_user_world(cfg.model.path, cfg.model.tokenizer, adapters,
                           OmegaConf.to_container(cfg.data.tasks, resolve=True), cfg.model.dtype)


def _fingerprint(resolved: dict, label: str) -> dict:
    """What must not change between a run and its resume (not: resume, checkpointing, logging)."""
    skip = {"resume", "checkpoint", "hydra", "logger", "progress", "service", "distributed"}
    return {"label": label, **{k: v for k, v in resolved.items() if k not in skip}}


def stage_runner_factory(cfg: DictConfig, out_dir: Path, tracker, guard, resolved: dict):
    """``label -> StageRunner``: orbax checkpoints (resume after preemption) and per-generation logging."""
    from evojax_merge.search.checkpoint import CheckpointRunner
    from evojax_merge.search.cmaes import HISTORY_COLUMNS, init_stage, run_stage

    def runner_for(label: str):
        def log_generation(spec, state, step=None):
            g = int(state.generation) - 1
            row = dict(zip(HISTORY_COLUMNS, map(float, np.asarray(state.history[g])), strict=True))
            tracker.log_generation(label, spec.name, g, row, np.asarray(state.best_genome), spec.layout.searched)

        if not cfg.checkpoint.enabled:
            def run(spec, fitness_fn, key):
                return run_stage(spec, fitness_fn, init_stage(spec, key), on_generation=log_generation,
                                 progress=cfg.progress)

            return run
        safe = "".join(ch if ch.isalnum() or ch in "-_.@=" else "_" for ch in label)
        runner = CheckpointRunner(out_dir / "checkpoints" / safe, interval=cfg.checkpoint.interval,
                                  max_to_keep=cfg.checkpoint.max_to_keep, resume=cfg.resume,
                                  fingerprint=_fingerprint(resolved, label), preemption=guard,
                                  on_generation=log_generation, progress=cfg.progress)
        if runner.resumed_from is not None:
            log.info("%s: resumed from checkpoint step %d", label, runner.resumed_from)
        return runner

    return runner_for


def run(cfg: DictConfig, out_dir: Path) -> dict:
    from evojax_merge.lora.export import save_peft_adapter
    from evojax_merge.runner.experiment import run_experiment
    from evojax_merge.search.fitness import ValidationConfig
    from evojax_merge.search.preemption import PreemptionGuard
    from evojax_merge.search.result_io import search_result_record
    from evojax_merge.tracking import make_tracker

    validate(cfg)
    spec, settings = experiment_spec(cfg), method_settings(cfg)
    validation = ValidationConfig(**OmegaConf.to_container(cfg.data.validation, resolve=True))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = {**resolved, "service": {k: ("***" if k == "api_key" else v) for k, v in resolved["service"].items()}}
    (out_dir / "config_resolved.json").write_text(json.dumps(shown, indent=2))

    if cfg.service.kind == "remote":
        return run_remote(cfg, spec, settings, validation, resolved, out_dir)
    if cfg.service.kind != "local":
        raise EvoMergeInputError(f"service.kind: {cfg.service.kind!r} is not local or remote")
    t0 = time.perf_counter()
    world = load_world(cfg)
    world_s = time.perf_counter() - t0
    log.info("world ready in %.1fs: %d adapters, %d tasks", world_s, world.pool.num_adapters, len(world.records))
    tracker = make_tracker(OmegaConf.to_container(cfg.logger, resolve=True), resolved, out_dir, spec.name)
    adapters_dir = out_dir / "merged_adapters"
    searches: dict[str, dict] = {}

    def on_result(r, outcome, cell):
        if outcome.search is not None:
            searches[f"{r.target}/{r.label}"] = search_result_record(outcome.search, target=r.target, label=r.label)
        if outcome.adapter is not None and r.method in ("evo_merging", "lorahub"):
            d = save_peft_adapter(outcome.adapter, adapters_dir / f"{r.target}__{r.label}",
                                  base_model_name_or_path=str(world.base_dir),
                                  metadata={"method": r.label, "target": r.target, "pool": list(r.pool.names)})
            tracker.log_adapter(f"{r.target}-{r.label}", d)

    t0 = time.perf_counter()
    with PreemptionGuard() as guard:
        runner_for = stage_runner_factory(cfg, out_dir, tracker, guard, resolved)
        results = run_experiment(world, spec, settings, validation, runner_for, on_result,
                                 population_chunk=cfg.population_chunk)
    write_search_results(out_dir, searches, int(cfg.seed))
    results["timings"] = {"world_s": world_s, "experiment_s": time.perf_counter() - t0}
    zoo_keys = ("zoo_root", "timings", "adapter_test", "flops", "gate")
    results["zoo"] = {k: world.info[k] for k in zoo_keys if k in world.info}
    results["config"] = resolved
    return finish(results, spec, out_dir, tracker)


def write_search_results(out_dir: Path, searches: dict[str, dict], seed: int) -> None:
    """``result.json``: every search's best genome, fitness and generations; the first at the top level.

    SLURM templates requeue a job whose run directory has no result.json yet.
    """
    import jax

    from evojax_merge.search.result_io import write_json_atomic

    if jax.process_index() != 0:
        return
    first = next(iter(searches.values()), {"best_genome": [], "best_fitness": None, "generations_done": 0})
    write_json_atomic(out_dir / "result.json", {
        "best_genome": first["best_genome"], "best_fitness": first["best_fitness"],
        "generations_done": sum(s["generations_done"] for s in searches.values()), "seed": seed,
        "searches": searches,
    })


def finish(results: dict, spec, out_dir: Path, tracker) -> dict:
    from evojax_merge.runner.report import results_table, write_results

    table = results_table(results)
    write_results(out_dir, results, f"{spec.name}: {spec.setting} setting")
    tracker.log_results(results, table)
    tracker.finish()
    print(f"\n{spec.name} ({spec.setting}), test F1 x100:\n{table}\n\nwritten to {out_dir}")
    return results


def user_records(cfg: DictConfig) -> dict:
    """The task records on the user's side: the zoo's (regenerated from its seed) or files."""
    if cfg.data.source == "zoo":
        from evojax_merge.zoo.ie import generate_world

        return generate_world(zoo_config(cfg).tasks)
    from evojax_merge.data.records import load_records

    return {t: {split: load_records(p) for split, p in splits.items()}
            for t, splits in OmegaConf.to_container(cfg.data.tasks, resolve=True).items()}


def run_remote(cfg: DictConfig, spec, settings, validation, resolved: dict, out_dir: Path) -> dict:
    """The same search through a merge service: only control vectors leave this process."""
    from evojax_merge.runner.remote import run_remote_experiment
    from evojax_merge.tracking import make_tracker

    tracker = make_tracker(OmegaConf.to_container(cfg.logger, resolve=True), resolved, out_dir, spec.name)
    from evojax_merge.search.preemption import PreemptionGuard

    t0 = time.perf_counter()
    with PreemptionGuard() as guard:
        results = run_remote_experiment(user_records(cfg), spec, settings, validation,
                                        OmegaConf.to_container(cfg.service, resolve=True),
                                        stage_runner_factory(cfg, out_dir, tracker, guard, resolved))
    results["timings"] = {"experiment_s": time.perf_counter() - t0}
    results["config"] = {**resolved, "service": {**resolved["service"], "api_key": "***"}}
    return finish(results, spec, out_dir, tracker)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from evojax_merge.distributed import maybe_initialize_distributed
    from evojax_merge.search.preemption import Preempted

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    logging.captureWarnings(True)  # checkpoint fallbacks are warnings: into Hydra's log too
    try:
        if cfg.experiment.get("suite"):  # +experiment=paper: every table x seeds, one process each
            from evojax_merge.suite import run_suite

            run_suite(list(cfg.experiment.suite), list(cfg.experiment.seeds), list(HydraConfig.get().overrides.task),
                      out_dir)
            return
        maybe_initialize_distributed(bool(cfg.distributed))
        run(cfg, out_dir)
    except EvoMergeInputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Preempted as stop:  # the checkpoint is on disk; a rerun in the same directory resumes
        print(f"{stop}; rerun in {out_dir} to resume", flush=True)
        sys.exit(0)


if __name__ == "__main__":
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    main()
