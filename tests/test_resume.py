"""Checkpoint/resume of the two-stage Evo-Merging search, against an uninterrupted run.

Each search runs in a subprocess (tests/search_driver.py: a random tiny Llama, a random LoRA pool,
random answer-only batches, MergeEvaluator) so it can be SIGKILLed or SIGTERMed for real. The test
watches the checkpoint directory and strikes once a step chosen by a seeded RNG is on disk; the rerun
in the same directory must end with best_genome, best_fitness and both stage histories bit-identical
to those of a run that was never interrupted (and that used no checkpointing at all).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.search.checkpoint import CheckpointRunner
from evojax_merge.search.checkpoint_state import state_from_host, state_to_host
from evojax_merge.search.cmaes import StageResult, StageSpec, init_stage
from evojax_merge.search.evo_merging import default_stage_runner
from evojax_merge.search.genome import GenomeLayout
from evojax_merge.search.preemption import INTERRUPT_NOTICE, Preempted, PreemptionGuard
from evojax_merge.search.result_io import read_result, write_result

DRIVER = Path(__file__).with_name("search_driver.py")
G1, G2 = 5, 6  # search_driver.SEARCH: stage generations; global steps are 1..G1+G2
SLEEP = 0.1  # seconds per generation in the runs the test interrupts
TIMEOUT = 240


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """Subprocess environment: one CPU device and a compilation cache shared by all the runs
    (cached executables are the same executables, so this changes speed, not numbers)."""
    e = dict(os.environ)
    e.pop("XLA_FLAGS", None)
    e.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
             PYTHONWARNINGS="default")
    return e


def _start(run_dir: Path, env: dict, *extra: str, sleep: float = SLEEP) -> subprocess.Popen:
    cmd = [sys.executable, str(DRIVER), "search", "--dir", str(run_dir), "--seed", "7", "--sleep", str(sleep), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[str, str]:
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, f"driver failed ({proc.returncode}):\n{out}\n{err[-4000:]}"
    return out, err


def _run(run_dir: Path, env: dict, *extra: str) -> tuple[str, str]:
    return _finish(_start(run_dir, env, *extra, sleep=0.0))


def _steps(run_dir: Path) -> list[int]:
    """Finalised orbax steps (in-flight saves live in '<step>.orbax-checkpoint-tmp-*' directories)."""
    ckpt = run_dir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.exists() else []


def _wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not (_steps(run_dir) and _steps(run_dir)[-1] >= step):
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {step}:\n{proc.stdout.read()}\n{proc.stderr.read()[-4000:]}")
        assert time.monotonic() < deadline, f"no step {step} after {TIMEOUT}s"
        time.sleep(0.01)


def _resumed_from(out: str) -> int | None:
    line = next(line for line in out.splitlines() if line.startswith("RESUMED_FROM "))
    value = line.split()[1]
    return None if value == "None" else int(value)


def _assert_identical(run_dir: Path, reference: dict) -> None:
    got = read_result(run_dir / "result.json")
    assert np.array_equal(got["best_genome"], reference["best_genome"])  # float32, bitwise
    assert got["best_fitness"] == reference["best_fitness"]
    assert got["generations_done"] == reference["generations_done"] == G1 + G2
    assert [s["name"] for s in got["stages"]] == ["stage1_denoise", "stage2_scale"]
    assert got["stages"] == reference["stages"]  # every stage's best, best fitness and full history


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env) -> dict:
    """The uninterrupted run (default stage runner, no checkpoints at all)."""
    run_dir = tmp_path_factory.mktemp("reference")
    _finish(subprocess.Popen([sys.executable, str(DRIVER), "search", "--dir", str(run_dir), "--seed", "7",
                              "--no-ckpt"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return read_result(run_dir / "result.json")


@pytest.mark.slow
def test_sigkill_twice_then_resume_is_bit_identical(tmp_path, env, reference):
    rng = np.random.default_rng(2024)
    kill_1 = int(rng.integers(1, G1))  # inside stage 1
    kill_2 = int(rng.integers(G1 + 1, G1 + G2))  # inside stage 2
    run_dir = tmp_path / "run"
    resumed = []
    for target in (kill_1, kill_2):
        proc = _start(run_dir, env)
        _wait_for_step(proc, run_dir, target)
        proc.send_signal(signal.SIGKILL)  # no handler, no cleanup, possibly in the middle of a save
        proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == -signal.SIGKILL
        assert not (run_dir / "result.json").exists()
        assert _steps(run_dir)[-1] < G1 + G2
    out, _ = _run(run_dir, env)
    resumed.append(_resumed_from(out))
    assert G1 + 1 <= resumed[0] < G1 + G2  # the final run picked up in stage 2, after the second kill
    _assert_identical(run_dir, reference)


@pytest.fixture(scope="module")
def sigterm_run(tmp_path_factory, env) -> tuple[Path, str, int]:
    """A run stopped by SIGTERM in stage 2: (its directory, its stdout, the step it was signalled at)."""
    run_dir = tmp_path_factory.mktemp("sigterm") / "run"
    target = int(np.random.default_rng(7).integers(G1 + 1, G1 + G2 - 1))
    proc = _start(run_dir, env)
    _wait_for_step(proc, run_dir, target)
    proc.send_signal(signal.SIGTERM)
    out, _ = _finish(proc)  # exit status 0
    return run_dir, out, target


@pytest.mark.slow
def test_sigterm_saves_exits_zero_and_resumes(tmp_path, env, reference, sigterm_run):
    src, out, target = sigterm_run
    line = next(line for line in out.splitlines() if line.startswith("PREEMPTED "))
    saved = int(line.split()[1].rstrip(":"))
    assert "SIGTERM" in line
    assert target <= saved < G1 + G2 and _steps(src)[-1] == saved  # the save is on disk, and it is the newest
    assert not (src / "result.json").exists()
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    out, _ = _run(run_dir, env)
    assert _resumed_from(out) == saved
    _assert_identical(run_dir, reference)


@pytest.mark.slow
def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path, env, reference, sigterm_run):
    src, _, _ = sigterm_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    steps = _steps(run_dir)
    newest = run_dir / "checkpoints" / str(steps[-1])
    data = [p for p in (newest / "state" / "d").iterdir() if p.is_file()]
    assert data
    for p in data:  # a half-written array file
        with open(p, "r+b") as f:
            f.truncate(p.stat().st_size // 2)
    out, err = _run(run_dir, env)
    assert "CheckpointFallbackWarning" in err and str(newest) in err
    assert f"falling back to step {steps[-2]}" in err
    assert _resumed_from(out) == steps[-2]
    _assert_identical(run_dir, reference)


@pytest.mark.slow
def test_ctrl_c_saves_exits_zero_without_a_traceback_and_resumes(tmp_path, env, reference):
    """Ctrl-C is a stop request like SIGTERM: one notice, the save, the one stop line, exit 0, a clean resume."""
    run_dir = tmp_path / "run"
    target = int(np.random.default_rng(3).integers(2, G1 + G2 - 1))
    proc = _start(run_dir, env)
    _wait_for_step(proc, run_dir, target)
    proc.send_signal(signal.SIGINT)
    out, err = _finish(proc)  # exit status 0
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.count(INTERRUPT_NOTICE.strip()) == 1
    line = next(line for line in out.splitlines() if line.startswith("PREEMPTED "))
    saved = int(line.split()[1].rstrip(":"))
    assert "received SIGINT: saved checkpoint step" in line and target <= saved == _steps(run_dir)[-1]
    out, _ = _run(run_dir, env)
    assert _resumed_from(out) == saved
    _assert_identical(run_dir, reference)


@pytest.mark.slow
def test_a_second_ctrl_c_quits_at_once(tmp_path, env):
    proc = _start(tmp_path / "run", env, sleep=60.0)  # each generation then waits a minute
    deadline = time.monotonic() + TIMEOUT
    while proc.stdout.readline().strip() != "STEP 1":  # generation 1 is done, its wait begins
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-4000:]
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)  # the first one is handled (the notice is written) at once, even mid-wait
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)  # well before the minute is over
    assert proc.returncode == -signal.SIGINT
    assert err.count(INTERRUPT_NOTICE.strip()) == 1 and "Traceback" not in err


# -- in-process units: cheap, no search loop --------------------------------------------------------------

SPEC = StageSpec("s", GenomeLayout("alpha", 3, 0.0, 1.0), (1.0, 0.5, 0.25), 0.1, 4, 3)


def _bitwise_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)

    def raw(x):
        return np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)

    return len(la) == len(lb) and all(
        raw(x).tobytes() == raw(y).tobytes() and x.dtype == y.dtype
        and getattr(x, "weak_type", None) == getattr(y, "weak_type", None)
        for x, y in zip(la, lb, strict=True))


def test_state_host_roundtrip_keeps_key_dtypes_and_weak_types():
    state = init_stage(SPEC, jax.random.key(3))
    arrays, layout = state_to_host(state)
    assert any(e["key_impl"] for e in layout) and any(e["weak"] for e in layout)
    back = state_from_host(init_stage(SPEC, jax.random.key(99)), arrays, layout)
    assert _bitwise_equal(state, back)
    assert jax.random.key_impl(back.key) == jax.random.key_impl(state.key)


def _two_stages(runner) -> list[StageResult]:
    """Two stages the way evo_merging_search runs them, on a quadratic that moves with the generation."""
    specs = [SPEC, StageSpec("t", GenomeLayout("beta", 3, -1.5, 1.5), (0.3, 0.3, 0.3), 0.1, 4, 5)]

    def fitness(population: np.ndarray, generation: int) -> np.ndarray:
        return ((population - 0.05 * generation) ** 2).sum(axis=1)

    return [runner(spec, fitness, jax.random.fold_in(jax.random.key(5), i)) for i, spec in enumerate(specs)]


@pytest.mark.slow
def test_interval_preemption_and_resume_in_process(tmp_path):
    """interval=2: saves at even steps, at stage ends (3) and at the preempted step (7, odd)."""
    reference = _two_stages(default_stage_runner(progress=False))
    guard = PreemptionGuard()  # not installed: request() stands in for the signal

    def hook(spec, state, step):
        if step == 7:
            guard.request(signal.SIGUSR1)

    runner = CheckpointRunner(tmp_path, interval=2, max_to_keep=5, preemption=guard, on_generation=hook,
                              progress=False)
    with pytest.raises(Preempted) as stop, runner:
        _two_stages(runner)
    assert stop.value.step == 7 and stop.value.signum == signal.SIGUSR1
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [2, 3, 4, 6, 7]
    with CheckpointRunner(tmp_path, interval=2, max_to_keep=5, progress=False) as runner:
        assert runner.resumed_from == 7 and [r.name for r in runner.restored_results] == ["s"]
        resumed = _two_stages(runner)
    assert runner.latest_step == 8
    for a, b in zip(resumed, reference, strict=True):
        assert a.name == b.name and a.best_fitness == b.best_fitness
        assert np.array_equal(a.best_genome, b.best_genome) and np.array_equal(a.history, b.history, equal_nan=True)


def test_runner_refuses_other_runs_checkpoints(tmp_path):
    state = init_stage(SPEC, jax.random.key(0))
    with CheckpointRunner(tmp_path, fingerprint={"seed": 0}, progress=False, async_save=False) as runner:
        runner._save(1, SPEC, state.replace(generation=state.generation + 1))
    with pytest.raises(EvoMergeInputError, match="different run"):
        CheckpointRunner(tmp_path, fingerprint={"seed": 1})
    with pytest.raises(EvoMergeInputError, match="already holds checkpoints"):
        CheckpointRunner(tmp_path, fingerprint={"seed": 0}, resume=False)
    with CheckpointRunner(tmp_path, fingerprint={"seed": 0}, progress=False) as runner:
        assert runner.resumed_from == 1


def test_preemption_guard_sets_flag_and_restores_handlers():
    previous = signal.getsignal(signal.SIGUSR1)
    with PreemptionGuard() as guard:
        assert signal.getsignal(signal.SIGUSR1) != previous
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)  # Python runs the handler at the next bytecode boundary
        assert guard.requested and guard.signum == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) == previous
    assert "SIGUSR1" in str(Preempted(signal.SIGUSR1, 4, "/x"))


def test_result_json_roundtrips_float32_exactly(tmp_path):
    rng = np.random.default_rng(0)
    genome = rng.standard_normal(6).astype(np.float32)
    history = np.full((3, 4), np.nan, np.float32)
    history[:2] = rng.standard_normal((2, 4))
    stage = StageResult("s", genome, float(np.float32(1.2345678)), history)

    class Result:  # the fields write_result reads from a MergeSearchResult
        method, alpha, beta, stages, best_fitness = "evo_merging", genome[:3], genome[3:], [stage], stage.best_fitness
        best_genome = genome

    path = write_result(tmp_path / "result.json", Result(), seed=3)
    back = read_result(path)
    assert np.array_equal(back["best_genome"], genome) and back["best_fitness"] == stage.best_fitness
    assert back["generations_done"] == 2 and back["seed"] == 3
    assert back["stages"][0]["history"][2] == [None] * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]  # no temp file left behind
    json.loads(path.read_text())
