"""Benchmark: a whole PS / DFS population scored in one jitted call vs a per-candidate loop.

    python -m evojax_merge.bench --sakana [--population 16] [--repeats 3]

Two random sources of the Sakana world's shape (4 layers, hidden 64) and a validation batch of
32 x 32 tokens. "loop" is the same jitted single-candidate fitness called P times (compiled once,
as mergekit-evolve scores one candidate at a time); "batched" is the population fitness the CMA-ES
stage runs, with the method's default ``population_chunk`` (PS: auto, one candidate at a time inside
the call on a CPU; DFS: the whole population); "vmapped" is the whole population in one vmap. All
are timed after a warm-up call, the best of ``--repeats``, in one run. Prints the seconds and the
ratios loop / batched and loop / vmapped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evojax_merge.merge.sakana_dfs import DFSLayout, layer_row, top_level
from evojax_merge.merge.sakana_ps import PSLayout, task_vectors_of
from evojax_merge.models.config import ModelConfig
from evojax_merge.models.io import model_weights
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.models.sources import stack_models
from evojax_merge.perf import best_time
from evojax_merge.search.fitness import resolve_population_chunk
from evojax_merge.search.sakana import DFSConfig, DFSFitness, PSConfig, PSFitness

CFG = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16)


G0 = jnp.int32(0)


def _batch(b: int = 32, t: int = 32) -> dict:
    rng = np.random.default_rng(0)
    return {"input_ids": jnp.asarray(rng.integers(4, CFG.vocab_size, (b, t)), jnp.int32),
            "attention_mask": jnp.ones((b, t), jnp.int32),
            "answer_pos": jnp.full((b, 2), t - 3, jnp.int32).at[:, 1].set(t - 2),
            "answer_tgt": jnp.asarray(rng.integers(4, CFG.vocab_size, (b, 2)), jnp.int32),
            "answer_mask": jnp.ones((b, 2), bool)}


def bench(population: int = 16, repeats: int = 3) -> dict:
    stack = stack_models([LlamaForCausalLM(CFG, rngs=nnx.Rngs(s)) for s in (1, 2)], ["a", "b"])
    base = {k: jnp.asarray(v) for k, v in model_weights(LlamaForCausalLM(CFG, rngs=nnx.Rngs(0))).items()}
    batch = _batch()
    rng = np.random.default_rng(0)
    out = {"population": population, "device": str(jax.devices()[0]), "batch_tokens": 32 * 32}

    ps_layout = PSLayout(2, CFG.num_hidden_layers)
    chunks = {"ps": resolve_population_chunk(PSConfig().population_chunk),
              "dfs": resolve_population_chunk(DFSConfig().population_chunk)}
    out["population_chunk"] = chunks
    ps = PSFitness(ps_layout, CFG, chunks["ps"])
    ps_args = {"base": base, "tv": task_vectors_of(stack, base), "key": jax.random.key_data(jax.random.key(0)),
               "batch": batch}
    dfs_layout = DFSLayout(2, CFG.num_hidden_layers, repeats=3)
    dfs = DFSFitness(dfs_layout, CFG, chunks["dfs"])
    dfs_args = {"top": top_level(stack, 0), "layers": layer_row(stack), "batch": batch}
    for name, fit, args, length in (("ps", ps, ps_args, ps_layout.length), ("dfs", dfs, dfs_args, dfs_layout.length)):
        pop = jnp.asarray(rng.uniform(0.1, 1.0, (population, length)), jnp.float32)
        batched = jax.jit(fit)
        vmapped = jax.jit(dataclasses.replace(fit, chunk=None))

        def one_call(f=batched, a=args, x=pop, g0=G0):
            return f(a, x, g0)

        def one_vmap(f=vmapped, a=args, x=pop, g0=G0):
            return f(a, x, g0)

        def loop(f=batched, a=args, x=pop, g0=G0):
            return [f(a, x[i:i + 1], g0) for i in range(population)]

        t_batched, t_vmap, t_loop = (best_time(f, repeats).wall_s for f in (one_call, one_vmap, loop))
        check = np.asarray(batched(args, pop, G0))
        single = np.concatenate([np.asarray(batched(args, pop[i:i + 1], G0)) for i in range(population)])
        out[name] = {"batched_s": t_batched, "vmapped_s": t_vmap, "loop_s": t_loop,
                     "ratio_loop_over_batched": t_loop / t_batched, "ratio_loop_over_vmapped": t_loop / t_vmap,
                     "max_abs_diff": float(np.abs(check - single).max())}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    res = bench(a.population, a.repeats)
    print(f"device {res['device']}")
    for name in ("ps", "dfs"):
        r = res[name]
        chunk = res["population_chunk"][name] or "whole population"
        print(f"{name}: population {res['population']} (chunk: {chunk}): one call {r['batched_s']:.3f}s, "
              f"whole-population vmap {r['vmapped_s']:.3f}s, loop {r['loop_s']:.3f}s; "
              f"loop / one call {r['ratio_loop_over_batched']:.2f}x, "
              f"loop / vmap {r['ratio_loop_over_vmapped']:.2f}x (max |diff| {r['max_abs_diff']:.2e})")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
