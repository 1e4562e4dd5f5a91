"""Why the paper protocol is slow on a CPU: the population CE call on the IE world's shapes.

    python experiments/paper_speed/population_call.py [--seq 96] [--repeats 4]

One generation of the paper protocol: 20 candidates x 10 validation batches of 20 records, a pool of 15 rank-8
adapters on the IE world's Llama (hidden 96, 3 layers, vocabulary 448). Three variants timed interleaved in one
run (ratios, not absolute times, are what a shared machine can give): the default (float32, folded weights),
XLA:CPU's YNNPACK dots (``xla_cpu_experimental_ynn_fusion_type``), and bfloat16 weights. The FLOP rate is XLA's
count for one batch of one candidate times batches x candidates, against the measured float32 matmul peak.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evojax_merge.models.config import ModelConfig
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.perf import matmul_peak
from evojax_merge.pool.step import init_lora_stack
from evojax_merge.search.fitness import MergeEvaluator, ValidationConfig

POP, POOL, BATCHES, BATCH = 20, 15, 10, 20


def evaluator(dtype: str, seq: int) -> MergeEvaluator:
    cfg = ModelConfig(vocab_size=448, hidden_size=96, intermediate_size=264, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=24, dtype=dtype)
    model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
    stack = init_lora_stack(model, POOL, 8, 16.0, jax.random.PRNGKey(1))
    stack = stack.replace(B={m: jax.random.normal(jax.random.PRNGKey(2), b.shape) * 0.01 for m, b in stack.B.items()})
    rng = np.random.default_rng(0)
    n = BATCHES * BATCH
    ids = rng.integers(4, 448, (n, seq)).astype(np.int32)
    labels = np.full((n, seq), -100, np.int32)
    labels[:, seq - 12:seq - 2] = ids[:, seq - 12:seq - 2]
    examples = {"input_ids": ids, "attention_mask": np.ones((n, seq), np.int32), "labels": labels}
    return MergeEvaluator(model, stack, examples, ValidationConfig(batch_size=BATCH, num_batches=BATCHES))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    alpha = jnp.full((POP, POOL), 0.8, jnp.float32)
    beta = jnp.asarray(rng.normal(0, 0.3, (POP, POOL)), jnp.float32)
    ynn = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
    calls, flops = {}, None
    for name, dtype, options in (("float32", "float32", None), ("float32 + YNNPACK dots", "float32", ynn),
                                 ("bfloat16", "bfloat16", None)):
        ev = evaluator(dtype, args.seq)
        idx = jnp.asarray(ev.batch_index(0))
        fn = jax.jit(lambda a, b, i, ev=ev: ev.ce_fn(ev.ce_args, a, b, i), compiler_options=options)
        compiled = fn.lower(alpha, beta, idx).compile()
        if flops is None:  # XLA counts a loop body once: one batch of one candidate
            cost = compiled.cost_analysis()
            flops = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"] * BATCHES * POP
        calls[name] = (compiled, idx, np.asarray(compiled(alpha, beta, idx)))
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(args.repeats):
        for name, (compiled, idx, _) in calls.items():
            t0 = time.perf_counter()
            np.asarray(compiled(alpha, beta, idx))
            times[name].append(time.perf_counter() - t0)
    peak = matmul_peak()
    base = float(np.median(times["float32"]))
    ref = calls["float32"][2]
    print(f"population call: {POP} candidates x {BATCHES} batches of {BATCH} records x {args.seq} tokens, pool {POOL}; "
          f"{flops / 1e9:.0f} GFLOP (XLA); float32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    for name, (_, _, ce) in calls.items():
        t = float(np.median(times[name]))
        print(f"  {name:24s} {t:6.2f} s  {flops / t / 1e9:6.1f} GFLOP/s ({100 * flops / t / peak:4.0f}% of peak)  "
              f"{base / t:4.2f}x the default  max |dCE| {np.abs(ce - ref).max():.1e}")


if __name__ == "__main__":
    main()
