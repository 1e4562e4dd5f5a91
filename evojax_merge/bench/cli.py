"""Benchmark: seconds per candidate of the batched population call against the alternatives.

    python -m evojax_merge.bench                      # the default shapes of issue 3
    python -m evojax_merge.bench --adapters 20 --no-scaling --json bench.json
    python -m evojax_merge.bench --plan llama-3.1-8b     # compile-time plan (evojax_merge.bench.plan), no weights
    python -m evojax_merge.bench --plan bench-tiny --check-host   # the plan against a measured run here
    python -m evojax_merge.bench --sakana [...]          # PS / DFS: one population call vs a loop
    python -m evojax_merge.bench --vlm [...]             # PS on the VLM world: one population call vs a loop
    python -m evojax_merge.bench --dam [...]             # the DAM step against a PyTorch reference
    python -m evojax_merge.bench --stream-memory [...]   # streamed peak memory of the merge methods at 8B shapes
    python -m evojax_merge.bench --memory [...]          # peak RSS of a real model's phases vs weights + pool + acts
    python -m evojax_merge.bench --plan-real llama-3.1-8b   # the real experiment at the paper's budget: fits a GPU?
    python -m evojax_merge.bench pool-train [...]        # the LoRA-pool trainer's step against torch + PEFT

Without a flag it runs the population benchmark (:mod:`evojax_merge.bench.population`).
"""

from __future__ import annotations

import argparse
import json
import sys

# A first argument naming another benchmark hands the rest of the command line to its main(argv).
SUBCOMMANDS = ("--sakana", "--vlm", "--dam", "--stream-memory", "--memory", "--plan-real", "pool-train")


def parser() -> argparse.ArgumentParser:
    """The flags of the population benchmark and of ``--plan`` (which share the shape flags)."""
    ap = argparse.ArgumentParser(prog="python -m evojax_merge.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", metavar="MODEL", help="compile-time plan for a named model "
                    "(llama-3.1-8b, llama-3.2-1b, bench-tiny) or a config.json path: memory, FLOPs, "
                    "projected H100 time (the paper's workload unless the shape flags say otherwise)")
    ap.add_argument("--plan-chunks", type=int, nargs="+", default=[1, 4, 20], help="population chunks to plan")
    ap.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation of the H100 projection")
    ap.add_argument("--check-host", action="store_true", help="with --plan: predicted against measured here")
    ap.add_argument("--examples", type=int, default=None, help="validation examples (plan)")
    ap.add_argument("--answer-tokens", type=int, default=None, help="answer positions per example (plan)")
    ap.add_argument("--pool-dtype", choices=["float32", "bfloat16", "float16"], default=None)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=688)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--adapters", type=int, default=None)  # bench: 100
    ap.add_argument("--rank", type=int, default=None)  # bench: 8
    ap.add_argument("--population", type=int, default=None)  # bench: 20
    ap.add_argument("--batch", type=int, default=None)  # bench: 16
    ap.add_argument("--seq", type=int, default=None)  # bench: 128
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)  # bench: float32
    ap.add_argument("--no-torch", action="store_true", help="skip path (c)")
    ap.add_argument("--no-scaling", action="store_true", help="skip the N x P scaling table")
    ap.add_argument("--scaling-adapters", type=int, nargs="+", default=[10, 50, 100, 200])
    ap.add_argument("--scaling-population", type=int, nargs="+", default=[5, 20, 80])
    ap.add_argument("--population-chunk", default="auto",
                    help="candidates vmapped at a time inside the batched call: auto (1 on a CPU, all on an "
                         "accelerator), all, or a number")
    ap.add_argument("--json", help="also write the figures to this file")
    return ap


def main(argv: list[str] | None = None) -> dict:
    """``python -m evojax_merge.bench [...]``: one benchmark's figures (also printed, and written by ``--json``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # the other benchmarks, under one command; imported only when asked for
    if argv[:1] == ["--sakana"]:
        from evojax_merge.bench.sakana import main as sakana

        return sakana(argv[1:])
    if argv[:1] == ["--vlm"]:
        from evojax_merge.bench.vlm import main as vlm

        return vlm(argv[1:])
    if argv[:1] == ["--dam"]:
        from evojax_merge.bench.dam import main as dam

        return dam(argv[1:])
    if argv[:1] == ["--stream-memory"]:
        from evojax_merge.bench.stream_memory import main as stream_memory

        return stream_memory(argv[1:])
    if argv[:1] == ["--memory"]:
        from evojax_merge.bench.memory import main as memory

        return memory(argv[1:])
    if argv[:1] == ["--plan-real"]:
        from evojax_merge.bench.plan_real import main as plan_real

        return plan_real(argv[1:])
    if argv[:1] == ["pool-train"]:
        from evojax_merge.bench.pool_train import main as pool_train

        return pool_train(argv[1:])
    args = parser().parse_args(argv)
    if args.plan:
        from evojax_merge.bench.plan import run_plan

        out = run_plan(args)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(out, fh, indent=2, default=str)
        return out
    from evojax_merge.bench.population import run

    return run(args)
