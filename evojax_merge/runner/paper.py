"""``+experiment=paper``: every table of the paper over independently seeded world realizations, then one report
per table. The world realization is the unit of replication (issue 23): each world seed regenerates the data
and retrains the base and the pool; the search seeds run inside it.

    OUT/<table>/worlds/world_<w>/seeds/seed_<s>/   a run directory (results.json, result.json, predictions/, ...)
    OUT/<table>/report/REPORT.md                   ``python -m evojax_merge.report`` over that table's runs
    OUT/SUMMARY.md                                 every table and the paper's claims: held, not held, undetermined

The loop is world-major: a world is built (or loaded from the cache) once and every table that uses it runs on
it, so ``paper.only_worlds=[w]`` is one SLURM array task (``slurm/paper_array.sbatch``: each task's own run
contract in its ``hydra.run.dir``, the runs under the shared ``paper.root``). A table runs on the
first ``paper.max_worlds[table]`` of ``paper.world_seeds`` (all of them when it is not named). Each (table,
world, seed) is composed exactly as its own command line would be: ``+experiment=<table> seed=<s>``, the
world's seed, ``paper.protocol`` (the paper's protocol, every table), ``paper.table_overrides[<table>]``, then
the paper run's own other overrides. A rerun in the same directory skips every run that wrote ``result.json``
and resumes the others from their checkpoints; the reports are rebuilt over whatever is done.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.fileio import write_text_atomic

log = logging.getLogger(__name__)
_OWN_KEYS = ("+experiment=", "experiment=", "seed=", "experiment.", "paper.", "hydra.", "hydra/")


def table_overrides(command_line: Sequence[str]) -> list[str]:
    """The paper run's overrides that every table inherits: all but the experiment's own, the seed and
    Hydra's own (each table's run directory is under the paper run's)."""
    return [o for o in command_line if not o.lstrip("+~").startswith(_OWN_KEYS)]


def world_overrides(world_seed: int) -> list[str]:
    """A world seed draws both the records and the training (``IEWorld.with_seed``)."""
    return [f"world.build.seed={world_seed}", f"world.build.tasks.seed={world_seed}"]


def run_dir_of(out_dir: Path, table: str, world_seed: int, seed: int) -> Path:
    return out_dir / table / "worlds" / f"world_{world_seed}" / "seeds" / f"seed_{seed}"


def plan(paper: DictConfig) -> list[tuple[int, str, int]]:
    """``[(world seed, table, search seed), ...]`` in run order (world-major), ``paper.only_worlds`` applied."""
    tables, world_seeds = list(paper.tables), [int(w) for w in paper.world_seeds]
    seeds = [int(s) for s in paper.seeds]
    if not tables or not world_seeds or not seeds:
        raise EvoMergeInputError("paper.tables, paper.world_seeds and paper.seeds: the paper run needs all three")
    max_worlds = dict(paper.get("max_worlds") or {})  # entries of tables not run here are ignored
    only = paper.get("only_worlds")
    if only is not None:
        missing = [int(w) for w in only if int(w) not in world_seeds]
        if missing:
            raise EvoMergeInputError(f"paper.only_worlds: {missing[0]} is not in paper.world_seeds")
    runs = []
    for k, w in enumerate(world_seeds):
        if only is not None and w not in [int(x) for x in only]:
            continue
        runs += [(w, t, s) for t in tables if k < int(max_worlds.get(t, len(world_seeds))) for s in seeds]
    return runs


def _compose(table: str, world_seed: int, seed: int, paper: DictConfig, inherited: list[str]) -> DictConfig:
    from hydra import compose

    per_table = dict(paper.get("table_overrides") or {})
    overrides = [f"+experiment={table}", f"seed={seed}", *world_overrides(world_seed),
                 *list(paper.get("protocol") or []), *list(per_table.get(table) or []), *inherited]
    try:
        cfg = compose("config", overrides=overrides)
    except Exception as e:  # Hydra's MissingConfigException and friends: one line, the key named
        raise EvoMergeInputError(f"paper.tables: {table!r}: {str(e).splitlines()[0]}") from None
    if cfg.get("paper") is not None:
        raise EvoMergeInputError("paper.tables: 'paper' cannot run itself")
    return cfg


def done(run_dir: Path) -> bool:
    return (run_dir / "result.json").is_file() and (run_dir / "results.json").is_file()


def run_paper(cfg: DictConfig, out_dir: Path, run_one: Callable[[DictConfig, Path], dict],
              command_line: Sequence[str]) -> dict:
    """Run :func:`plan` with ``run_one(cfg, run_dir)``, then build each table's report over its finished runs and
    the summary. Returns ``{table: report path}``."""
    from evojax_merge.report.summary import write_summary
    from evojax_merge.runner.run_dir import prepare_dir, replicate_report, write_result_json

    runs = plan(cfg.paper)
    own_dir = prepare_dir(out_dir)  # this job's run contract; the runs go under paper.root when it is set
    write_text_atomic(own_dir / "config_resolved.json", json.dumps(OmegaConf.to_container(cfg, resolve=True),
                                                                   indent=2, default=str))
    out_dir = prepare_dir(Path(cfg.paper.root)) if cfg.paper.get("root") else own_dir
    inherited = table_overrides(command_line)
    configs = {r: _compose(r[1], r[0], r[2], cfg.paper, inherited) for r in runs}  # a bad table fails first
    t_start, timings = time.perf_counter(), {}
    for i, (w, table, seed) in enumerate(runs, 1):
        run_dir = run_dir_of(out_dir, table, w, seed)
        if done(run_dir):
            log.info("paper: %s world %d seed %d done before, skipped", table, w, seed)
            continue
        t0 = time.perf_counter()
        run_one(configs[w, table, seed], run_dir)
        key = f"{table}/world_{w}/seed_{seed}"
        timings[key] = time.perf_counter() - t0
        print(f"paper: [{i}/{len(runs)}] {key} in {timings[key]:.0f} s", flush=True)
    reports, table_dirs = {}, {}
    for table in dict.fromkeys(t for _, t, _ in plan(OmegaConf.merge(cfg.paper, {"only_worlds": None}))):
        dirs = sorted((d for d in (out_dir / table / "worlds").glob("world_*/seeds/seed_*") if done(d)),
                      key=lambda d: (int(d.parents[1].name.split("_")[1]), int(d.name.split("_")[1])))
        if not dirs:
            continue
        table_dirs[table] = dirs
        reports[table] = str(replicate_report(dirs, out_dir / table / "report"))
        print(f"paper: {table} report over {len(dirs)} runs written to {reports[table]}", flush=True)
    seconds = time.perf_counter() - t_start
    summary = None
    if table_dirs:
        summary = write_summary(out_dir, table_dirs, reports, [int(s) for s in cfg.paper.seeds], seconds,
                                " ".join(["python -m evojax_merge.train", *command_line]))
    write_result_json(own_dir, {}, int(cfg.seed), {"tables": reports, "summary": str(summary) if summary else None,
                                                   "timings": timings})
    print(f"paper: {len(runs)} runs planned here, {len(timings)} run now in {seconds:.0f} s; summary: {summary}",
          flush=True)
    return reports
