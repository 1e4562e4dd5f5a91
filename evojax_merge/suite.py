"""Several experiments x seeds from one command: ``python -m evojax_merge.train +experiment=paper``.

An experiment config with ``experiment.suite`` (experiment names) and ``experiment.seeds`` runs
each pair as its own ``evojax_merge.train`` process, one after another, in
``<run dir>/<experiment>/seed_<s>``, with the command line's other overrides passed on (a
cache dir, the logger, ``population_chunk``, ...). A finished pair (its ``results.json``
exists) is skipped, so rerunning the same command in the same directory resumes the suite. When
every pair is done, ``python -m evojax_merge.report`` writes ``REPORT.md`` over all of them.
Each process reuses the one cached zoo.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from evojax_merge.errors import EvoMergeInputError

CONF = Path(__file__).resolve().parents[1] / "conf"


def suite_commands(suite: Sequence[str], seeds: Sequence[int], overrides: Sequence[str],
                   out_dir: Path) -> list[tuple[Path, list[str]]]:
    """``(run dir, argv)`` per (experiment, seed), experiment-major."""
    if not suite or not seeds:
        raise EvoMergeInputError("experiment.suite and experiment.seeds must both be non-empty")
    known = {p.stem for p in (CONF / "experiment").glob("*.yaml")}
    bad = [e for e in suite if e not in known]
    if bad:
        raise EvoMergeInputError(f"experiment.suite: unknown experiment {bad[0]!r}")
    keep = [o for o in overrides if not o.lstrip("+~").startswith(("experiment=", "seed=", "hydra."))]
    out = []
    for name in suite:
        for seed in seeds:
            run_dir = out_dir / name / f"seed_{seed}"
            argv = [sys.executable, "-m", "evojax_merge.train", f"+experiment={name}", f"seed={seed}",
                    f"hydra.run.dir={run_dir}", *keep]
            out.append((run_dir, argv))
    return out


def run_suite(suite: Sequence[str], seeds: Sequence[int], overrides: Sequence[str], out_dir: Path) -> dict:
    """Run every pair not yet done; then the report. Returns ``{run dir: seconds}``."""
    timings: dict[str, float] = {}
    for run_dir, argv in suite_commands(suite, seeds, overrides, out_dir):
        if (run_dir / "results.json").is_file():
            print(f"[suite] done already: {run_dir}", flush=True)
            continue
        print(f"[suite] {' '.join(argv[3:])}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(argv)
        timings[str(run_dir)] = time.perf_counter() - t0
        if proc.returncode != 0:
            raise EvoMergeInputError(f"experiment.suite: {' '.join(argv[3:5])} failed (exit {proc.returncode}); "
                                     f"its log is in {run_dir}")
    (out_dir / "suite_timings.json").write_text(json.dumps(timings, indent=2))
    runs = [str(d) for d, _ in suite_commands(suite, seeds, overrides, out_dir)]
    try:
        import evojax_merge.report  # noqa: F401  (the report command, when installed)
    except ImportError:
        print("[suite] evojax_merge.report is not available: no REPORT.md", flush=True)
        return timings
    subprocess.run([sys.executable, "-m", "evojax_merge.report", *runs, "--out", str(out_dir)], check=False)
    return timings
