"""The compile-time plan of the real experiment at the paper's budget (``conf/experiment/real_ood.yaml`` with
``experiments/real/run.py --profile gpu``) on one GPU: does it fit?

    python -m evojax_merge.bench --plan-real llama-3.1-8b            # or qwen2.5-7b, or a config.json
    python -m evojax_merge.bench --plan-real bench-tiny --check-host  # tiny shapes, measured here

Three programs hold the device in turn (never together; the base weights are shared):

- the population call (:mod:`evojax_merge.bench.plan`): P = 20 candidates merged from the pool minus the
  target's adapter (8 adapters), on the validation batches (3 of 15 records: the 50-record split), rows of the
  longest 3-shot bucket (1536 tokens: NYT's rows reach 1124, CASIE's 1448), 160 answer positions;
- a white-box grid point: the base and one merged copy of the weights, plus one module's merge
  (``bench --stream-memory``: at most 2.6 GiB for the 8B shapes and 100 adapters; 8 here);
- test generation (``experiment.test_batch_size``): one candidate, ``--test-rows`` prompts of the bucket
  length, ``--new-tokens`` new tokens, a KV cache, prefill logits at the last token only, compiled for abstract
  inputs: XLA's buffer assignment.

The verdict: the largest of the three within one 80 GB device. On a CPU the buffer assignment is the CPU
compiler's (an estimate of a GPU's; bf16 dots may be widened to f32 here, an overestimate). ``--check-host``
runs the tiny shapes' generation for real here and compares the peak RSS growth with the plan.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp

from evojax_merge.bench.plan import DEVICE_BYTES, NAMED_SHAPES, Workload, abstract_model, gib, make_plan, resolve_model

NAMED_SHAPES.setdefault("qwen2.5-7b", {
    "model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "head_dim": 128,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
})

# The real experiment's GPU profile (experiments/real/run.py): the pool minus the target's adapter, P 20,
# 3 batches of 15 validation records, 3-shot rows up to the 1536 bucket, 160 answer positions.
REAL_GPU = Workload(adapters=8, rank=8, population=20, examples=45, seq=1536, batch=15, answer_tokens=160)


def generation_memory(cfg, rows: int, length: int, new_tokens: int) -> dict:
    """XLA's buffer assignment of one test-generation call (``eval.evaluate._generate_rows``): abstract inputs."""
    from flax import nnx

    from evojax_merge.eval.generate import greedy_generate
    from evojax_merge.lora.adapter import LoraAdapter
    from evojax_merge.lora.adapter import module_path as mp

    graphdef, params = abstract_model(cfg)
    dt = jnp.dtype(cfg.dtype)
    a, b = {}, {}
    for layer in range(cfg.num_hidden_layers):
        for proj, (d_out, d_in) in cfg.module_shapes().items():
            a[mp(layer, proj)] = jax.ShapeDtypeStruct((8, d_in), dt)
            b[mp(layer, proj)] = jax.ShapeDtypeStruct((d_out, 8), dt)
    adapter = LoraAdapter(A=a, B=b, scale=jax.ShapeDtypeStruct((), jnp.float32))

    def gen(params, adapter, ids, lengths):
        return greedy_generate(nnx.merge(graphdef, params), ids, lengths, new_tokens, 0, 0, adapter, last_only=True)

    t0 = time.perf_counter()
    compiled = jax.jit(gen).lower(params, adapter, jax.ShapeDtypeStruct((rows, length), jnp.int32),
                                  jax.ShapeDtypeStruct((rows,), jnp.int32)).compile()
    m = compiled.memory_analysis()
    out = {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
           "temp_bytes": int(m.temp_size_in_bytes), "alias_bytes": int(m.alias_size_in_bytes),
           "compile_s": time.perf_counter() - t0}
    out["total_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    kv_dim = cfg.num_key_value_heads * cfg.head_dim
    out["kv_cache_bytes"] = cfg.num_hidden_layers * 2 * rows * (length + new_tokens) * kv_dim * dt.itemsize
    return out


def plan_real(model: str, workload: Workload = REAL_GPU, test_rows: int = 8, new_tokens: int = 64,
              chunks: tuple[int, ...] = (1, 4, 20), device_bytes: float = DEVICE_BYTES, log=print) -> dict:
    """The three programs' memory and the verdict (see the module docstring)."""
    cfg = resolve_model(model, dtype=workload.dtype)
    out = {"model": model, "population": make_plan(cfg, workload, chunks=chunks, device_bytes=device_bytes, log=log)}
    weights = out["population"]["weights_bytes"]
    pool = out["population"]["pool_bytes"]
    gen = generation_memory(cfg, test_rows, workload.seq, new_tokens)
    out["generation"] = gen
    out["grid_point_bytes"] = 2 * weights + pool  # the base, one merged copy, the pool (+ one module's merge)
    log(f"test generation ({test_rows} rows x {workload.seq} tokens + {new_tokens} new, one candidate): "
        f"arguments {gib(gen['argument_bytes'])}, temporaries {gib(gen['temp_bytes'])}, total "
        f"{gib(gen['total_bytes'])} (KV cache {gib(gen['kv_cache_bytes'])}); compiled in {gen['compile_s']:.1f} s")
    log(f"white-box grid point: base + merged weights + pool = {gib(out['grid_point_bytes'])} "
        "(+ one module's merge, bench --stream-memory)")
    return verdict(out, device_bytes, test_rows, log)


def verdict(out: dict, device_bytes: float = DEVICE_BYTES, test_rows: int | None = None, log=print) -> dict:
    """The peak of the three programs against ``device_bytes``. A CPU has no bf16 GEMM: its compiler keeps an
    f32 copy of bf16 weights (2 x their bytes) in each program that reads them in its own loop: once in the
    population call (``bench.plan``'s note), twice in generation (prefill, and the decode loop). A GPU computes
    in bf16, so on a CPU with bf16 weights the GPU figure is the CPU's less those copies (``*_gpu_bytes``)."""
    pop = out["population"]
    widened = 2 * pop["weights_bytes"] if jax.default_backend() == "cpu" and pop["workload"]["dtype"] == "bfloat16" \
        else 0
    best = pop["largest_fitting_chunk"] or min(pop["chunks"])
    gen = out["generation"]
    out["population_gpu_bytes"] = pop["chunks"][best]["total_bytes"] - widened
    out["generation_gpu_bytes"] = gen["total_bytes"] - 2 * widened
    out["cpu_f32_weight_copy_bytes"] = widened
    peak = max(out["population_gpu_bytes"], out["generation_gpu_bytes"], out["grid_point_bytes"])
    out["peak_bytes"], out["fits"] = peak, peak <= device_bytes
    if widened:
        log(f"less this CPU's f32 copies of the bf16 weights ({gib(widened)} each; one in the population call, two "
            f"in generation): population {gib(out['population_gpu_bytes'])}, generation "
            f"{gib(out['generation_gpu_bytes'])}")
    rows = f", test_batch_size={test_rows}" if test_rows else ""
    if out["fits"]:
        log(f"verdict: the real experiment at the paper's budget fits one {device_bytes / 1e9:.0f} GB GPU: peak "
            f"{gib(peak)} (population_chunk={best}{rows})")
    else:
        log(f"verdict: does NOT fit one {device_bytes / 1e9:.0f} GB GPU (peak {gib(peak)}): lower "
            "experiment.test_batch_size or population_chunk, or shard the base (evojax_merge.sharding)")
    return out


def check_generation_on_host(rows: int = 4, length: int = 128, new_tokens: int = 16, log=print) -> dict:
    """bench-tiny's generation compiled (the plan) and run here: the measured growth of the peak RSS."""
    import resource

    import numpy as np
    from flax import nnx

    from evojax_merge.bench.population import random_stack
    from evojax_merge.eval.evaluate import _generate_rows
    from evojax_merge.models.llama import LlamaForCausalLM

    cfg = resolve_model("bench-tiny", dtype="float32")
    planned = generation_memory(cfg, rows, length, new_tokens)
    model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
    adapter = random_stack(cfg, 1, 8).adapter(0)
    ids = jnp.asarray(np.random.default_rng(0).integers(1, cfg.vocab_size, (rows, length)), jnp.int32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    np.asarray(_generate_rows(model, adapter, ids, jnp.full((rows,), length, jnp.int32), max_new_tokens=new_tokens,
                              eos_id=-1, pad_id=0))
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    log(f"host check (bench-tiny, {rows} x {length} + {new_tokens}): planned temporaries "
        f"{planned['temp_bytes'] / 2**20:.1f} MiB, total {planned['total_bytes'] / 2**20:.1f} MiB; "
        f"peak RSS grew {grown / 2**20:.1f} MiB running it (compiler and runtime included)")
    return {"planned": planned, "rss_growth_bytes": grown}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m evojax_merge.bench --plan-real", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="llama-3.1-8b")
    ap.add_argument("--test-rows", type=int, default=8, help="experiment.test_batch_size (the gpu profile: 8)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--seq", type=int, default=REAL_GPU.seq)
    ap.add_argument("--examples", type=int, default=REAL_GPU.examples)
    ap.add_argument("--answer-tokens", type=int, default=REAL_GPU.answer_tokens)
    ap.add_argument("--plan-chunks", type=int, nargs="+", default=[1, 4, 20])
    ap.add_argument("--check-host", action="store_true", help="also run bench-tiny's generation here")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    w = dataclasses.replace(REAL_GPU, seq=args.seq, examples=args.examples, answer_tokens=args.answer_tokens)
    if args.model == "bench-tiny":
        w = dataclasses.replace(w, dtype="float32", pool_dtype="float32")
    out = plan_real(args.model, w, args.test_rows, args.new_tokens, tuple(args.plan_chunks))
    if args.check_host:
        out["host_check"] = check_generation_on_host()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2, default=str)
    return out
