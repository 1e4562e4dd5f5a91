"""Genome encodings: what vector CMA-ES searches, its bounds, and how it maps to (alpha, beta).

Evo-Merging searches two vectors of length N in two stages (docs/methods.md §1):

    stage 1 (denoising):           x = alpha ∈ [0, 1]^N,       beta = 1/N fixed
    stage 2 (sign-aware scaling):  x = beta  ∈ [-1.5, 1.5]^N,  alpha = stage 1's best

LoraHub is stage 2 alone with alpha = 1 and its own start (x0 = 0).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from evojax_merge.errors import EvoMergeInputError


@dataclasses.dataclass(frozen=True)
class GenomeLayout:
    """What one candidate vector means: which of alpha/beta it sets, its length and bounds."""

    searched: str  # "alpha" or "beta"
    length: int
    lower: float
    upper: float

    def clip(self, population: jnp.ndarray) -> jnp.ndarray:
        """Bounds by clipping, as the paper does: candidates outside are moved onto the box."""
        return jnp.clip(population, self.lower, self.upper)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def decode(layout: GenomeLayout, population: jnp.ndarray, fixed: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Population ``[P, N]`` -> ``(alpha [P, N], beta [P, N])``; ``fixed [N]`` is the other vector."""
    other = jnp.broadcast_to(fixed, population.shape)
    return (population, other) if layout.searched == "alpha" else (other, population)


def l1_penalty(population: jnp.ndarray, weight: float) -> jnp.ndarray:
    """The regulariser ``weight · mean_i |x_i|`` of each candidate."""
    return weight * jnp.mean(jnp.abs(population), axis=-1)


def check_population(population, length: int, lower: float | None = None, upper: float | None = None,
                     name: str = "population") -> np.ndarray:
    """A ``[P, length]`` float array of finite values (within bounds when given), or a clear error.

    Runs on the host before anything is compiled or computed.
    """
    try:
        arr = np.asarray(population, dtype=np.float64)
    except (TypeError, ValueError):
        raise EvoMergeInputError(f"{name}: not a numeric array") from None
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != length:
        raise EvoMergeInputError(
            f"{name}: genome length {arr.shape[-1] if arr.ndim else 0} (shape {arr.shape}), the layout needs {length}"
        )
    if arr.shape[0] == 0:
        raise EvoMergeInputError(f"{name}: empty population")
    if not np.isfinite(arr).all():
        row = int(np.argwhere(~np.isfinite(arr))[0, 0])
        raise EvoMergeInputError(f"{name}: candidate {row} has a non-finite value (NaN/inf)")
    if lower is not None and upper is not None and ((arr < lower) | (arr > upper)).any():
        row = int(np.argwhere((arr < lower) | (arr > upper))[0, 0])
        raise EvoMergeInputError(f"{name}: candidate {row} is outside the bounds [{lower}, {upper}]")
    return arr.astype(np.float32)


def check_alpha_beta(alpha, beta, length: int) -> tuple[np.ndarray, np.ndarray]:
    """A population's keep fractions ``alpha`` and scales ``beta``: both ``[P, length]`` and finite, equal ``P``."""
    alpha = check_population(alpha, length, name="alpha")
    beta = check_population(beta, length, name="beta")
    if alpha.shape != beta.shape:
        raise EvoMergeInputError(f"alpha {alpha.shape} and beta {beta.shape}: population sizes differ")
    return alpha, beta
