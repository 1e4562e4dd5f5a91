"""The population sharded over 4 (virtual CPU) devices gives the losses of a single device.

XLA_FLAGS must be set before JAX initialises its backend, so both sides run in fresh subprocesses
(tests/search_driver.py ``losses``), concurrently: 4 devices, and 1 device. A population of 7 does not
divide by 4 and exercises the padding.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # subprocesses

DRIVER = Path(__file__).with_name("search_driver.py")


def test_sharded_population_losses_equal_single_device(tmp_path):
    procs = {}
    for devices in (4, 1):
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        out = tmp_path / f"losses_{devices}.npz"
        procs[devices] = (out, subprocess.Popen([sys.executable, str(DRIVER), "losses", "--out", str(out)], env=env,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = {}
    for devices, (out, proc) in procs.items():
        stdout, stderr = proc.communicate(timeout=900)  # two JAX processes on a busy 2-core CI machine
        assert proc.returncode == 0, f"{devices} devices:\n{stdout}\n{stderr[-4000:]}"
        results[devices] = dict(np.load(out))
    sharded, single = results[4], results[1]
    assert int(sharded["devices"]) == 4 and int(sharded["mesh"]) == 4  # really sharded over a 4-device mesh
    assert int(single["devices"]) == 1 and int(single["mesh"]) == 0
    for p in (20, 7):
        a, b = sharded[f"losses_{p}"], single[f"losses_{p}"]
        assert a.shape == b.shape == (p,)
        assert np.all(np.isfinite(a)) and np.ptp(b) > 0  # distinct candidates, distinct losses
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_maybe_initialize_distributed_single_process():
    """enabled=False is a no-op; enabled=True really calls jax.distributed.initialize (one process here)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # before anything touches a device, as in the entry point
    code = ("import jax; from evojax_merge.distributed import maybe_initialize_distributed as init\n"
            f"print(init(True, coordinator_address='127.0.0.1:{port}', num_processes=1, process_id=0),"
            " jax.distributed.is_initialized())\n"
            "jax.distributed.shutdown()\n")
    from evojax_merge.distributed import maybe_initialize_distributed

    assert maybe_initialize_distributed(False) == (0, 1)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == "(0, 1) True"
