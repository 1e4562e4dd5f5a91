"""The one timer of the project's benchmarks, and this machine's matmul rate as their reference.

- :func:`best_time`: the best wall and process-CPU seconds of ``repeats`` calls after a warm-up
  (compile) call, every call synced (``jax.block_until_ready``). The CPU seconds count all threads
  of this process: on a shared, overloaded machine the wall time mostly measures the other tenants.
- :func:`matmul_peak`: the measured FLOP/s of a square f32 GEMM, the peak the benchmarks and the
  zoo build report their achieved rates against.

It imports nothing of the package: the benchmarks (``evojax_merge.bench``), the zoo build and the
experiments' scripts all time through it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Timing(NamedTuple):
    """Minimum wall seconds and minimum process CPU seconds over the timed calls (each its own minimum)."""

    wall_s: float
    cpu_s: float


def best_time(fn: Callable[[], object], repeats: int) -> Timing:
    """:class:`Timing` of ``repeats`` calls of ``fn`` after one warm-up (compile) call."""
    if repeats < 1:
        raise ValueError(f"best_time: repeats must be at least 1, got {repeats}")
    jax.block_until_ready(fn())
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return Timing(min(walls), min(cpus))


def matmul_peak(size: int = 2048, repeats: int = 5, dtype: jnp.dtype | type = jnp.float32) -> float:
    """This machine's measured matmul rate (FLOP/s, f32 by default): a square GEMM, best of ``repeats``."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((size, size)), dtype)
    gemm = jax.jit(lambda a: a @ a)
    return 2.0 * size**3 / best_time(lambda: gemm(x), repeats).wall_s
