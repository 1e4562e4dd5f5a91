"""Fold a dense weight update into the base: ``W' = W + ΔW`` (task-vector baselines, export)."""

from __future__ import annotations

import jax
from flax import nnx


def fold_into_params(params: nnx.State, delta: dict[str, jax.Array]) -> nnx.State:
    """Base parameters (an ``nnx.State`` of the model) with ``delta[m]`` added to module m's weight."""
    leaves = []
    for path, var in nnx.to_flat_state(params):
        name = ".".join(str(p) for p in path)
        if name.startswith("model.") and name.endswith(".weight") and name[6:-7] in delta:
            w = var[...]
            var = var.replace((w + delta[name[6:-7]].astype(w.dtype)).astype(w.dtype))
        leaves.append((path, var))
    return nnx.from_flat_state(leaves)
