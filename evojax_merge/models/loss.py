"""Answer-only causal-LM cross-entropy, as transformers computes it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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


def answer_targets(labels: np.ndarray, k: int | None = None) -> dict[str, np.ndarray]:
    """Host side, once per data set: where the loss is taken and on what.

    Row b's answer tokens ``labels[b, t+1] != -100`` are predicted at positions t. Returns
    ``answer_pos [B, K]`` (those t, left-aligned, 0-padded), ``answer_tgt [B, K]`` and
    ``answer_mask [B, K]``; K is ``k`` or the longest answer. With these,
    ``answer_loss(model(..., logits_at=answer_pos), ...) == causal_lm_loss(model(...), labels)``.
    """
    labels = np.asarray(labels)
    valid = labels[:, 1:] != IGNORE_INDEX
    k = int(valid.sum(1).max(initial=1)) if k is None else k
    pos = np.zeros((labels.shape[0], k), np.int32)
    tgt = np.zeros((labels.shape[0], k), np.int32)
    mask = np.zeros((labels.shape[0], k), bool)
    for b in range(labels.shape[0]):
        t = np.flatnonzero(valid[b])[:k]
        pos[b, : len(t)], tgt[b, : len(t)], mask[b, : len(t)] = t, labels[b, t + 1], True
    return {"answer_pos": pos, "answer_tgt": tgt, "answer_mask": mask}


def answer_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean NLL over the answer tokens: ``logits [B, K, V]`` at the answer positions."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.where(mask, nll, 0.0).sum() / jnp.maximum(mask.sum(), 1)
