"""Achieved FLOP rate of the zoo build: XLA's own FLOP count per compiled step, over wall time.

:class:`FlopMeter` compiles a jitted step ahead of time once per argument shape
(``fn.lower(*args).compile()``), reads ``flops`` from the compiled executable's cost analysis,
and then runs that executable, timing every call to completion. The rate it reports is
``sum(flops of every call) / sum(call seconds)`` per phase; compile time is kept apart. The
process CPU seconds of the calls are kept too: on a shared machine the wall-clock rate says how
busy the neighbours were, while ``flops / cpu seconds`` is the rate per busy core.
The machine's f32 matmul rate, the reference, is :func:`evojax_merge.perf.matmul_peak`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import jax


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


@dataclass
class FlopMeter:
    """Per phase: FLOPs, run seconds, compile seconds and calls."""

    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    _compiled: dict[tuple, tuple[Callable, float]] = field(default_factory=dict)

    def call(self, phase: str, fn, *args):
        """``fn(*args)`` through its compiled executable for these shapes; the result, synced."""
        key = (phase, id(fn), *(
            (tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(args) if hasattr(x, "shape")))
        stats = self.phases.setdefault(phase, {"flops": 0.0, "seconds": 0.0, "compile_s": 0.0, "calls": 0,
                                                  "cpu_s": 0.0})
        if key not in self._compiled:
            t0 = time.perf_counter()
            compiled = fn.lower(*args).compile()
            self._compiled[key] = (compiled, _flops(compiled))
            stats["compile_s"] += time.perf_counter() - t0
        compiled, flops = self._compiled[key]
        t0, c0 = time.perf_counter(), time.process_time()
        out = jax.block_until_ready(compiled(*args))
        stats["seconds"] += time.perf_counter() - t0
        stats["cpu_s"] += time.process_time() - c0
        stats["flops"] += flops
        stats["calls"] += 1
        return out

    def summary(self) -> dict[str, dict[str, float]]:
        """Per phase and in total: GFLOP, seconds, compile seconds, GFLOP/s."""
        out = {}
        for name, s in self.phases.items():
            out[name] = {"gflop": s["flops"] / 1e9, "seconds": s["seconds"], "compile_s": s["compile_s"],
                         "cpu_s": s["cpu_s"], "gflops_per_s": s["flops"] / 1e9 / s["seconds"] if s["seconds"] else 0.0,
                         "gflops_per_cpu_s": s["flops"] / 1e9 / s["cpu_s"] if s["cpu_s"] else 0.0}
        total_f = sum(s["flops"] for s in self.phases.values())
        total_s = sum(s["seconds"] for s in self.phases.values())
        total_c = sum(s["cpu_s"] for s in self.phases.values())
        out["total"] = {"gflop": total_f / 1e9, "seconds": total_s,
                        "compile_s": sum(s["compile_s"] for s in self.phases.values()),
                        "cpu_s": total_c, "gflops_per_s": total_f / 1e9 / total_s if total_s else 0.0,
                        "gflops_per_cpu_s": total_f / 1e9 / total_c if total_c else 0.0}
        return out

