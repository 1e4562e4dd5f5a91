"""LoRA adapters as pytrees.

Module paths are the base model's own names with the HF prefix stripped, e.g.
``layers.3.self_attn.q_proj``. For adapter ``i`` and module ``m``:

    A_i^m : [r, d_in]     B_i^m : [d_out, r]     ΔW_i^m = s_i · B_i^m A_i^m

``LoraAdapter`` is one rank-r adapter (what the forward consumes); ``LoraStack`` is N adapters
stacked on a leading axis (what the merge functions consume).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def module_path(layer: int, proj: str) -> str:
    """The module path of projection ``proj`` in decoder layer ``layer``."""
    block = "self_attn" if proj in ATTN_PROJECTIONS else "mlp"
    return f"layers.{layer}.{block}.{proj}"


@struct.dataclass
class LoraAdapter:
    """One rank-r adapter: ``y = x W^T + scale · (x A^T) B^T`` in every module it names."""

    A: dict[str, jax.Array]  # module path -> [r, d_in]
    B: dict[str, jax.Array]  # module path -> [d_out, r]
    scale: jax.Array  # scalar: lora_alpha / r (or / sqrt(r) with rsLoRA)


@struct.dataclass
class LoraStack:
    """N adapters of equal rank stacked on a leading axis."""

    A: dict[str, jax.Array]  # module path -> [N, r, d_in]
    B: dict[str, jax.Array]  # module path -> [N, d_out, r]
    scale: jax.Array  # [N]

    @property
    def num_adapters(self) -> int:
        return int(self.scale.shape[0])

    @property
    def rank(self) -> int:
        return int(next(iter(self.A.values())).shape[1])

    def adapter(self, i: int) -> LoraAdapter:
        """Adapter ``i`` on its own."""
        return LoraAdapter(
            A={m: a[i] for m, a in self.A.items()},
            B={m: b[i] for m, b in self.B.items()},
            scale=self.scale[i],
        )

    def take(self, indices) -> LoraStack:
        """A sub-stack of the adapters at ``indices`` (e.g. the OOD pool without the target)."""
        idx = jnp.asarray(indices)
        return LoraStack(
            A={m: a[idx] for m, a in self.A.items()},
            B={m: b[idx] for m, b in self.B.items()},
            scale=self.scale[idx],
        )
