"""``+experiment=paper``: every table of the paper, each over several seeds, then one report per table.

    OUT/<table>/seed_<s>/      a run directory of ``+experiment=<table> seed=<s>`` (results.json, ...)
    OUT/<table>/report/        ``python -m evojax_merge.report OUT/<table>`` (REPORT.md, figures/)
    OUT/SUMMARY.md             every table's methods and the paper's predictions, held or not

Each (table, seed) is composed exactly as its own command line would be, with the paper run's other
overrides (e.g. ``zoo=ie_full``, ``logger=none``) passed on. A rerun in the same directory skips the
runs that already wrote ``results.json`` and resumes the rest from their checkpoints, so a preempted
SLURM job continues where it stopped.
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
    Hydra's own (each table's run directory is the paper run's ``<table>/seed_<s>``)."""
    return [o for o in command_line if not o.lstrip("+~").startswith(_OWN_KEYS)]


def run_paper(cfg: DictConfig, out_dir: Path, run_one: Callable[[DictConfig, Path], dict],
              command_line: Sequence[str]) -> dict:
    """Run ``cfg.experiment.tables`` x ``cfg.experiment.seeds`` with ``run_one(cfg, run_dir)``, then
    build each table's seeded report and the summary. Returns ``{table: report path}``."""
    from hydra import compose

    from evojax_merge.report.summary import write_summary
    from evojax_merge.runner.run_dir import prepare_dir, replicate_report, write_result_json

    tables, seeds = list(cfg.paper.tables), [int(s) for s in cfg.paper.seeds]
    if not tables or not seeds:
        raise EvoMergeInputError("paper.tables and paper.seeds: the paper run needs both")
    prepare_dir(out_dir)
    write_text_atomic(out_dir / "config_resolved.json", json.dumps(OmegaConf.to_container(cfg, resolve=True),
                                                                   indent=2, default=str))
    inherited = table_overrides(command_line)
    configs = {}
    for table in tables:  # compose all first: a bad table name fails before hours of runs
        for seed in seeds:
            try:
                configs[table, seed] = compose("config", overrides=[f"+experiment={table}", f"seed={seed}", *inherited])
            except Exception as e:  # Hydra's MissingConfigException and friends: one line, the key named
                raise EvoMergeInputError(f"paper.tables: {table!r}: {str(e).splitlines()[0]}") from None
            if configs[table, seed].get("paper") is not None:
                raise EvoMergeInputError("paper.tables: 'paper' cannot run itself")
    reports, table_dirs, t_start = {}, {}, time.perf_counter()
    for table in tables:
        dirs = table_dirs[table] = []
        for seed in seeds:
            run_dir = out_dir / table / f"seed_{seed}"
            if (run_dir / "result.json").is_file() and (run_dir / "results.json").is_file():
                log.info("paper: %s seed %d done before, skipped", table, seed)
            else:
                t0 = time.perf_counter()
                run_one(configs[table, seed], run_dir)
                log.info("paper: %s seed %d in %.0f s", table, seed, time.perf_counter() - t0)
            dirs.append(run_dir)
        reports[table] = str(replicate_report(dirs, out_dir / table / "report"))
        print(f"paper: {table} report written to {reports[table]}", flush=True)
    seconds = time.perf_counter() - t_start
    summary = write_summary(out_dir, table_dirs, reports, seeds, seconds,
                            " ".join(["python -m evojax_merge.train", *command_line]))
    write_result_json(out_dir, {}, int(cfg.seed), {"tables": reports, "summary": str(summary)})
    print(f"paper: {len(tables)} tables x {len(seeds)} seeds in {seconds:.0f} s; summary: {summary}", flush=True)
    return reports
