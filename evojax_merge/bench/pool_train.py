"""Benchmark of the LoRA-pool trainer's step against torch + PEFT training the same adapters one after another.

    python -m evojax_merge.bench pool-train                    # 4 adapters, r 8, batch 8 x 128, a small Llama
    python -m evojax_merge.bench pool-train --adapters 8 --json bench_pool.json

One training step of N adapters, each on its own batch of B rows of T tokens (the last ``--answer``
tokens of each row scored): answer-only loss, backward, clipping, AdamW. Timed in one run, on one
random base saved as a transformers directory and loaded by both sides:

  (a) this project's jitted step (:func:`evojax_merge.pool.trainer.make_step`), all N adapters vmapped;
  (b) the same step for one adapter, run N times (what ``--chunk 1`` costs);
  (c) torch + PEFT: N ``PeftModel``s (r, α, the seven projections, dropout 0), each one step of forward,
      backward, ``clip_grad_norm_`` and ``torch.optim.AdamW``, one after another; timed with 1 thread and
      with torch's default, and the faster one kept (on a shared machine OpenMP's spinning threads can
      make the default 10x slower).

Tokens/s count every token of the N·B·T processed; GFLOP/s use XLA's FLOP count of (a) for all rows (the
same arithmetic for (b) and (c)), against :func:`evojax_merge.perf.matmul_peak` (a square f32 GEMM).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.perf import Timing, best_time, matmul_peak


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m evojax_merge.bench pool-train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--answer", type=int, default=16, help="scored tokens at the end of each row")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=688)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the figures to this file")
    return ap


def _batch(n: int, b: int, t: int, k: int, vocab: int) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(0).integers(0, vocab, (n, b, t)).astype(np.int32)
    pos = np.broadcast_to(np.arange(t - k - 1, t - 1, dtype=np.int32), (n, b, k)).copy()
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "answer_pos": pos,
            "answer_tgt": np.take_along_axis(ids, pos + 1, axis=2), "answer_mask": np.ones((n, b, k), bool)}


def _jax_step(model, cfg, n: int, batch: dict[str, np.ndarray]):
    """``(call, flops)``: one timed step of ``n`` adapters on ``batch[:n]`` and XLA's FLOP count of it."""
    from evojax_merge.pool.step import init_lora_stack, init_pool_opt_state
    from evojax_merge.pool.trainer import make_step

    step, params, make_opt = make_step(model, cfg)
    stack = init_lora_stack(model, n, cfg.rank, cfg.alpha, jax.random.key(0), cfg.projections, init="shared")
    trainable = {"A": stack.A, "B": stack.B}
    state = init_pool_opt_state(make_opt, trainable)
    dev = {k: jnp.asarray(v[:n]) for k, v in batch.items()}
    total, active = jnp.full((n,), 100, jnp.int32), jnp.ones((n,), bool)
    args = (params, trainable, state, stack.scale, dev, total, total * 0, active)
    cost = step.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return (lambda: step(*args)[2]), float(cost.get("flops", 0.0))


