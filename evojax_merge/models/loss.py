"""Answer-only causal-LM cross-entropy, as transformers computes it."""

from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100


def token_nll(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token NLL of next-token prediction and its mask.

    Position t predicts ``labels[t+1]``; labels equal to -100 (prompt, padding) count for nothing.
    Returns ``(nll [B, T-1], mask [B, T-1])``.
    """
    shifted_logits = logits[:, :-1].astype(jnp.float32)
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logp = jax.nn.log_softmax(shifted_logits, axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.where(mask, targets, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(mask, nll, 0.0), mask


def causal_lm_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean NLL over all answer tokens of the batch: ``Σ nll / #tokens`` (transformers' loss)."""
    nll, mask = token_nll(logits, labels)
    return nll.sum() / jnp.maximum(mask.sum(), 1)
