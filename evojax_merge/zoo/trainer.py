"""Training for the built-in zoo: the base LM from scratch, then all LoRA adapters at once.

The adapters are trained together: one optax step updates a ``LoraStack`` of N adapters, each on
its own task's batch, through a ``vmap`` over the adapter axis with the base shared. The loss, its
gradients and the LoRA initialisation are :mod:`evojax_merge.pool.step`'s, shared with the pool trainer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import LoraStack
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.pool.step import Batch, batch_loss, init_lora_stack, losses_and_grads

__all__ = ["Batch", "batch_loss", "check_compiler_options", "init_lora_stack", "pretrain", "train_adapters"]


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from evojax_merge.logs import progress_bar

    return progress_bar(total, desc)


def _schedule(lr: float, steps: int) -> optax.Schedule:
    warmup = max(1, steps // 20)
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), lr * 0.05)


@functools.cache
def _xla_refusal(key: str, value: str | bool | int) -> str | None:
    """XLA's last error line for one compiler option, or ``None``; once per process and option."""
    try:
        jax.jit(lambda x: x + 1, compiler_options={key: value}).lower(jnp.zeros(2)).compile()
    except Exception as err:  # e.g. "While setting option X, 'v' is not a valid enum value."
        return str(err).strip().splitlines()[-1]
    return None


def check_compiler_options(options: dict[str, str | bool | int], where: str) -> None:
    """Compile a one-op function with each of ``options``; one XLA refuses is a one-line error."""
    for key, value in options.items():
        if not isinstance(value, (str, bool, int, float)):
            raise EvoMergeInputError(f"{where}.{key}: {value!r} is not a string, number or boolean")
        refusal = _xla_refusal(key, value)
        if refusal is not None:
            raise EvoMergeInputError(f"{where}.{key}: {value!r} is not accepted by XLA ({refusal})")


def pretrain(
    model: LlamaForCausalLM,
    batches: Iterator[Batch],
    steps: int,
    lr: float = 3e-3,
    weight_decay: float = 0.01,
    progress: bool = True,
    meter=None,
    compiler_options: dict[str, str | bool | int] | None = None,
) -> tuple[LlamaForCausalLM, list[float]]:
    """Full-parameter AdamW on ``batches``; returns the trained model and the loss curve.

    ``meter`` (a :class:`evojax_merge.zoo.flops.FlopMeter`, optional) runs each step through its
    compiled executable and counts XLA's FLOPs and the time. ``compiler_options`` go to the step's
    ``jax.jit`` (XLA kernel choices, e.g. which ops the CPU backend hands to its YNNPACK library).
    """
    graphdef, params = nnx.split(model)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(_schedule(lr, steps), weight_decay=weight_decay))
    opt_state = opt.init(params)

    @jax.jit(compiler_options=compiler_options or None)
    def step(params, opt_state, batch):
        def loss_fn(p):
            return batch_loss(nnx.merge(graphdef, p), batch)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    bar = _progress(steps, "pretrain base", progress)
    for _ in range(steps):
        batch = {k: jnp.asarray(v) for k, v in next(batches).items()}
        params, opt_state, loss = (meter.call("pretrain", step, params, opt_state, batch) if meter is not None
                                   else step(params, opt_state, batch))
        losses.append(float(loss))
        if bar is not None:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    return nnx.merge(graphdef, params), losses


def train_adapters(
    model: LlamaForCausalLM,
    stack: LoraStack,
    batches: Callable[[int], Batch],
    steps: int,
    lr: float = 5e-3,
    progress: bool = True,
    meter=None,
    compiler_options: dict[str, str | bool | int] | None = None,
) -> tuple[LoraStack, np.ndarray]:
    """Train every adapter of ``stack`` on its own task in one vmapped optax step.

    ``batches(step)`` returns arrays shaped ``[N, B, T]``: row n is adapter n's batch. The loss is
    the sum over adapters of each adapter's own mean CE, so adapters do not interact.
    ``meter`` and ``compiler_options`` as in :func:`pretrain`.
    """
    graphdef, params = nnx.split(model)
    trainable = {"A": stack.A, "B": stack.B}
    # Adam is per-parameter and there is no global clipping, so the adapters stay independent.
    opt = optax.adam(_schedule(lr, steps))
    opt_state = opt.init(trainable)

    @jax.jit(compiler_options=compiler_options or None)
    def step(trainable, opt_state, batch):
        losses, grads = losses_and_grads(graphdef, params, trainable, stack.scale, batch)
        updates, opt_state = opt.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, losses

    curve = []
    bar = _progress(steps, f"train {stack.num_adapters} adapters", progress)
    for i in range(steps):
        batch = {k: jnp.asarray(v) for k, v in batches(i).items()}
        trainable, opt_state, losses = (meter.call("adapters", step, trainable, opt_state, batch)
                                        if meter is not None else step(trainable, opt_state, batch))
        curve.append(np.asarray(losses))
        if bar is not None:
            bar.set_postfix(mean_loss=f"{float(np.mean(curve[-1])):.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    return LoraStack(A=trainable["A"], B=trainable["B"], scale=stack.scale), np.stack(curve)
