"""SIGKILL mid-search, rerun, same result: Sakana PS (a CMA-ES stage over full fine-tunes) and DAM (a
gradient training loop) through the real entry point, as for Evo-Merging (tests/test_resume.py).

Each run is ``python -m evojax_merge.train +experiment=dam`` on the Sakana world (shared cache) with one
method. The test kills the process once a checkpoint step >= STRIKE is on disk, reruns it in the same run
directory, and compares what it found with an uninterrupted run's, to the last bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds (or reuses) the Sakana world; three runs per method

STRIKE = 3
TIMEOUT = 600
METHODS = {
    "sakana_ps": ["budget.sakana_ps_generations=40", "budget.sakana_ps_population_size=8"],
    "dam": ["method.dam.examples_per_source=160", "method.dam.batch_size=4"],
}
KEYS = ("f1", "val_ce", "val_fitness", "density", "weight", "genome", "coefficients", "history", "steps")


def _cmd(method: str, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "evojax_merge.train", "+experiment=dam", f"method=[{method}]", *METHODS[method],
            "experiment.seeds=[]", "world.val_examples=16", "experiment.test_examples=8", "progress=false",
            "checkpoint.interval=1", f"hydra.run.dir={run_dir}"]


def _steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in run_dir.glob("checkpoints/*/*") if p.name.isdigit())


def _found(run_dir: Path, method: str) -> dict:
    cell = next(iter(json.loads((run_dir / "results.json").read_text())["methods"][method]["per_task"].values()))
    return {k: cell[k] for k in KEYS if k in cell}


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    e = dict(os.environ)
    e.pop("XLA_FLAGS", None)
    e.update(JAX_PLATFORMS="cpu", WANDB_MODE="offline")
    return e


@pytest.mark.parametrize("method", sorted(METHODS))
def test_sigkill_and_rerun_is_bit_identical(method, tmp_path, env):
    ref = subprocess.run(_cmd(method, tmp_path / "reference"), env=env, capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert ref.returncode == 0, ref.stderr[-4000:]
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(method, run_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + TIMEOUT
    while not (_steps(run_dir) and _steps(run_dir)[-1] >= STRIKE):
        assert proc.poll() is None, f"the run ended before step {STRIKE}:\n{proc.stderr.read()[-4000:]}"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (run_dir / "result.json").exists(), "killed after it finished: the test proves nothing"
    rerun = subprocess.run(_cmd(method, run_dir), env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert "resuming" in rerun.stderr + rerun.stdout, "the rerun did not resume from the checkpoint"
    assert _found(run_dir, method) == _found(tmp_path / "reference", method)
    assert json.loads((run_dir / "result.json").read_text())["searches"] == json.loads(
        (tmp_path / "reference" / "result.json").read_text())["searches"]
