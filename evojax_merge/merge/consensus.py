"""Consensus: the second stage of a generalized task-vector merge (docs/methods.md §3).

    τ_merged = consensus(sparsify(τ_1 .. τ_N), w),    w_i = λ · weight_i

- ``Sum``: ``Σ_i w_i p_i``;
- ``SignElection``: elect ``σ = +1 if Σ_i p_i >= 0 else -1`` on the UNweighted sparsified tensors,
  keep the entries with ``sign(p_i) == σ``, then ``Σ_i w_i p_i [agree] / max(1, #agree)`` (the
  disjoint mean; peft's ``calculate_majority_sign_mask`` and ``disjoint_merge``).

Each consensus has a stacked form over ``p [N, ...]`` and a streamed form over ``p_i`` built one at
a time; both give the same merge.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp

from evojax_merge.errors import EvoMergeInputError

SignMethod = Literal["total", "frequency"]


def _weighted_sum(t: jax.Array, w: jax.Array) -> jax.Array:
    # Multiply then reduce, in peft's order (no matmul: no reduced-precision dot on accelerators).
    return (t * w).sum(axis=0)


def majority_sign_mask(t: jax.Array, method: SignMethod = "total") -> jax.Array:
    """``sign(t_i) == σ`` with ``σ = +1 if Σ_i t_i >= 0 else -1`` (``"frequency"``: Σ_i sign(t_i)).

    peft's ``calculate_majority_sign_mask``; zero entries never agree (sign 0), and a zero total
    elects +1.
    """
    sign = jnp.sign(t)
    if method == "total":
        total = t.sum(axis=0)
    elif method == "frequency":
        total = sign.sum(axis=0)
    else:
        raise EvoMergeInputError(f"sign method {method!r}, expected 'total' or 'frequency'")
    elected = jnp.where(total >= 0, 1, -1).astype(t.dtype)
    return sign == elected


def disjoint_merge(weighted: jax.Array, mask: jax.Array) -> jax.Array:
    """``Σ_i weighted_i · mask_i / max(1, Σ_i mask_i)``: the mean over agreeing entries only."""
    mixed = (weighted * mask).sum(axis=0)
    count = mask.sum(axis=0).astype(weighted.dtype)
    return mixed / jnp.maximum(count, 1.0)


class Consensus(abc.ABC):
    """How the sparsified task vectors ``p_i`` combine, in two equivalent forms.

    ``self(p, w)``: stacked, ``p [N, ...]`` and ``w`` broadcastable to it; ``stream(item, n, weight,
    zero)``: from ``item(i) = p_i`` built one at a time inside ``lax.fori_loop`` (``weight(i) = w_i``),
    so no ``[N, ...]`` stack exists. Subclasses are frozen dataclasses: hashable static jit arguments.
    """

    @abc.abstractmethod
    def __call__(self, p: jax.Array, w: jax.Array) -> jax.Array:
        """The merged tensor from the stacked sparsified task vectors."""

    @abc.abstractmethod
    def stream(self, item: Callable[[jax.Array], jax.Array], n: int, weight: Callable[[jax.Array], jax.Array],
               zero: jax.Array) -> jax.Array:
        """The same merge from ``item(i)``, i = 0 .. n-1, in order."""

    def describe(self) -> dict:
        return {"name": type(self).__name__, **dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True)
class Sum(Consensus):
    """No consensus: ``Σ_i w_i p_i``."""

    def __call__(self, p, w):
        return _weighted_sum(p, w)

    def stream(self, item, n, weight, zero):
        return jax.lax.fori_loop(0, n, lambda i, acc: acc + item(i) * weight(i), zero)


@dataclasses.dataclass(frozen=True)
class SignElection(Consensus):
    """Sign election and disjoint mean (TIES): ``σ = +1 if Σ_i p_i >= 0 else -1`` (``mass="frequency"``:
    ``Σ_i sign(p_i)``), then ``Σ_i w_i p_i [sign p_i = σ] / max(1, #{i : sign p_i = σ})``.

    Streamed in two passes (the election needs every task vector first): pass 1 sums the p_i,
    pass 2 rebuilds each and sums the agreeing ones.
    """

    mass: SignMethod = "total"

    def __post_init__(self):
        if self.mass not in ("total", "frequency"):
            raise EvoMergeInputError(f"consensus.mass: {self.mass!r}, expected 'total' or 'frequency'")

    def __call__(self, p, w):
        return disjoint_merge(p * w, majority_sign_mask(p, self.mass))

    def stream(self, item, n, weight, zero):
        lift = jnp.sign if self.mass == "frequency" else (lambda x: x)
        total = jax.lax.fori_loop(0, n, lambda i, acc: acc + lift(item(i)), zero)
        elected = jnp.where(total >= 0, 1, -1).astype(zero.dtype)

        def agree(i, carry):
            mixed, count = carry
            t = item(i)
            keep = jnp.sign(t) == elected
            return mixed + jnp.where(keep, t * weight(i), 0), count + keep.astype(zero.dtype)

        mixed, count = jax.lax.fori_loop(0, n, agree, (zero, zero))
        return mixed / jnp.maximum(count, 1.0)
