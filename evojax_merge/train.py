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

from evojax_merge.data.tasks import register_configs
from evojax_merge.errors import EvoMergeInputError

log = logging.getLogger("evojax_merge.train")
register_configs()  # data.tasks accepts new task names without Hydra's "+"


def _tuples(d: dict) -> dict:
    """Hydra lists -> tuples, so they fit the frozen dataclasses."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


ZOO_KINDS = ("classic", "ie")


def zoo_kind(cfg: DictConfig) -> str:
    """The zoo config group's ``kind``: ``classic`` (zoo/build.py; also when absent) or ``ie`` (zoo/ie_build.py)."""
    kind = cfg.zoo.get("kind") or "classic"
    if kind not in ZOO_KINDS:
        raise EvoMergeInputError(f"zoo.kind: {kind!r} is not one of {', '.join(ZOO_KINDS)}")
    return kind


def zoo_config(cfg: DictConfig):
    """The zoo group as its build config: the IE world's (``kind: ie``) or the classic zoo's."""
    if zoo_kind(cfg) == "ie":
        from evojax_merge.zoo.ie_build import ZooBuildConfig
    else:
        from evojax_merge.zoo.build import ZooBuildConfig
    return ZooBuildConfig.from_dict(OmegaConf.to_container(cfg.zoo, resolve=True))


def uses_ie_zoo(cfg: DictConfig) -> bool:
    """The run's tasks come from the compositional IE world."""
    return cfg.data.source == "zoo" and zoo_kind(cfg) == "ie"


def experiment_spec(cfg: DictConfig):
    from evojax_merge.runner.experiment import ExperimentSpec

    e = _tuples(OmegaConf.to_container(cfg.experiment, resolve=True))
    if not e.get("targets") and uses_ie_zoo(cfg):  # an IE world: its gate targets (their siblings are in the pool)
        e["targets"] = tuple(zoo_config(cfg).gate.targets)
    try:
        return ExperimentSpec(**e, seed=int(cfg.seed))
    except TypeError as err:
        raise EvoMergeInputError(f"experiment: {err}") from None


def methods_from_config(cfg: DictConfig) -> dict:
    """``{label: MergeMethod}`` from ``cfg.method`` (each entry's ``_target_``), checked by key."""
    from evojax_merge.methods.registry import build_methods

    try:
        method_cfg = OmegaConf.to_container(cfg.method, resolve=True)
    except Exception as e:  # an interpolation to a missing key, e.g. budget.*
        raise EvoMergeInputError(f"method: {e}".splitlines()[0]) from None
    return build_methods(method_cfg)


