"""Hydra entry point: compose the config, run the one experiment engine, print its table.

    python -m evojax_merge.train +experiment=ood
    python -m evojax_merge.train +experiment=sakana world.build.seed=1
    python -m evojax_merge.train -m +experiment=ood method=evo_merging,lorahub,ties seed=0,1,2

Every experiment — any world (``world/``), setting (``setting/``), methods (``method/``) and search
strategy (``strategy/``) — goes through :func:`evojax_merge.runner.run_dir.run` and writes the same
run directory (see that module). ``+experiment=paper`` is a sweep of that engine over tables and seeds
followed by the report step.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.runner.build import config_dir
from evojax_merge.world.registry import register_configs

log = logging.getLogger("evojax_merge.train")
register_configs()  # world.tasks accepts new task names without Hydra's "+"


def _command_line() -> list[str]:
    """This run's command-line overrides (Hydra's task overrides; none outside a Hydra app)."""
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # HydraConfig not set
        return []


def run(cfg: DictConfig, out_dir: Path, guard=None) -> dict:
    """``guard``: the stop-signal flag the searches poll (``evojax_merge.slurm.stop_guard()``, installed)."""
    from evojax_merge.runner.run_dir import run as run_engine

    if cfg.get("paper") is not None:  # every table over its seeds through the same engine, then the reports
        from evojax_merge.runner.paper import run_paper

        return run_paper(cfg, out_dir, lambda sub, run_dir: run_engine(sub, run_dir, guard), _command_line())
    return run_engine(cfg, Path(out_dir), guard)


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


def check_run_dir(argv: list[str]) -> None:
    """An unwritable ``hydra.run.dir`` / ``hydra.sweep.dir`` (or working directory) is a one-line error before
    Hydra tries to create it (Hydra's own failure is a traceback)."""
    import os

    dirs = [a.partition("=")[2] for a in argv if a.lstrip("+").startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    for d in dirs or ["."]:
        path = Path(d).absolute()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            key = "hydra.run.dir" if dirs else "the working directory"
            print(f"error: {key}: {path} cannot be created ({existing} is not a writable directory)", file=sys.stderr)
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
    check_run_dir(sys.argv[1:])
    main()
