"""Fold a dense weight update into the base: ``W' = W + ΔW`` (task-vector baselines, export)."""

from __future__ import annotations

import jax
from flax import nnx

from evojax_merge.lora.adapter import LoraAdapter


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


def fold_adapter(params: nnx.State, adapter: LoraAdapter) -> nnx.State:
    """Base parameters with one rank-r adapter merged in: ``W' = W + s · B A`` (PEFT's merge).

    For float32 weights the forward on the result equals the factored ``x W^T + s · (x A^T) B^T`` up
    to float rounding (for bfloat16 weights the rounding of ``W'`` loses more). The product is taken
    in float32; the merged weights are materialized once (an optimization barrier), so that XLA does
    not recompute the fold inside the GEMMs that read them.
    """
    f32 = jax.numpy.float32
    delta = {m: adapter.scale.astype(f32) * (adapter.B[m].astype(f32) @ a.astype(f32)) for m, a in adapter.A.items()}
    return jax.lax.optimization_barrier(fold_into_params(params, delta))
