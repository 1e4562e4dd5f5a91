"""The population benchmark: seconds per candidate of the batched population call against the alternatives.

    python -m evojax_merge.bench                      # the default shapes of issue 3
    python -m evojax_merge.bench --adapters 20 --no-scaling --json bench.json

On identical shapes, in one run, it times:
  (a) the batched population call (merge + forward + loss for all P candidates in one jit call);
  (b) a Python loop over single-candidate jitted calls;
  (c) the PyTorch/PEFT path of the reference implementation: per candidate, sparsify and merge on
      the host, load the merged state into a PeftModel, run the forward and the loss.
It prints seconds per candidate, the ratios (c)/(a) and (b)/(a), the merge's share of (a), and a
scaling table of (a) over the pool size N and the population size P.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.lora.adapter import LoraStack, module_path
from evojax_merge.merge import evo_merge
from evojax_merge.models.config import ModelConfig
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.perf import best_time, matmul_peak
from evojax_merge.search.fitness import MergeEvaluator, ValidationConfig, population_ce, resolve_population_chunk


def random_stack(cfg: ModelConfig, n: int, rank: int, seed: int = 0, dtype: str = "float32") -> LoraStack:
    """N random adapters on all 7 projections (B non-zero, so every adapter matters), in ``dtype``."""
    rng = np.random.default_rng(seed)
    A, B = {}, {}
    for layer in range(cfg.num_hidden_layers):
        for proj, (d_out, d_in) in cfg.module_shapes().items():
            m = module_path(layer, proj)
            A[m] = jnp.asarray(rng.normal(0, 1 / np.sqrt(d_in), (n, rank, d_in)).astype(np.float32), dtype)
            B[m] = jnp.asarray(rng.normal(0, 0.02, (n, d_out, rank)).astype(np.float32), dtype)
    return LoraStack(A=A, B=B, scale=jnp.full((n,), 2.0, jnp.float32))


def random_examples(cfg: ModelConfig, batch: int, seq: int, seed: int = 0,
                    answer_tokens: int | None = None) -> dict[str, np.ndarray]:
    """Random token rows; the loss on the last ``answer_tokens`` predictions (default: half)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, (batch, seq)).astype(np.int32)
    labels = ids.copy()
    labels[:, : seq - (seq // 2 if answer_tokens is None else answer_tokens)] = -100  # answer-only loss
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels}


def random_genomes(n: int, p: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    alpha = rng.uniform(0.2, 1.0, (p, n)).astype(np.float32)
    beta = rng.uniform(-1.5, 1.5, (p, n)).astype(np.float32) / n
    return alpha, beta


def build(cfg: ModelConfig, n: int, rank: int, batch: int, seq: int, chunk: int | str | None = "auto", *,
          examples: int | None = None, answer_tokens: int | None = None, num_batches: int = 1,
          pool_dtype: str = "float32") -> tuple[LlamaForCausalLM, LoraStack, MergeEvaluator]:
    """Random weights of these shapes and an evaluator over ``num_batches`` batches of ``batch``."""
    from flax import nnx

    model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
    stack = random_stack(cfg, n, rank, dtype=pool_dtype)
    data = random_examples(cfg, examples or batch * num_batches, seq, answer_tokens=answer_tokens)
    evaluator = MergeEvaluator(model, stack, data, ValidationConfig(batch_size=batch, num_batches=num_batches),
                               population_chunk=chunk)
    return model, stack, evaluator


def time_batched(evaluator: MergeEvaluator, alpha, beta, repeats: int) -> float:
    return best_time(lambda: evaluator.evaluate(alpha, beta), repeats).wall_s / alpha.shape[0]


def time_loop(evaluator: MergeEvaluator, alpha, beta, repeats: int) -> float:
    def loop():
        return [evaluator.evaluate(alpha[i : i + 1], beta[i : i + 1]) for i in range(alpha.shape[0])]

    return best_time(loop, repeats).wall_s / alpha.shape[0]


def time_merge_only(stack: LoraStack, evaluator: MergeEvaluator, alpha, beta, repeats: int) -> float:
    merge = jax.jit(jax.vmap(lambda a, b: evo_merge(stack, evaluator.magnitudes, a, b, prune="A")))
    a, b = jnp.asarray(alpha), jnp.asarray(beta)
    return best_time(lambda: merge(a, b), repeats).wall_s / alpha.shape[0]


def batched_flops(evaluator: MergeEvaluator, alpha, beta) -> float:
    """XLA's FLOP count of one batched population call (its cost analysis of the compiled program).

    Counted on the whole-population vmap of the same math: XLA's cost analysis counts a loop body
    once, so the ``lax.map`` of a chunked call would be undercounted by the population size."""
    whole = dataclasses.replace(evaluator.ce_fn, chunk=None)
    compiled = population_ce.lower(whole, evaluator.ce_args, jnp.asarray(alpha), jnp.asarray(beta),
                                   jnp.asarray(evaluator.batch_index(0))).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0))


