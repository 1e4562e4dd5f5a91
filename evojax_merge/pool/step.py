"""The LoRA training step shared by the zoo's trainer (:mod:`evojax_merge.zoo.trainer`) and the pool trainer.

N adapters are trained at once on one frozen base: adapter n's loss is the answer-only cross-entropy of
its own batch through ``y = x Wᵀ + s_n · (x A_nᵀ) B_nᵀ`` in every adapted projection, and

    L(A, B) = Σ_n L_n(A_n, B_n)

is differentiated once, through a ``vmap`` over the adapter axis with the base shared (never copied).
Since L_n depends on adapter n alone, ``∂L/∂A_n = ∂L_n/∂A_n``: the adapters do not interact.

The pool trainer's optimizer (:func:`pool_optimizer`) is torch's, per adapter: the gradient clipped to
global norm c as ``torch.nn.utils.clip_grad_norm_`` does (``g ← g · min(1, c / (‖g‖ + 1e-6))``), then
AdamW (decoupled weight decay λ)

    m ← β₁ m + (1 − β₁) g      v ← β₂ v + (1 − β₂) g²
    θ ← θ − η_t · ( m / (1 − β₁ᵗ) / (√(v / (1 − β₂ᵗ)) + ε) + λ θ )

with η_t the linear-warmup cosine schedule of transformers' ``get_cosine_schedule_with_warmup``
(:func:`hf_cosine`). Each adapter has its own step count and schedule length, so adapters with data
sets of different sizes train side by side; an adapter whose steps are done is frozen (``active``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import PROJECTIONS, LoraAdapter, LoraStack, module_path
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.models.loss import answer_loss, causal_lm_loss

Batch = dict[str, np.ndarray]  # input_ids, attention_mask, labels: [B, T] (+ answer_pos/tgt/mask: [B, K])
Trainable = dict[str, dict[str, jax.Array]]  # {"A": {module: [N, r, d_in]}, "B": {module: [N, d_out, r]}}


def batch_loss(model: LlamaForCausalLM, batch: Batch, lora: LoraAdapter | None = None) -> jax.Array:
    """Answer-only CE; with precomputed answer positions the prompt's vocabulary projection is skipped."""
    if "answer_pos" in batch:
        logits, _ = model(batch["input_ids"], batch["attention_mask"], lora=lora, logits_at=batch["answer_pos"])
        return answer_loss(logits, batch["answer_tgt"], batch["answer_mask"])
    logits, _ = model(batch["input_ids"], batch["attention_mask"], lora=lora)
    return causal_lm_loss(logits, batch["labels"])


def init_lora_stack(
    model: LlamaForCausalLM, num_adapters: int, rank: int, lora_alpha: float, key: jax.Array,
    projections: Sequence[str] = PROJECTIONS,
    init: str = "independent",
    where: str = "zoo.adapters.lora_init",
) -> LoraStack:
    """PEFT's initialisation: A ~ kaiming-uniform(a=√5), i.e. U(±1/√d_in); B = 0 (so ΔW starts at 0).

    ``init="shared"`` draws one A per module and gives it to every adapter, like a real pool
    trained with one fixed seed (the PEFT / LLaMA-Factory default); ``"independent"`` draws each
    adapter's own. ``where`` names the option in the error for any other ``init``.
    """
    if init not in ("shared", "independent"):
        raise EvoMergeInputError(f"{where}: {init!r} is not shared or independent")
    cfg = model.config
    A, B = {}, {}
    for layer in range(cfg.num_hidden_layers):
        for proj in projections:
            d_out, d_in = cfg.module_shapes()[proj]
            key, sub = jax.random.split(key)
            bound = 1.0 / np.sqrt(d_in)
            m = module_path(layer, proj)
            draws = 1 if init == "shared" else num_adapters
            a = jax.random.uniform(sub, (draws, rank, d_in), minval=-bound, maxval=bound)
            A[m] = jnp.broadcast_to(a, (num_adapters, rank, d_in))
            B[m] = jnp.zeros((num_adapters, d_out, rank))
    return LoraStack(A=A, B=B, scale=jnp.full((num_adapters,), lora_alpha / rank, jnp.float32))


