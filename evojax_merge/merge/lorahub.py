"""LoraHub's factor-wise merge (docs/methods.md §2): Evo-Merging's merge with alpha = 1.

A^m = Σ_i w_i · A_i^m,   B^m = Σ_i w_i · (s_i / s_0) · B_i^m,   scale = s_0
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from evojax_merge.lora.adapter import LoraAdapter, LoraStack
from evojax_merge.merge.evo import evo_merge


def lorahub_merge(stack: LoraStack, w: jax.Array) -> LoraAdapter:
    """``A = Σ_i w_i A_i``, ``B = Σ_i w_i (s_i/s_0) B_i``, ``scale = s_0``: no pruning (alpha = 1).

    ``w``: ``[N]`` weights, in ``[-1.5, 1.5]`` in the original. jit/vmap-able over ``w``.
    """
    w = jnp.asarray(w)
    # prune="none" skips S entirely: alpha is unused, so no magnitudes are needed.
    return evo_merge(stack, None, jnp.ones_like(w), w, prune="none")