def _torch_steps(model_dir: Path, cfg, batch: dict[str, np.ndarray], repeats: int) -> tuple[float, float]:
    """(best wall s, best CPU s) of N torch + PEFT steps, one adapter after another."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    n = batch["input_ids"].shape[0]
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=list(cfg.projections), lora_dropout=0.0)
    runs = []
    for i in range(n):
        peft_model = get_peft_model(copy.deepcopy(base), lora).train()
        params = [p for p in peft_model.parameters() if p.requires_grad]
        ids = torch.from_numpy(batch["input_ids"][i].astype(np.int64))
        labels = torch.full_like(ids, -100)
        rows = torch.arange(ids.shape[0])[:, None]
        labels[rows, torch.from_numpy(batch["answer_pos"][i] + 1).long()] = torch.from_numpy(
            batch["answer_tgt"][i].astype(np.int64))
        runs.append((peft_model, params, torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
                     ids, torch.ones_like(ids), labels))

    def one(peft_model, params, opt, ids, mask, labels) -> None:
        peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for r in runs:  # warm-up
        one(*r)
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        for r in runs:
            one(*r)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def run(args: argparse.Namespace) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from evojax_merge.models.io import load_model, model_weights
    from evojax_merge.pool.trainer import PoolConfig

    cfg = PoolConfig(rank=args.rank, batch_size=args.batch)
    n, b, t, k = args.adapters, args.batch, args.seq, args.answer
    batch = _batch(n, b, t, k, args.vocab)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        hf_cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                             num_hidden_layers=args.layers, num_attention_heads=args.heads,
                             num_key_value_heads=args.kv_heads, max_position_embeddings=max(2 * t, 256))
        LlamaForCausalLM(hf_cfg).save_pretrained(tmp)
        model = load_model(tmp)
        params_m = sum(int(np.prod(v.shape)) for v in model_weights(model).values()) / 1e6
        peak = matmul_peak()
        call_n, flops_n = _jax_step(model, cfg, n, batch)
        vmapped = best_time(call_n, args.repeats)
        call_1, _ = _jax_step(model, cfg, 1, batch)
        single = best_time(call_1, args.repeats)
        one_by_one = Timing(single.wall_s * n, single.cpu_s * n)
        default_threads = torch.get_num_threads()
        by_threads = {}
        for threads in sorted({1, default_threads}):  # torch's OpenMP pool suffers most from a busy machine
            torch.set_num_threads(threads)
            by_threads[threads] = _torch_steps(Path(tmp), cfg, batch, args.repeats)
        torch.set_num_threads(default_threads)
        torch_threads = min(by_threads, key=lambda th: by_threads[th][0])
        torch_wall, torch_cpu = by_threads[torch_threads]
    tokens = n * b * t
    rows = {"jax_vmapped": vmapped, "jax_one_at_a_time": one_by_one, "torch_peft_one_at_a_time":
            Timing(torch_wall, torch_cpu)}
    out = {"adapters": n, "rank": args.rank, "batch": b, "seq": t, "answer_tokens": k, "model_params_m": params_m,
           "cpu_threads": os.cpu_count(), "torch_threads": torch_threads,
           "torch_wall_s_by_threads": {th: v[0] for th, v in by_threads.items()}, "matmul_peak_gflops": peak / 1e9,
           "step_gflop": flops_n / 1e9, "tokens_per_step": tokens, "rows": {}}
    print(f"pool-train: {n} adapters (r {args.rank}, all 7 projections), each a batch of {b} x {t} tokens "
          f"({k} scored); Llama h {args.hidden}, {args.layers} layers, vocab {args.vocab} ({params_m:.1f}M params); "
          f"{os.cpu_count()} CPUs; torch at its faster thread count, {torch_threads} "
          f"({', '.join(f'{th}: {v[0] * 1e3:.0f} ms' for th, v in by_threads.items())})")
    print(f"  measured f32 matmul peak {peak / 1e9:.1f} GFLOP/s; one step of all {n} = {flops_n / 1e9:.2f} GFLOP "
          "(XLA's count)")
    for name, timing in rows.items():
        tps, gflops = tokens / timing.wall_s, flops_n / timing.wall_s / 1e9
        out["rows"][name] = {"wall_s": timing.wall_s, "cpu_s": timing.cpu_s, "tokens_per_s": tps,
                             "gflops": gflops, "of_peak": gflops * 1e9 / peak}
        print(f"  {name:<26} {timing.wall_s * 1e3:9.1f} ms / {n} adapter steps  {tps:10,.0f} tokens/s  "
              f"{gflops:7.2f} GFLOP/s ({100 * gflops * 1e9 / peak:4.1f}% of peak)  CPU {timing.cpu_s * 1e3:.0f} ms")
    out["speedup_vs_torch"] = torch_wall / vmapped.wall_s
    out["speedup_vs_torch_cpu"] = torch_cpu / vmapped.cpu_s
    out["vmap_gain"] = one_by_one.wall_s / vmapped.wall_s
    print(f"  jax vmapped vs torch+PEFT one after another: {out['speedup_vs_torch']:.2f}x wall "
          f"({out['speedup_vs_torch_cpu']:.2f}x CPU time); vmapped vs jax one at a time: {out['vmap_gain']:.2f}x")
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    out = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out
