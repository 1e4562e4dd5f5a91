"""A tiny but real Evo-Merging search, run in a subprocess by test_resume.py and test_sharding.py.

    python tests/search_driver.py search --dir D --seed 0 [--sleep 0.05] [--interval 1] [--no-ckpt]
    python tests/search_driver.py losses --out F.npz

``search`` is a miniature entry point: a random Llama, a random LoRA pool, random answer-only token
batches, ``MergeEvaluator``, the two-stage search under a ``CheckpointRunner`` inside a
``PreemptionGuard``; it writes ``D/result.json`` and exits 0 when preempted. ``--sleep`` slows each
generation down (after the fitness, so the numbers are unchanged) to give the test time to kill it.
``losses`` evaluates fixed populations of 20 and 7 on however many devices XLA_FLAGS provides.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evojax_merge.lora import LoraStack, module_path
from evojax_merge.models import LlamaForCausalLM, ModelConfig
from evojax_merge.search.checkpoint import CheckpointRunner
from evojax_merge.search.evo_merging import EvoMergingConfig, default_stage_runner, evo_merging_search
from evojax_merge.search.fitness import MergeEvaluator, ValidationConfig
from evojax_merge.search.preemption import Preempted, PreemptionGuard
from evojax_merge.search.result_io import write_result

CFG = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, eos_token_id=3)
SEARCH = EvoMergingConfig(population_size=6, stage1_generations=5, stage2_generations=6)
NUM_ADAPTERS = 4


def random_stack(n: int, rank: int = 2, seed: int = 0) -> LoraStack:
    """Random factors on the host (numpy): dozens of eager jax ops would each compile a kernel."""
    rng = np.random.default_rng(seed)
    A, B = {}, {}
    for layer in range(CFG.num_hidden_layers):
        for proj, (d_out, d_in) in CFG.module_shapes().items():
            m = module_path(layer, proj)
            A[m] = jnp.asarray(0.3 * rng.standard_normal((n, rank, d_in)), jnp.float32)
            B[m] = jnp.asarray(0.3 * rng.standard_normal((n, d_out, rank)), jnp.float32)
    return LoraStack(A=A, B=B, scale=jnp.full((n,), 2.0, jnp.float32))


def random_examples(num: int = 12, length: int = 12, prompt: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """Random token rows, right-padded to ``length``; labels only on the answer tokens."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, CFG.vocab_size, (num, length)).astype(np.int32)
    lengths = rng.integers(prompt + 2, length + 1, num)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    ids = ids * mask
    labels = np.where((np.arange(length)[None] >= prompt) & (mask == 1), ids, -100).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def build_evaluator() -> tuple[MergeEvaluator, LoraStack]:
    model = LlamaForCausalLM(CFG, rngs=nnx.Rngs(0))
    stack = random_stack(NUM_ADAPTERS)
    # resample: every generation sees other batches, so a resumed run must also get the generation right
    validation = ValidationConfig(batch_size=4, num_batches=2, resample=True, seed=0)
    return MergeEvaluator(model, stack, random_examples(), validation), stack


def cmd_search(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    evaluator, stack = build_evaluator()
    if args.no_ckpt:
        result = evo_merging_search(evaluator, stack, SEARCH, seed=args.seed, runner=default_stage_runner(False))
        write_result(out / "result.json", result, seed=args.seed)
        return 0

    def slow(spec, state, step):
        print(f"STEP {step}", flush=True)
        time.sleep(args.sleep)

    with PreemptionGuard() as guard:
        runner = CheckpointRunner(out / "checkpoints", interval=args.interval, fingerprint={"seed": args.seed},
                                  preemption=guard, on_generation=slow, progress=False)
        print(f"RESUMED_FROM {runner.resumed_from}", flush=True)
        try:
            with runner:
                result = evo_merging_search(evaluator, stack, SEARCH, seed=args.seed, runner=runner)
        except Preempted as stop:
            print(f"PREEMPTED {stop.step}: {stop}", flush=True)
            return 0
    write_result(out / "result.json", result, seed=args.seed)
    print("DONE", flush=True)
    return 0


def cmd_losses(args: argparse.Namespace) -> int:
    evaluator, _ = build_evaluator()
    rng = np.random.default_rng(1)
    arrays = {"devices": np.asarray(jax.device_count()),
              "mesh": np.asarray(0 if evaluator.mesh is None else evaluator.mesh.devices.size)}
    for p in (20, 7):
        alpha = rng.uniform(0.0, 1.0, (p, NUM_ADAPTERS)).astype(np.float32)
        beta = rng.uniform(-1.5, 1.5, (p, NUM_ADAPTERS)).astype(np.float32)
        arrays[f"losses_{p}"] = evaluator.evaluate(alpha, beta, generation=3)
    np.savez(args.out, **arrays)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("search")
    s.add_argument("--dir", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sleep", type=float, default=0.0)
    s.add_argument("--interval", type=int, default=1)
    s.add_argument("--no-ckpt", action="store_true")
    s.set_defaults(fn=cmd_search)
    loss = sub.add_parser("losses")
    loss.add_argument("--out", required=True)
    loss.set_defaults(fn=cmd_losses)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
