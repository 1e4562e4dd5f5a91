"""Benchmark of the DAM training step: JAX (this project) against a PyTorch reference, same shapes.

    python -m evojax_merge.bench --dam                          # LoRA pool: N=8 adapters, r=8, tiny Llama
    python -m evojax_merge.bench --dam --world full --json bench_dam.json

One step = merge with the current coefficients, forward of one batch of every source's data,
KL to the precomputed source logits (T = 2) + λ_cos · cosine term, backward, Adam update.
It times, in one run:
  (a) this project's jitted step (:func:`evojax_merge.search.dam.dam_step`);
  (b) a PyTorch reference of the same objective: the merged weights built densely every step, as
      arcee-ai/DAM's merged model does (``W_i diag(c_i)`` summed; for a LoRA pool the dense
      ``W + Σ s_i B_i A_i diag(c_i)``), the HF model run through ``torch.func.functional_call``,
      ``torch.optim.Adam``;
  (c) the merge alone, forward and backward, in JAX: its share of (a).
The source logits are random (the same array for both): the step's cost does not depend on them.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from evojax_merge.bench.population import random_stack
from evojax_merge.merge.dam import dam_merge, dam_merge_lora
from evojax_merge.models.config import ModelConfig
from evojax_merge.models.io import model_weights
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.perf import Timing, best_time
from evojax_merge.search.dam import DamConfig, FullDamModel, LoraDamModel, dam_step


def _batch(cfg: ModelConfig, n: int, b: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, (n, b, seq)).astype(np.int32)
    pos = np.broadcast_to(np.arange(seq, dtype=np.int32), (n, b, seq)).copy()
    teacher = rng.normal(0, 2, (n, b, seq, cfg.vocab_size)).astype(np.float32)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "pos": pos, "mask": np.ones((n, b, seq), bool),
            "teacher": teacher}


def build(world: str, cfg: ModelConfig, n: int, rank: int):
    from flax import nnx

    from evojax_merge.merge.dam import stack_sources

    base = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
    names = [f"s{i}" for i in range(n)]
    if world == "lora":
        return base, LoraDamModel(base, random_stack(cfg, n, rank), names)
    w0 = model_weights(base)
    rng = np.random.default_rng(1)
    sources = [{k: np.asarray(v) + rng.normal(0, 0.01, v.shape).astype(np.float32) for k, v in w0.items()}
               for _ in range(n)]
    return base, FullDamModel(base, stack_sources(sources, names), names)


def time_jax(model, dcfg: DamConfig, batch: dict, repeats: int) -> tuple[Timing, float]:
    """((wall, CPU) seconds per step, the loss at the initial coefficients)."""
    coeffs = model.init()
    opt_state = optax.adam(dcfg.lr).init(coeffs)
    dev = {k: jnp.asarray(v) for k, v in batch.items()}
    loss0 = float(dam_step(model, dcfg, model.args, coeffs, opt_state, dev)[2]["loss"])
    return best_time(lambda: dam_step(model, dcfg, model.args, coeffs, opt_state, dev)[0], repeats), loss0


def time_merge(model, repeats: int) -> Timing:
    coeffs = model.init()
    if isinstance(model, LoraDamModel):
        def f(c):
            ad = dam_merge_lora(model.args["stack"], c)
            return sum(jnp.vdot(ad.A[m], ad.A[m]) + jnp.vdot(ad.B[m], ad.B[m]) for m in ad.A)
    else:
        def f(c):
            return sum(jnp.vdot(w, w) for w in dam_merge(model.args["stacked"], c).values())
    fn = jax.jit(jax.grad(f))
    return best_time(lambda: fn(coeffs), repeats)


def time_torch(world: str, cfg: ModelConfig, model, dcfg: DamConfig, batch: dict, repeats: int
               ) -> tuple[Timing, float]:
    """((wall, CPU) seconds per step, the loss at the initial coefficients) of the PyTorch reference."""
    import torch
    from torch.func import functional_call
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg.to_hf_dict())).eval()
    if world == "lora":
        base = {k: torch.from_numpy(np.array(v)) for k, v in model_weights_from(model).items()}
        stack = model.args["stack"]
        A = {m: torch.from_numpy(np.array(a)) for m, a in stack.A.items()}
        B = {m: torch.from_numpy(np.array(b)) * torch.from_numpy(np.array(stack.scale))[:, None, None]
             for m, b in stack.B.items()}
        coeffs = {m: torch.full((a.shape[0], a.shape[-1]), 1.0 / a.shape[0], requires_grad=True) for m, a in A.items()}

        def params():
            out = dict(base)
            for m, c in coeffs.items():
                delta = torch.einsum("nor,nri->oi", B[m], A[m] * c[:, None, :])
                out[f"model.{m}.weight"] = base[f"model.{m}.weight"] + delta
            return out
    else:
        stacked = {k: torch.from_numpy(np.array(v)) for k, v in model.args["stacked"].items()}
        init = model.init()
        coeffs = {k: torch.from_numpy(np.asarray(v)).clone().requires_grad_(True) for k, v in init.items()}

        def params():
            return {k: (torch.einsum("n...d,nd->...d", w, coeffs[k]) if k in coeffs else w.mean(0))
                    for k, w in stacked.items()}

    opt = torch.optim.Adam(list(coeffs.values()), lr=dcfg.lr)
    n, b, seq = batch["input_ids"].shape
    ids = torch.from_numpy(batch["input_ids"].reshape(n * b, seq)).long()
    mask = torch.from_numpy(batch["attention_mask"].reshape(n * b, seq)).long()
    teacher = torch.from_numpy(batch["teacher"])
    T = dcfg.temperature

    def step():
        opt.zero_grad()
        logits = functional_call(hf, params(), (ids,), {"attention_mask": mask}).logits.reshape(n, b, seq, -1)
        logq = torch.log_softmax(logits / T, -1)
        logp = torch.log_softmax(teacher / T, -1)
        kl = (logp.exp() * (logp - logq)).sum(-1).mean(dim=(1, 2)).sum() * T * T
        cos = 0.0
        for c in coeffs.values():
            u = torch.nn.functional.normalize(c, dim=-1)
            g = u @ u.T
            iu = torch.triu_indices(c.shape[0], c.shape[0], 1)
            cos = cos + g[iu[0], iu[1]].mean()
        loss = kl + dcfg.lambda_cos * cos
        loss.backward()
        opt.step()
        return loss

    loss0 = float(step().detach())
    return best_time(step, repeats), loss0


def model_weights_from(model: LoraDamModel) -> dict:
    from flax import nnx

    return model_weights(nnx.merge(model.graphdef, model.args["params"]))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", choices=("lora", "full"), default="lora")
    ap.add_argument("--sources", type=int, default=8)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--batch", type=int, default=2, help="examples per source per step")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    cfg = ModelConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=int(args.hidden * 2.6875),
                      num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4,
                      head_dim=args.hidden // 8)
    _, model = build(args.world, cfg, args.sources, args.rank)
    dcfg = DamConfig(positions="all")
    batch = _batch(cfg, args.sources, args.batch, args.seq)
    out = {"world": args.world, "sources": args.sources, "rank": args.rank, "batch_per_source": args.batch,
           "seq": args.seq, "hidden": args.hidden, "layers": args.layers, "vocab": args.vocab,
           "backend": jax.default_backend()}
    (out["a_jax_step_s"], out["a_jax_step_cpu_s"]), out["jax_loss_at_init"] = time_jax(model, dcfg, batch,
                                                                                         args.repeats)
    out["c_merge_fwd_bwd_s"], out["c_merge_fwd_bwd_cpu_s"] = time_merge(model, args.repeats)
    if not args.no_torch:
        (out["b_torch_step_s"], out["b_torch_step_cpu_s"]), out["torch_loss_at_init"] = time_torch(
            args.world, cfg, model, dcfg, batch, args.repeats)
    print(f"DAM step, {args.world} world: N={args.sources} sources, {args.batch} x {args.seq} tokens per source, "
          f"hidden {args.hidden} x {args.layers} layers, vocab {args.vocab} ({out['backend']}); "
          f"best of {args.repeats}, wall s / process CPU s")
    print(f"  (a) JAX jitted step        {out['a_jax_step_s']:.4f} / {out['a_jax_step_cpu_s']:.4f} s"
          f"  = {1 / out['a_jax_step_s']:.2f} steps/s (wall)")
    if "b_torch_step_s" in out:
        print(f"  (b) PyTorch reference      {out['b_torch_step_s']:.4f} / {out['b_torch_step_cpu_s']:.4f} s"
              f"  = {1 / out['b_torch_step_s']:.2f} steps/s (wall)")
        print(f"  (b)/(a) = {out['b_torch_step_s'] / out['a_jax_step_s']:.2f}x wall, "
              f"{out['b_torch_step_cpu_s'] / out['a_jax_step_cpu_s']:.2f}x CPU; loss at init: JAX "
              f"{out['jax_loss_at_init']:.6f}, PyTorch {out['torch_loss_at_init']:.6f} (the same objective)")
    share = out["c_merge_fwd_bwd_s"] / out["a_jax_step_s"]
    out["merge_share"] = share
    print(f"  (c) merge fwd+bwd alone    {out['c_merge_fwd_bwd_s']:.4f} / {out['c_merge_fwd_bwd_cpu_s']:.4f} s"
          f"  = {100 * share:.1f}% of (a) (wall)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
