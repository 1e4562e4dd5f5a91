"""DAM, differentiable adaptive merging (arXiv 2410.08371; docs/methods.md §5): the merge itself.

Full fine-tunes, N sources stacked on a leading axis. Every merged weight is

    W = Σ_i W_i · diag(c_i)          W_i [d_out, d_in],  c_i [d_in]  (one vector per source per weight)

i.e. column j of source i's weight is scaled by ``c_i[j]``. Linear weights (the projections and
``lm_head``) always take part; the token embedding ``[V, H]`` (scaled along H) and the RMSNorm
weights ``[H]`` (``w = Σ_i c_i ⊙ w_i``) are switched on by :class:`DamParts`. Whatever has no
coefficient (biases, switched-off embeddings/norms) is the plain mean of the sources (model soup).

A LoRA pool on one base, ``ΔW_i = s_i · B_i A_i``:

    ΔW = Σ_i s_i · B_i (A_i diag(c_i))        c_i [d_in] per adapter and module

which is one adapter of rank ``N·r``: ``A = concat_i(A_i diag(c_i))``, ``B = concat_i(s_i B_i)``,
scale 1. The dense ΔW is never built. Initialisation is ``c_i = 1/N`` in both forms (the uniform
average).

Pure functions of arrays: no I/O; jit-, grad- and vmap-able.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import LoraAdapter, LoraStack

EMBEDDING = "model.embed_tokens.weight"


@dataclasses.dataclass(frozen=True)
class DamParts:
    """Which parameters of a full model get coefficients (linear weights always do)."""

    embeddings: bool = False
    norms: bool = False


def coefficient_width(name: str, shape: Sequence[int], parts: DamParts) -> int | None:
    """Length of the coefficient vector of the (unstacked) parameter ``name``, or None if it has none."""
    if name == EMBEDDING:
        return int(shape[1]) if parts.embeddings else None
    if len(shape) == 1 and name.endswith("norm.weight"):
        return int(shape[0]) if parts.norms else None
    if len(shape) == 2 and name.endswith("weight"):
        return int(shape[1])
    return None


def stack_sources(sources: Sequence[Mapping[str, jax.Array]], names: Sequence[str]) -> dict[str, jax.Array]:
    """``{param: [N, ...]}`` from N weight dicts; every source must have the first one's keys and shapes."""
    if len(sources) < 2:
        raise EvoMergeInputError(f"dam: needs at least 2 sources, got {len(sources)}")
    ref = sources[0]
    for src, name in zip(sources[1:], names[1:], strict=True):
        missing = sorted(set(ref) ^ set(src))
        if missing:
            raise EvoMergeInputError(f"dam: source {name!r} differs from {names[0]!r} in tensor {missing[0]!r}")
        for k, v in ref.items():
            if tuple(src[k].shape) != tuple(v.shape):
                raise EvoMergeInputError(
                    f"dam: source {name!r} has {k!r} of shape {tuple(src[k].shape)}, "
                    f"{names[0]!r} has {tuple(v.shape)}")
    return {k: jnp.stack([jnp.asarray(s[k]) for s in sources]) for k in ref}


def init_coefficients(stacked: Mapping[str, jax.Array], parts: DamParts = DamParts()) -> dict[str, jax.Array]:
    """``c_i = 1/N`` for every parameter that has coefficients: ``{param: [N, width]}``."""
    out = {}
    for k, w in stacked.items():
        width = coefficient_width(k, w.shape[1:], parts)
        if width is not None:
            n = w.shape[0]
            out[k] = jnp.full((n, width), 1.0 / n, jnp.float32)
    return out


def dam_merge(stacked: Mapping[str, jax.Array], coeffs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Merged weights: ``Σ_i W_i diag(c_i)`` where ``coeffs`` has the key, the source mean elsewhere.

    ``stacked[k]`` is ``[N, ..., d]`` and ``coeffs[k]`` is ``[N, d]``: the last axis (the input
    columns of a ``[d_out, d_in]`` weight, the hidden axis of an embedding or a norm) is scaled.
    """
    out = {}
    for k, w in stacked.items():
        if k in coeffs:
            c = coeffs[k].astype(w.dtype)
            out[k] = jnp.einsum("n...d,nd->...d", w, c)
        else:
            out[k] = jnp.mean(w, axis=0)
    return out


def init_lora_coefficients(stack: LoraStack) -> dict[str, jax.Array]:
    """``c_i = 1/N`` per adapter and module: ``{module: [N, d_in]}``."""
    n = stack.num_adapters
    return {m: jnp.full((n, a.shape[-1]), 1.0 / n, jnp.float32) for m, a in stack.A.items()}


def dam_merge_lora(stack: LoraStack, coeffs: Mapping[str, jax.Array]) -> LoraAdapter:
    """The rank-``N·r`` adapter with ``s·B A = Σ_i s_i B_i (A_i diag(c_i))`` in every module."""
    A, B = {}, {}
    for m, a in stack.A.items():  # a [N, r, d_in], b [N, d_out, r]
        n, r, d_in = a.shape
        b = stack.B[m]
        scaled_a = a * coeffs[m].astype(a.dtype)[:, None, :]
        A[m] = scaled_a.reshape(n * r, d_in)
        sb = b * stack.scale.astype(b.dtype)[:, None, None]
        B[m] = jnp.transpose(sb, (1, 0, 2)).reshape(b.shape[1], n * r)
    return LoraAdapter(A=A, B=B, scale=jnp.ones((), jnp.float32))


def cosine_similarity_term(coeffs: Mapping[str, jax.Array], eps: float = 1e-8) -> jax.Array:
    """``Σ_layers mean_{a<b} cos(c_a, c_b)``; the trainer weights it by λ_cos (it pushes sources apart)."""
    total = jnp.zeros((), jnp.float32)
    for c in coeffs.values():
        n = c.shape[0]
        if n < 2:
            continue
        unit = c / jnp.maximum(jnp.linalg.norm(c, axis=-1, keepdims=True), eps)
        gram = unit @ unit.T
        iu = np.triu_indices(n, k=1)
        total = total + jnp.mean(gram[iu])
    return total


def l1_l2_terms(coeffs: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """``(Σ |c|, Σ c²)`` over every coefficient."""
    leaves = list(coeffs.values())
    l1 = sum((jnp.abs(c).sum() for c in leaves), jnp.zeros((), jnp.float32))
    l2 = sum(((c * c).sum() for c in leaves), jnp.zeros((), jnp.float32))
    return l1, l2


def first_non_finite(coeffs: Mapping[str, np.ndarray], names: Sequence[str] | None = None) -> str | None:
    """``"key (source name)"`` of the first non-finite coefficient, or None if all are finite."""
    for k, c in coeffs.items():
        bad = ~np.isfinite(np.asarray(c))
        if bad.any():
            i = int(np.argwhere(bad)[0][0])
            who = names[i] if names is not None and i < len(names) else f"source {i}"
            return f"{k!r} ({who})"
    return None