def stacked_losses(graphdef: nnx.GraphDef, params: nnx.State, A: dict[str, jax.Array], B: dict[str, jax.Array],
                   scale: jax.Array, batch: Batch) -> jax.Array:
    """``[N]``: adapter n's answer-only CE on row n of ``batch`` (arrays ``[N, B, ...]``), base shared."""
    def adapter_loss(a, b, s, rows):
        return batch_loss(nnx.merge(graphdef, params), rows, LoraAdapter(A=a, B=b, scale=s))

    return jax.vmap(adapter_loss)(A, B, scale, batch)


def losses_and_grads(graphdef: nnx.GraphDef, params: nnx.State, trainable: Trainable, scale: jax.Array,
                     batch: Batch) -> tuple[jax.Array, Trainable]:
    """``(losses [N], ∂(Σ_n L_n)/∂trainable)``: every adapter's loss and its own gradient, in one backward."""
    def loss_fn(t):
        losses = stacked_losses(graphdef, params, t["A"], t["B"], scale, batch)
        return losses.sum(), losses

    (_, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    return losses, grads


def hf_cosine(lr: float, total: jax.Array | int, warmup: jax.Array | int) -> optax.Schedule:
    """transformers' cosine schedule with linear warmup, at optimizer step ``count`` (0-based):

    ``η = lr · count / max(1, w)`` for ``count < w``, else ``lr · ½ (1 + cos(π (count − w) / max(1, total − w)))``.
    ``total`` and ``warmup`` may be traced (one schedule per adapter under ``vmap``).
    """
    def schedule(count: jax.Array) -> jax.Array:
        count = jnp.asarray(count, jnp.float32)
        total_f, warmup_f = jnp.asarray(total, jnp.float32), jnp.asarray(warmup, jnp.float32)
        ramp = count / jnp.maximum(1.0, warmup_f)
        progress = (count - warmup_f) / jnp.maximum(1.0, total_f - warmup_f)
        decay = jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))
        return lr * jnp.where(count < warmup_f, ramp, decay)

    return schedule


def clip_grad_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """``torch.nn.utils.clip_grad_norm_``: ``g ← g · min(1, max_norm / (‖g‖₂ + 1e-6))`` over the whole tree."""
    def clip(updates, params=None):
        norm = optax.global_norm(updates)
        coef = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: g * coef.astype(g.dtype), updates)

    return optax.stateless(clip)


def pool_optimizer(lr: float, total: jax.Array | int, warmup: jax.Array | int, weight_decay: float,
                   max_grad_norm: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   ) -> optax.GradientTransformation:
    """One adapter's optimizer: torch-style clipping (``max_grad_norm > 0``), then AdamW on :func:`hf_cosine`."""
    adamw = optax.adamw(hf_cosine(lr, total, warmup), b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    return optax.chain(clip_grad_norm_torch(max_grad_norm), adamw) if max_grad_norm > 0 else adamw


OptimizerFactory = Callable[[jax.Array, jax.Array], optax.GradientTransformation]  # (total, warmup) -> optimizer


def init_pool_opt_state(make_opt: OptimizerFactory, trainable: Trainable) -> optax.OptState:
    """Per-adapter optimizer state: every leaf gets the adapter axis (step counts too)."""
    return jax.vmap(make_opt(1, 0).init)(trainable)


def pool_step(graphdef: nnx.GraphDef, params: nnx.State, trainable: Trainable, opt_state: optax.OptState,
              scale: jax.Array, batch: Batch, total: jax.Array, warmup: jax.Array, active: jax.Array,
              make_opt: OptimizerFactory) -> tuple[Trainable, optax.OptState, jax.Array]:
    """One step of every adapter (jit it with ``make_opt`` static): losses, gradients, per-adapter update.

    ``total``, ``warmup`` ``[N]``: each adapter's schedule; ``active [N]``: adapters whose update is applied
    (the others keep their weights and optimizer state bit for bit).
    """
    losses, grads = losses_and_grads(graphdef, params, trainable, scale, batch)

    def update(g, state, p, tot, wu):
        updates, state = make_opt(tot, wu).update(g, state, p)
        return optax.apply_updates(p, updates), state

    new_t, new_state = jax.vmap(update)(grads, opt_state, trainable, total, warmup)

    def keep(new, old):
        return jnp.where(active.reshape((-1,) + (1,) * (jnp.ndim(new) - 1)), new, old)

    return jax.tree.map(keep, new_t, trainable), jax.tree.map(keep, new_state, opt_state), losses