def time_torch_peft(model: LlamaForCausalLM, stack: LoraStack, examples, alpha, beta, repeats: int) -> float:
    """The reference path: host-side sparsify + merge per candidate, PeftModel forward + loss."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM

    from evojax_merge.models.io import model_weights

    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = model.config
    hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg.to_hf_dict()))
    hf.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in model_weights(model).items()}, strict=False)
    rank = stack.rank
    peft_model = get_peft_model(hf, LoraConfig(r=rank, lora_alpha=float(stack.scale[0]) * rank,
                                               target_modules=list(cfg.module_shapes()))).eval()
    pool_a = {m: torch.from_numpy(np.asarray(a)) for m, a in stack.A.items()}
    pool_b = {m: torch.from_numpy(np.asarray(b)) for m, b in stack.B.items()}
    ids = torch.from_numpy(examples["input_ids"]).long()
    mask = torch.from_numpy(examples["attention_mask"]).long()
    labels = torch.from_numpy(examples["labels"]).long()

    def sparsify(a: torch.Tensor, keep: float) -> torch.Tensor:
        # as the reference: sort the magnitudes of this tensor, threshold at the k-th largest
        k = max(1, round(keep * a.numel()))
        thr = torch.sort(a.abs().flatten(), descending=True).values[k - 1]
        return torch.where(a.abs() >= thr, a, torch.zeros_like(a))

    def one_candidate(al: np.ndarray, be: np.ndarray) -> float:
        state = {}
        for m in pool_a:
            a_merged = sum(float(be[i]) * sparsify(pool_a[m][i], float(al[i])) for i in range(len(al)))
            b_merged = torch.einsum("n,nor->or", torch.from_numpy(be), pool_b[m])
            state[f"base_model.model.model.{m}.lora_A.weight"] = a_merged
            state[f"base_model.model.model.{m}.lora_B.weight"] = b_merged
        set_peft_model_state_dict(peft_model, state)
        with torch.no_grad():
            return float(peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss)

    def run():
        return [one_candidate(alpha[i], beta[i]) for i in range(alpha.shape[0])]

    return best_time(run, repeats).wall_s / alpha.shape[0]


def scaling_table(cfg: ModelConfig, rank: int, batch: int, seq: int, sizes: list[int], pops: list[int],
                  repeats: int, chunk: int | None) -> dict[int, dict[int, float]]:
    table: dict[int, dict[int, float]] = {}
    for n in sizes:
        _, _, evaluator = build(cfg, n, rank, batch, seq, chunk)
        table[n] = {}
        for p in pops:
            alpha, beta = random_genomes(n, p)
            table[n][p] = time_batched(evaluator, alpha, beta, repeats)
    return table


def run(args: argparse.Namespace) -> dict:
    """The benchmark for the parsed flags of ``python -m evojax_merge.bench`` (:func:`.cli.parser`)."""
    for name, default in (("adapters", 100), ("rank", 8), ("population", 20), ("batch", 16), ("seq", 128),
                          ("dtype", "float32")):
        if getattr(args, name) is None:
            setattr(args, name, default)
    chunk_arg = args.population_chunk
    args.population_chunk = None if chunk_arg == "all" else chunk_arg if chunk_arg == "auto" else int(chunk_arg)
    chunk = resolve_population_chunk(args.population_chunk)

    cfg = ModelConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, head_dim=args.hidden // args.heads, dtype=args.dtype)
    print(f"device: {jax.devices()[0].device_kind} x{len(jax.devices())}  backend: {jax.default_backend()}")
    print(f"model: hidden {args.hidden}, {args.layers} layers, {args.heads} heads / {args.kv_heads} KV, "
          f"intermediate {args.intermediate}, vocab {args.vocab}, {args.dtype}")
    print(f"population chunk inside the batched call: {chunk_arg} -> {chunk or 'whole population'}")
    print(f"pool: N={args.adapters} adapters, r={args.rank}, 7 projections; P={args.population}; "
          f"batch {args.batch} x {args.seq} tokens")
    model, stack, evaluator = build(cfg, args.adapters, args.rank, args.batch, args.seq, args.population_chunk)
    alpha, beta = random_genomes(args.adapters, args.population)
    out: dict = {"config": vars(args)}
    out["a_batched"] = time_batched(evaluator, alpha, beta, args.repeats)
    out["b_loop"] = time_loop(evaluator, alpha, beta, args.repeats)
    out["merge_only"] = time_merge_only(stack, evaluator, alpha, beta, args.repeats)
    out["a_flops_per_call"] = batched_flops(evaluator, alpha, beta)
    out["a_gflops"] = out["a_flops_per_call"] / (out["a_batched"] * args.population) / 1e9
    out["matmul_peak_gflops"] = matmul_peak() / 1e9
    if not args.no_torch:
        examples = random_examples(cfg, args.batch, args.seq)
        out["c_torch_peft"] = time_torch_peft(model, stack, examples, alpha, beta, args.repeats)

    print("\nseconds per candidate")
    print(f"  (a) batched population call   {out['a_batched']:.4f}")
    print(f"  (b) loop of jitted calls      {out['b_loop']:.4f}")
    if "c_torch_peft" in out:
        print(f"  (c) PyTorch/PEFT reference    {out['c_torch_peft']:.4f}")
    print("ratios")
    if "c_torch_peft" in out:
        out["ratio_c_over_a"] = out["c_torch_peft"] / out["a_batched"]
        print(f"  (c)/(a) = {out['ratio_c_over_a']:.2f}")
    out["ratio_b_over_a"] = out["b_loop"] / out["a_batched"]
    out["merge_share_of_a"] = out["merge_only"] / out["a_batched"]
    print(f"  (b)/(a) = {out['ratio_b_over_a']:.2f}")
    print(f"  merge share of (a) = {100 * out['merge_share_of_a']:.1f}%  (merge alone {out['merge_only']:.5f} s/cand)")
    out["a_share_of_peak"] = out["a_gflops"] / out["matmul_peak_gflops"]
    print("throughput (XLA cost analysis of (a), measured f32 GEMM peak of this machine, same run)")
    print(f"  (a) {out['a_gflops']:.1f} GFLOP/s of {out['matmul_peak_gflops']:.1f} GFLOP/s peak "
          f"= {100 * out['a_share_of_peak']:.0f}%  ({out['a_flops_per_call'] / 1e9:.2f} GFLOP per call)")

    if not args.no_scaling:
        table = scaling_table(cfg, args.rank, args.batch, args.seq, args.scaling_adapters,
                              args.scaling_population, args.repeats, args.population_chunk)
        out["scaling"] = {str(n): {str(p): t for p, t in row.items()} for n, row in table.items()}
        pops = args.scaling_population
        print("\n(a) seconds per candidate over pool size N (rows) and population P (columns)")
        print("  N \\ P " + "".join(f"{p:>10d}" for p in pops))
        for n, row in table.items():
            print(f"  {n:>5d} " + "".join(f"{row[p]:>10.4f}" for p in pops))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out

