"""DAM under a CheckpointRunner: stopped by the guard after k steps and resumed in a fresh runner, it ends
bit-identical to an uninterrupted run (coefficients and loss history), on a LoRA pool and on full
fine-tunes (the method's path); SIGKILLed in a subprocess (tests/dam_driver.py) and rerun, the same.

The models are random and tiny (tests/search_driver.py's Llama), built in flax: no torch, no world."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from dam_driver import CONFIG, full_model, lora_model, source_data

from evojax_merge.methods.dam import DAM
from evojax_merge.search.checkpoint import CheckpointRunner
from evojax_merge.search.dam import DamResult, train_dam
from evojax_merge.search.preemption import Preempted, PreemptionGuard

DRIVER = Path(__file__).with_name("dam_driver.py")


class StopAtPoll:
    """A guard that asks to stop when the runner polls it for the ``k``-th time (once per step)."""

    def __init__(self, k: int):
        self.k, self.polls, self.signum = k, 0, None

    @property
    def requested(self) -> bool:
        self.polls += 1
        if self.polls >= self.k:
            self.signum = signal.SIGTERM
        return self.signum is not None


def _assert_same(got: DamResult, ref: DamResult) -> None:
    assert sorted(got.coefficients) == sorted(ref.coefficients)
    for k, v in ref.coefficients.items():
        assert got.coefficients[k].dtype == v.dtype and got.coefficients[k].tobytes() == v.tobytes(), k
    assert got.history == ref.history  # every loss part of every step, as Python floats: bitwise
    assert (got.steps, got.forward_examples, got.backward_examples) == (ref.steps, ref.forward_examples,
                                                                         ref.backward_examples)


@pytest.fixture(scope="module")
def lora():
    model = lora_model()
    data = source_data()
    return model, data, train_dam(model, CONFIG, data)  # the reference: no runner, nothing saved


def test_dam_stopped_by_the_guard_then_resumed_is_bit_identical(lora, tmp_path):
    model, data, reference = lora
    k = int(np.random.default_rng(11).integers(2, reference.steps - 1))
    guard = PreemptionGuard()  # not installed: request() stands in for the signal

    def stop_at_k(row: dict) -> None:
        if row["step"] == k:
            guard.request(signal.SIGUSR1)

    first = CheckpointRunner(tmp_path, preemption=guard, progress=False)
    with pytest.raises(Preempted) as stop, first:
        train_dam(model, CONFIG, data, runner=first, on_step=stop_at_k)
    assert stop.value.step == k and stop.value.signum == signal.SIGUSR1
    assert max(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == k  # the stop's save is the newest
    seen = []
    with CheckpointRunner(tmp_path, progress=False) as second:
        assert second.resumed_from == k
        resumed = train_dam(model, CONFIG, data, runner=second, on_step=lambda row: seen.append(row["step"]))
    assert seen == list(range(k + 1, reference.steps + 1))
    _assert_same(resumed, reference)
    # a rerun after the end restores the result without a step
    with CheckpointRunner(tmp_path, progress=False) as third:
        again = train_dam(model, CONFIG, data, runner=third, on_step=lambda row: pytest.fail("trained again"))
    _assert_same(again, reference)


def test_a_stage_runner_without_a_loop_trains_unsaved(lora):
    """``checkpoint.enabled=false``: the engine's runner is a plain stage runner; DAM trains as without one."""
    model, data, reference = lora
    _assert_same(train_dam(model, CONFIG, data, runner=lambda spec, fitness, key: None), reference)


def test_dam_method_on_full_finetunes_resumes_through_its_runner(tmp_path):
    assert DAM.searches  # so the engine gives it task.runner
    model, data = full_model(), source_data()
    method = DAM(lr=3e-2, batch_size=2, positions="all")
    _, reference = method.run_full(model, source_data=data, seed=3)
    with pytest.raises(Preempted) as stop, CheckpointRunner(tmp_path, preemption=StopAtPoll(2), progress=False) as r:
        method.run_full(model, source_data=data, seed=3, runner=r)
    assert stop.value.step == 2
    with CheckpointRunner(tmp_path, progress=False) as runner:
        assert runner.resumed_from == 2
        outcome, resumed = method.run_full(model, source_data=data, seed=3, runner=runner)
    _assert_same(resumed, reference)
    assert outcome.details["steps"] == reference.steps and outcome.model is not None


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """One CPU device and one compilation cache for the driver's runs (same executables, faster starts)."""
    e = dict(os.environ)
    e.pop("XLA_FLAGS", None)
    e.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return e


def _steps(ckpt: Path) -> list[int]:
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.exists() else []


@pytest.mark.slow
def test_dam_sigkilled_then_rerun_is_bit_identical(lora, tmp_path, env):
    _, _, reference = lora
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(DRIVER), "--dir", str(run_dir), "--sleep", "0.2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    target = int(np.random.default_rng(5).integers(2, reference.steps - 1))
    deadline = time.monotonic() + 120
    while not (_steps(run_dir / "checkpoints") and _steps(run_dir / "checkpoints")[-1] >= target):
        assert proc.poll() is None, f"the driver ended early:\n{proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"no step {target} after 120 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # no handler, no cleanup, maybe in the middle of a save
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL and not (run_dir / "result.json").exists()
    done = subprocess.run([*cmd[:-2]], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed_from = int(next(line for line in done.stdout.splitlines() if line.startswith("RESUMED_FROM ")).split()[1])
    assert target <= resumed_from < reference.steps
    got = json.loads((run_dir / "result.json").read_text())
    assert got["history"] == reference.history
    for k, v in reference.coefficients.items():
        assert np.asarray(got["coefficients"][k], np.float32).tobytes() == v.tobytes(), k
