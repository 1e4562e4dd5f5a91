"""GPU benchmark of the population call at real shapes, with random weights (no download).

    python experiments/gpu_bench.py                       # llama-3.2-1b and llama-3.1-8b, the paper's workload
    python experiments/gpu_bench.py --models llama-3.1-8b --chunk 4 --population 20
    sbatch --gres=gpu:1 --wrap "python experiments/gpu_bench.py --json gpu_bench.json"

For each model: the base in bf16 and 100 rank-8 adapters on all 7 projections in bf16, drawn on
the device (``jax.random``; nothing on the host), 300 validation examples of 512 tokens in 20
batches of 15, P = 20 candidates. It times the batched population call (one warm-up/compile call,
then the best of ``--repeats``) and prints seconds per generation and the MFU:

    MFU = analytic FLOPs per generation (evojax_merge.bench.plan.analytic_flops) / seconds / peak

``--peak`` is the device's dense bf16 FLOP/s (H100 SXM: 989.4e12). Before a long run, the plan
(``python -m evojax_merge.bench --plan llama-3.1-8b``) says which ``--chunk`` fits the device.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evojax_merge.bench.plan import H100_PEAK_BF16, Workload, analytic_flops, resolve_model
from evojax_merge.bench.population import random_examples
from evojax_merge.lora.adapter import LoraStack, module_path
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.search.fitness import MergeEvaluator, ValidationConfig


def device_stack(cfg, n: int, rank: int, dtype, seed: int = 0) -> LoraStack:
    """N random adapters drawn on the device, in ``dtype`` (B non-zero: every adapter matters)."""
    key = jax.random.key(seed)
    A, B = {}, {}
    for layer in range(cfg.num_hidden_layers):
        for proj, (d_out, d_in) in cfg.module_shapes().items():
            key, ka, kb = jax.random.split(key, 3)
            m = module_path(layer, proj)
            A[m] = (jax.random.normal(ka, (n, rank, d_in), dtype) / np.sqrt(d_in)).astype(dtype)
            B[m] = (0.02 * jax.random.normal(kb, (n, d_out, rank), dtype)).astype(dtype)
    return LoraStack(A=A, B=B, scale=jnp.full((n,), 2.0, jnp.float32))


def bench_model(name: str, w: Workload, chunk: int | None, repeats: int, peak: float) -> dict:
    cfg = dataclasses.replace(resolve_model(name, dtype=w.dtype), dtype=w.dtype)
    t0 = time.perf_counter()
    model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
    stack = device_stack(cfg, w.adapters, w.rank, jnp.dtype(w.pool_dtype))
    examples = random_examples(cfg, w.examples, w.seq, answer_tokens=w.answer_tokens)
    evaluator = MergeEvaluator(model, stack, examples, ValidationConfig(batch_size=w.batch, num_batches=w.num_batches),
                               population_chunk=chunk)
    rng = np.random.default_rng(1)
    alpha = rng.uniform(0.2, 1.0, (w.population, w.adapters)).astype(np.float32)
    beta = (rng.uniform(-1.5, 1.5, (w.population, w.adapters)) / w.adapters).astype(np.float32)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    losses = evaluator.evaluate(alpha, beta)  # compile + first run
    first = time.perf_counter() - t0
    times = []
    for g in range(repeats):
        t0 = time.perf_counter()
        losses = evaluator.evaluate(alpha, beta, generation=g)
        times.append(time.perf_counter() - t0)
    best = min(times)
    flops = analytic_flops(cfg, w)
    out = {"model": name, "workload": dataclasses.asdict(w), "chunk": chunk, "setup_s": setup,
           "first_call_s": first, "seconds_per_generation": best, "all_s": times, "flops_per_generation": flops,
           "mfu": flops / best / peak, "finite": bool(np.isfinite(losses).all()),
           "device": f"{jax.devices()[0].device_kind} x{len(jax.devices())}"}
    print(f"{name}: {best:.2f} s / generation ({best / w.population:.3f} s / candidate), MFU {100 * out['mfu']:.1f}% "
          f"of {peak / 1e12:.0f} TFLOP/s; first call (compile) {first:.1f} s; setup {setup:.1f} s; "
          f"losses finite: {out['finite']}", flush=True)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["llama-3.2-1b", "llama-3.1-8b"])
    ap.add_argument("--chunk", type=int, default=4, help="population_chunk (0: the whole population at once)")
    ap.add_argument("--population", type=int, default=20)
    ap.add_argument("--adapters", type=int, default=100)
    ap.add_argument("--examples", type=int, default=300)
    ap.add_argument("--batch", type=int, default=15)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--answer-tokens", type=int, default=64)
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--peak", type=float, default=H100_PEAK_BF16, help="dense FLOP/s of the device")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    w = Workload(adapters=args.adapters, population=args.population, examples=args.examples, seq=args.seq,
                 batch=args.batch, answer_tokens=args.answer_tokens, dtype=args.dtype, pool_dtype=args.dtype)
    print(f"devices: {jax.devices()}", flush=True)
    results = [bench_model(m, w, args.chunk or None, args.repeats, args.peak) for m in args.models]
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