def validate(cfg: DictConfig) -> None:
    """Impossible configs fail here, with the key named, before anything is built."""
    from evojax_merge.search.fitness import resolve_population_chunk

    resolve_population_chunk(cfg.population_chunk)
    checks = [
        (cfg.data.validation.batch_size >= 1, "data.validation.batch_size must be >= 1"),
        (cfg.data.validation.num_batches >= 1, "data.validation.num_batches must be >= 1"),
        (cfg.model.dtype in ("float32", "bfloat16"), "model.dtype must be float32 or bfloat16"),
        (cfg.checkpoint.interval >= 1, "checkpoint.interval must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise EvoMergeInputError(message)
    if cfg.model.source == "zoo" or cfg.data.source == "zoo":
        zoo_config(cfg)  # a bad zoo kind or key, before anything is built


def load_world(cfg: DictConfig):
    from evojax_merge.data.prompt import PromptSettings
    from evojax_merge.runner.world import load_ie_world, load_user_world, load_zoo_world

    prompt = PromptSettings(cfg.data.prompt, bool(cfg.data.loss_on_history), int(cfg.data.max_len_cap))
    if cfg.model.source == "zoo":
        if cfg.pool.source != "zoo" or cfg.data.source != "zoo":
            raise EvoMergeInputError("model.source=zoo needs pool.source=zoo and data.source=zoo")
        if zoo_kind(cfg) == "ie":
            return load_ie_world(zoo_config(cfg), cfg.cache_dir, cfg.model.dtype, progress=cfg.progress,
                                 prompt=prompt)
        return load_zoo_world(zoo_config(cfg), cfg.cache_dir, cfg.model.dtype, progress=cfg.progress, prompt=prompt)
    if cfg.model.source not in ("hf", "gguf"):
        raise EvoMergeInputError(f"model.source: {cfg.model.source!r} is not zoo, hf or gguf")
    adapters = cfg.pool.adapters
    adapters = list(adapters) if not isinstance(adapters, str) else adapters
    return load_user_world(cfg.model.path, cfg.model.tokenizer, adapters,
                           OmegaConf.to_container(cfg.data.tasks, resolve=True), cfg.model.dtype, prompt,
                           source=cfg.model.source)


def _fingerprint(resolved: dict, label: str) -> dict:
    """What must not change between a run and its resume (not: resume, checkpointing, logging)."""
    skip = {"resume", "checkpoint", "hydra", "logger", "progress", "service", "distributed"}
    return {"label": label, **{k: v for k, v in resolved.items() if k not in skip}}


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
                                  fingerprint=_fingerprint(resolved, label), preemption=guard,
                                  on_generation=log_generation, progress=cfg.progress)
        if runner.resumed_from is not None:
            log.info("%s: resumed from checkpoint step %d", label, runner.resumed_from)
        return runner

    return runner_for


def _command_line() -> list[str]:
    """This run's command-line overrides (Hydra's task overrides; none outside a Hydra app)."""
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # HydraConfig not set
        return []


def run(cfg: DictConfig, out_dir: Path, guard=None) -> dict:
    """``guard``: the stop-signal flag the searches poll (``evojax_merge.slurm.stop_guard()``, installed)."""
    from evojax_merge.lora.export import save_peft_adapter
    from evojax_merge.runner.backends import LocalBackend
    from evojax_merge.runner.experiment import run_experiment
    from evojax_merge.search.fitness import ValidationConfig
    from evojax_merge.search.result_io import search_result_record
    from evojax_merge.tracking import make_tracker

    if cfg.experiment.get("name") == "paper":  # every table over its seeds, one report per table
        from evojax_merge.runner.paper import run_paper

        return run_paper(cfg, out_dir, lambda sub, run_dir: run(sub, run_dir, guard), _command_line())
    if cfg.experiment.get("kind") == "sakana":  # full fine-tunes: Sakana's table on its own world
        from evojax_merge.runner.sources import run_sakana

        return run_sakana(cfg, out_dir)
    validate(cfg)
    if cfg.get("dam") is not None:  # +experiment=dam_lora: its own driver (quality against cost, per seed)
        from evojax_merge.runner.dam import run_dam

        return run_dam(cfg, out_dir)
    spec, methods = experiment_spec(cfg), methods_from_config(cfg)
    validation = ValidationConfig(**OmegaConf.to_container(cfg.data.validation, resolve=True))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    shown = {**resolved, "service": {k: ("***" if k == "api_key" else v) for k, v in resolved["service"].items()}}
    (out_dir / "config_resolved.json").write_text(json.dumps(shown, indent=2))

    if cfg.service.kind == "remote":
        return run_remote(cfg, spec, methods, validation, resolved, out_dir, guard)
    if cfg.service.kind != "local":
        raise EvoMergeInputError(f"service.kind: {cfg.service.kind!r} is not local or remote")
    t0 = time.perf_counter()
    world = load_world(cfg)
    world_s = time.perf_counter() - t0
    log.info("world ready in %.1fs: %d adapters, %d tasks", world_s, world.pool.num_adapters, len(world.records))
    tracker = make_tracker(OmegaConf.to_container(cfg.logger, resolve=True), resolved, out_dir, spec.name)
    adapters_dir = out_dir / "merged_adapters"
    searches: dict[str, dict] = {}

    def on_result(r, label, outcome, cell):
        if outcome.search is not None:
            searches[f"{r.target}/{label}"] = search_result_record(outcome.search, target=r.target, label=label)
            if outcome.adapter is not None:  # the searched merges, as PEFT adapters
                d = save_peft_adapter(outcome.adapter, adapters_dir / f"{r.target}__{label}",
                                      base_model_name_or_path=str(world.base_dir),
                                      source_dirs=[world.pool.paths[i] for i in r.pool_idx],
                                      metadata={"method": label, "target": r.target,
                                                "pool": [world.pool.names[i] for i in r.pool_idx]})
                tracker.log_adapter(f"{r.target}-{label}", d)

    t0 = time.perf_counter()
    backend = LocalBackend(world, spec.max_new_tokens, cfg.population_chunk, progress=cfg.progress)
    runner_for = stage_runner_factory(cfg, out_dir, tracker, guard, resolved)
    results = run_experiment(backend, spec, methods, validation, runner_for, on_result, progress=cfg.progress,
                             predictions_dir=out_dir / "predictions")
    write_search_results(out_dir, searches, int(cfg.seed))
    results["timings"] = {"world_s": world_s, "experiment_s": time.perf_counter() - t0}
    results["zoo"] = {k: world.info[k] for k in ("zoo_root", "timings", "adapter_test", "adapters", "gate")
                      if k in world.info}
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
    from evojax_merge.provenance import provenance
    from evojax_merge.runner.report import results_table, write_results

    results["provenance"] = provenance("evojax_merge.train")  # read by python -m evojax_merge.report
    table = results_table(results)
    write_results(out_dir, results, f"{spec.name}: {spec.setting} setting")
    tracker.log_results(results, table)
    tracker.finish()
    print(f"\n{spec.name} ({spec.setting}), test F1 x100:\n{table}\n\nwritten to {out_dir}")
    return results


def user_records(cfg: DictConfig) -> dict:
    """The task records on the user's side: the zoo's (regenerated from its seed) or files."""
    if uses_ie_zoo(cfg):
        from evojax_merge.zoo.ie_world import generate_world

        return generate_world(zoo_config(cfg).tasks)
    if cfg.data.source == "zoo":
        from evojax_merge.zoo.tasks import generate_zoo

        return generate_zoo(zoo_config(cfg).tasks)
    from evojax_merge.data.tasks import declared_tasks, load_task_records

    return load_task_records(declared_tasks(OmegaConf.to_container(cfg.data.tasks, resolve=True)))


def user_task_types(cfg: DictConfig) -> dict[str, str]:
    """Each task's declared IE type: the zoo's own, or ``data.tasks.NAME.type``."""
    if uses_ie_zoo(cfg):
        from evojax_merge.runner.world import ie_task_types
        from evojax_merge.zoo.ie_world import task_names

        return ie_task_types(task_names(zoo_config(cfg).tasks))
    if cfg.data.source == "zoo":
        from evojax_merge.zoo.tasks import parse_task_name, task_names

        return {t: parse_task_name(t)[0] for t in task_names(zoo_config(cfg).tasks)}
    from evojax_merge.data.tasks import declared_tasks

    return {n: t.type for n, t in declared_tasks(OmegaConf.to_container(cfg.data.tasks, resolve=True)).items()}


def user_adapter_catalog(cfg: DictConfig, service: dict, records: dict) -> tuple[dict[str, str], dict[str, str]]:
    """``(adapter_tasks, adapter_kinds)`` of a merge service's pool on the user's side: ``service.adapter_tasks``
    and ``service.adapter_kinds``, or, for an IE zoo when neither is given, the world's own (from its config,
    as :func:`evojax_merge.runner.world.load_ie_world` reads them from the manifest)."""
    adapter_tasks, adapter_kinds = service.get("adapter_tasks") or {}, service.get("adapter_kinds") or {}
    if uses_ie_zoo(cfg) and not (adapter_tasks or adapter_kinds):
        from evojax_merge.runner.world import ie_adapter_tasks
        from evojax_merge.zoo.ie_world import adapter_datasets

        adapters = adapter_datasets(zoo_config(cfg).tasks, records)
        adapter_tasks, adapter_kinds = ie_adapter_tasks(adapters), {n: a["kind"] for n, a in adapters.items()}
    return adapter_tasks, adapter_kinds


def run_remote(cfg: DictConfig, spec, methods: dict, validation, resolved: dict, out_dir: Path,
               guard=None) -> dict:
    """The same experiment through a merge service: only control vectors leave this process."""
    from evojax_merge.runner.backends import RemoteBackend
    from evojax_merge.runner.experiment import check_methods, run_experiment
    from evojax_merge.tracking import make_tracker

    check_methods(methods, remote=True)  # before any request
    service = OmegaConf.to_container(cfg.service, resolve=True)
    records = user_records(cfg)
    adapter_tasks, adapter_kinds = user_adapter_catalog(cfg, service, records)
    backend = RemoteBackend(service, records, spec.max_new_tokens, adapter_tasks, task_types=user_task_types(cfg),
                            adapter_kinds=adapter_kinds)
    tracker = make_tracker(OmegaConf.to_container(cfg.logger, resolve=True), resolved, out_dir, spec.name)
    t0 = time.perf_counter()
    results = run_experiment(backend, spec, methods, validation,
                             stage_runner_factory(cfg, out_dir, tracker, guard, resolved), progress=cfg.progress,
                             predictions_dir=out_dir / "predictions")
    results["timings"] = {"experiment_s": time.perf_counter() - t0}
    results["remote"] = {"url": backend.url, "pool_id": backend.pool_id}
    results["config"] = {**resolved, "service": {**resolved["service"], "api_key": "***"}}
    return finish(results, spec, out_dir, tracker)


def config_dir() -> str:
    """The Hydra config tree: inside the package when installed from a wheel, else the repo's conf/."""
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    return str(packaged if packaged.is_dir() else here.parent / "conf")


def check_group_choices(argv: list[str], conf: str) -> None:
    """``method=nope`` and the like: a one-line error naming the group, before Hydra composes anything."""
    root = Path(conf)
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.lstrip("+~").partition("=")
        group = root / key
        if "." in key or key.startswith("hydra") or not group.is_dir() or not value:
            continue
        known = sorted(p.stem for p in group.glob("*.yaml"))
        for choice in value.strip("[]").split(","):  # a sweep (a,b) or a list ([a,b]) names several
            if choice not in known and choice != "null":
                print(f"error: {key}: unknown option {choice!r} (known: {', '.join(known)})", file=sys.stderr)
                sys.exit(2)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
def main(cfg: DictConfig) -> None:
    from evojax_merge.distributed import maybe_initialize_distributed
    from evojax_merge.logs import quiet_library_logs
    from evojax_merge.search.preemption import Preempted
    from evojax_merge.slurm import exit_after_stop, stop_guard

    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    logging.captureWarnings(True)  # checkpoint fallbacks are warnings: into Hydra's log too
    quiet_library_logs()  # orbax: one line per save (ours), not ~37
    try:
        with stop_guard() as guard:  # from the start: a signal during start-up stops after the first generation
            maybe_initialize_distributed(bool(cfg.distributed))
            run(cfg, out_dir, guard)
    except EvoMergeInputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Preempted as stop:  # the checkpoint is on disk: one message, then rerun / requeue
        exit_after_stop(stop, out_dir, float(hydra_cfg.launcher.get("signal_delay_s", 90)))


if __name__ == "__main__":
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    check_group_choices(sys.argv[1:], config_dir())
    main()
