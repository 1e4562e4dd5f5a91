"""Streamed peak memory of the white-box merges at real model shapes, from XLA's buffer assignment.

    python -m evojax_merge.bench --stream-memory                              # Llama-3.1-8B, 100 adapters of rank 8
    python -m evojax_merge.bench --stream-memory --adapters 9 --methods ties emr --json mem.json

A white-box merge of a LoRA pool runs one jitted call per module (``Method.module_programs()``: the
functions of ``(A^m, B^m, scale)`` its run executes), one module after the other, each result folded
into the merged weights at once. So the merge's working set at any time is one call's: its
arguments (module m's factors of the N adapters, a slice of the pool that is held anyway), its
temporaries and its output. Each method is built from its conf/method/<name>.yaml exactly as a run
builds it; each of its programs is lowered and compiled for every distinct module shape of the model
with ``ShapeDtypeStruct`` arguments (nothing is allocated or run), and ``compiled.memory_analysis()``
gives the bytes XLA assigns. The stream's peak is the largest module's call. XLA's CPU backend
assigns the buffers here; a GPU's assignment can differ somewhat (fusion), not in kind.

For scale the output also gives, per model: the largest module's ``[N, d_out, d_in]`` float32 stack of
dense task vectors (what a merge over stacked task vectors holds for ONE module) and every module's
(what building all dense task vectors at once holds); and the merged update of the largest module.
The merged weights themselves (the base model's size, the same for every method) are not counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp

DEFAULT_METHODS = ("task_arithmetic", "ties", "dare", "dare_ties", "breadcrumbs", "della", "emr", "tsv_m")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m evojax_merge.bench --stream-memory", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.1-8b", help="a named shape of evojax_merge.bench.plan or a config.json")
    ap.add_argument("--adapters", type=int, default=100, help="N adapters merged (the runs pre-select 9)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--pool-dtype", choices=["float32", "bfloat16"], default="bfloat16", help="the factors' dtype")
    ap.add_argument("--out-dtype", choices=["float32", "bfloat16"], default="bfloat16",
                    help="the merged update's dtype (the base weights')")
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), help="conf/method/<name>.yaml names")
    ap.add_argument("--json", help="also write the figures to this file")
    return ap


def build_methods(names: list[str]) -> dict:
    """``{name: MergeMethod}`` from conf/method/<name>.yaml, composed and instantiated as a run does."""
    from hydra import compose, initialize_config_dir

    from evojax_merge.runner.build import build_methods as build
    from evojax_merge.runner.build import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=[f"method=[{','.join(names)}]"])
    return build(cfg)


def program_memory(fn, n: int, rank: int, d_out: int, d_in: int, pool_dtype, out_dtype) -> dict:
    """XLA's bytes for one module's call of ``fn(a [n, r, d_in], b [n, d_out, r], scale [n])``, the
    update cast to ``out_dtype`` in the call as a run does."""

    def call(a, b, scale):
        out = fn(a, b, scale)
        return jax.tree.map(lambda x: x.astype(out_dtype) if x.ndim == 2 else x, out)

    sds = jax.ShapeDtypeStruct
    compiled = jax.jit(call).lower(sds((n, rank, d_in), pool_dtype), sds((n, d_out, rank), pool_dtype),
                                   sds((n,), jnp.float32)).compile()
    mem = compiled.memory_analysis()
    args, temp, out = int(mem.argument_size_in_bytes), int(mem.temp_size_in_bytes), int(mem.output_size_in_bytes)
    return {"shape": [d_out, d_in], "arguments": args, "temp": temp, "output": out, "peak": args + temp + out}


def gib(x: float) -> str:
    return f"{x / 2**30:8.3f}"


def run(args: argparse.Namespace, log=print) -> dict:
    from evojax_merge.bench.plan import resolve_model

    cfg = resolve_model(args.model)
    shapes = sorted(set(cfg.module_shapes().values()))
    counts = {s: sum(1 for v in cfg.module_shapes().values() if v == s) * cfg.num_hidden_layers for s in shapes}
    n, r = args.adapters, args.rank
    pool_dtype, out_dtype = jnp.dtype(args.pool_dtype), jnp.dtype(args.out_dtype)
    biggest = max(shapes, key=lambda s: s[0] * s[1])
    numel = sum(d_out * d_in * c for (d_out, d_in), c in counts.items())
    reference = {
        "one_module_dense_stack_f32": n * biggest[0] * biggest[1] * 4,
        "all_dense_task_vectors_f32": n * numel * 4,
        "largest_module_update": biggest[0] * biggest[1] * out_dtype.itemsize,
        "pool_factors": n * r * sum((d_out + d_in) * c for (d_out, d_in), c in counts.items()) * pool_dtype.itemsize,
    }
    t0 = time.perf_counter()
    methods = build_methods(list(args.methods))
    results = {}
    for name, method in methods.items():
        if not hasattr(method, "module_programs"):
            raise SystemExit(f"--methods: {name} is not a streamed white-box merge (no module_programs)")
        per_program = {}
        for label, fn in method.module_programs().items():
            figures = [program_memory(fn, n, r, d_out, d_in, pool_dtype, out_dtype) for d_out, d_in in shapes]
            per_program[label] = {"worst": max(figures, key=lambda f: f["peak"]), "modules": figures}
        worst_label = max(per_program, key=lambda k: per_program[k]["worst"]["peak"])
        worst = per_program[worst_label]["worst"]
        results[name] = {"peak": worst["peak"], "program": worst_label, "worst_module": worst["shape"],
                         "temp": worst["temp"], "output": worst["output"], "arguments": worst["arguments"],
                         "programs": per_program}
    seconds = time.perf_counter() - t0
    out = {"model": args.model, "adapters": n, "rank": r, "pool_dtype": args.pool_dtype, "out_dtype": args.out_dtype,
           "module_shapes": {f"{d_out}x{d_in}": c for (d_out, d_in), c in counts.items()},
           "backend": jax.default_backend(), "reference": reference, "methods": results, "seconds": seconds}
    log(f"streamed merge memory at {args.model} shapes: N = {n} adapters of rank {r} ({args.pool_dtype} factors, "
        f"{args.out_dtype} updates), {len(shapes)} module shapes x {cfg.num_hidden_layers} layers, "
        f"XLA {jax.default_backend()} buffer assignment, {seconds:.1f} s")
    log(f"{'method':<16} {'program':<14} {'worst module':<13} {'temp GiB':>8} {'out GiB':>8} {'args GiB':>8} "
        f"{'peak GiB':>8} {'x update':>8}")
    for name, res in results.items():
        log(f"{name:<16} {res['program']:<14} {'x'.join(map(str, res['worst_module'])):<13} {gib(res['temp'])} "
            f"{gib(res['output'])} {gib(res['arguments'])} {gib(res['peak'])} "
            f"{res['peak'] / reference['largest_module_update']:8.1f}")
    log(f"for scale: one module's dense task-vector stack [N, {biggest[0]}, {biggest[1]}] f32 "
        f"{gib(reference['one_module_dense_stack_f32']).strip()} GiB; every module's "
        f"{gib(reference['all_dense_task_vectors_f32']).strip()} GiB; the pool's factors "
        f"{gib(reference['pool_factors']).strip()} GiB; the largest module's update "
        f"{gib(reference['largest_module_update']).strip()} GiB")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


def main(argv: list[str] | None = None) -> dict:
    """``python -m evojax_merge.bench --stream-memory [...]``: the figures (also printed, and written by ``--json``)."""
    args = parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    return run(args)


if __name__ == "__main__":
    main()
