"""Sakana's parameter-space (PS) merge: DARE-TIES with a density and a weight per (layer group,
source) (docs/methods.md §4).

For S sources fine-tuned from one base and G = L + 2 layer groups (0 embeddings, 1 + l block l,
L + 1 the head: final norm and ``lm_head``), a genome is ``x [G, S, 2]`` flattened, read as
mergekit-evolve reads it:

    d[g, s] = clip(|x[g, s, 0]|, 0, 1)          density
    w[g, s] = |x[g, s, 1]|                       weight

and every tensor n of group g is merged as

    τ_s   = θ_s[n] − θ_base[n]
    p_s   = τ_s · m_s / d[g, s],   m_s ~ Bernoulli(d[g, s])       (DARE; d = 0 -> 0, d >= 1 -> τ_s)
    σ     = +1 if Σ_s p_s >= 0 else −1                           (TIES sign election)
    θ[n]  = θ_base[n] + Σ_s w[g, s] p_s [sign p_s = σ] / max(1, #{s : sign p_s = σ})

which is ``SignElection()(drop_rescale(τ, m, d), w)`` of ``merge/consensus.py`` (peft's
semantics: the disjoint mean divides by the number of agreeing sources, not by the sum of their
weights as mergekit does) with per-source densities. The masks come from
``fold_in(key, crc32(n))`` so a tensor's mask does not depend on the other tensors; a search uses
one key for every candidate, so a genome's fitness is a deterministic function of the genome.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.merge.consensus import SignElection
from evojax_merge.merge.sparsifiers import drop_rescale
from evojax_merge.merge.task_vectors import module_key
from evojax_merge.models.sources import SourceStack, layer_group

Params = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class PSLayout:
    """The PS genome of ``num_sources`` models with ``num_layers`` blocks: ``[G, S, 2]`` flattened."""

    num_sources: int
    num_layers: int

    @property
    def num_groups(self) -> int:
        return self.num_layers + 2

    @property
    def length(self) -> int:
        return self.num_groups * self.num_sources * 2

    def decode(self, genome: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``genome [..., G·S·2]`` -> ``(density [..., G, S], weight [..., G, S])``."""
        x = genome.reshape(genome.shape[:-1] + (self.num_groups, self.num_sources, 2))
        return jnp.clip(jnp.abs(x[..., 0]), 0.0, 1.0), jnp.abs(x[..., 1])

    def encode(self, density, weight) -> np.ndarray:
        """The genome of given ``density, weight [G, S]`` (both >= 0)."""
        d = np.broadcast_to(np.asarray(density, np.float32), (self.num_groups, self.num_sources))
        w = np.broadcast_to(np.asarray(weight, np.float32), (self.num_groups, self.num_sources))
        return np.stack([d, w], axis=-1).reshape(-1)

    def check(self, genome, name: str = "ps genome") -> np.ndarray:
        g = np.asarray(genome, np.float64)
        if g.shape != (self.length,):
            raise EvoMergeInputError(f"{name}: length {g.size}, the layout needs {self.length} (groups x sources x 2)")
        if not np.isfinite(g).all():
            raise EvoMergeInputError(f"{name}: non-finite value at index {int(np.argwhere(~np.isfinite(g))[0, 0])}")
        return g.astype(np.float32)


def task_vectors_of(stack: SourceStack, base: Params, base_name: str = "base") -> Params:
    """``τ[n] = θ_s[n] − θ_base[n]``, ``[S, ...]``; a base missing a tensor or of another shape is
    a one-line error naming the tensor."""
    out = {}
    for n, theta in stack.params.items():
        if n not in base:
            raise EvoMergeInputError(f"{base_name}: the base has no tensor {n!r} (task vectors need the base)")
        if tuple(base[n].shape) != tuple(theta.shape[1:]):
            raise EvoMergeInputError(f"{base_name}: tensor {n!r} has shape {tuple(base[n].shape)}, "
                                     f"the sources have {tuple(theta.shape[1:])}")
        out[n] = theta - jnp.asarray(base[n], theta.dtype)[None]
    return out


def ps_merge(base: Params, tv: Params, density: jax.Array, weight: jax.Array, key: jax.Array,
             num_layers: int) -> Params:
    """The merged parameters for ``density, weight [G, S]`` (formula in the module docstring)."""
    out = {}
    for n, t in tv.items():
        g = layer_group(n, num_layers)
        d = density[g].reshape((-1,) + (1,) * (t.ndim - 1)).astype(t.dtype)
        mask = jax.random.bernoulli(module_key(key, n), d, t.shape)
        w = weight[g].astype(t.dtype).reshape((-1,) + (1,) * (t.ndim - 1))
        out[n] = base[n] + SignElection()(drop_rescale(t, mask, d), w)
    return out


def ps_merge_genome(layout: PSLayout, base: Params, tv: Params, genome: jax.Array, key: jax.Array) -> Params:
    density, weight = layout.decode(genome)
    return ps_merge(base, tv, density, weight, key, layout.num_layers)
