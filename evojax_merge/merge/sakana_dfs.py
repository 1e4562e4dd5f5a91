"""Sakana's data-flow-space (DFS) merge as one scanned, population-vmapped forward (docs/methods.md §4).

The M = S·L layers of S stacked sources are laid in a row (layer j = s·L + l is source s's layer
l) and the row is repeated r times: T = M·r slots, slot t holds layer ``j(t) = t mod M``. A genome
is ``x = [I (T), W (M·M, row-major)]``:

    on_t    = I_t > 0  and  #{t' < t : on_t'} < max_path        (the path-length cap)
    prev_t  = j(t') of the last t' < t with on_t'  (none before the first layer on the path)
    s_t     = W[prev_t, j(t)]   (1 for the first layer on the path)
    h_0     = embed(ids)    (embeddings, final norm and head of source ``embed_source``)
    h_{t+1} = select(on_t, layer_{j(t)}(s_t · h_t), h_t)
    logits  = norm(h_T) · headᵀ

The forward is a ``lax.scan`` over slots; each slot gathers its layer's parameters from the
stacked ``[M, ...]`` arrays, so a population of different paths is one ``vmap`` over ``(I, W)``
with the weights shared. Every slot computes its layer (the select discards the off ones): the cost
is T layers whatever the path, the price of having one compiled program for every path.

A path is also held in compiled form, ``(layer_of_slot [T] int, on [T] bool, scale [T])``, which is
what :func:`path_logits` runs; an exported DFS model is that form with T = path length.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.models.config import ModelConfig
from evojax_merge.models.llama import DecoderLayer, rope_tables_static
from evojax_merge.models.sources import SourceStack

LAYER_PREFIX = "model.layers."
TOP_LEVEL = ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")


@dataclasses.dataclass(frozen=True)
class DFSLayout:
    """The genome of a DFS search over ``num_sources`` models of ``num_layers`` layers each."""

    num_sources: int
    num_layers: int
    repeats: int = 3
    max_path: int | None = None  # None: no cap beyond T

    @property
    def num_slot_layers(self) -> int:  # M
        return self.num_sources * self.num_layers

    @property
    def num_slots(self) -> int:  # T
        return self.num_slot_layers * self.repeats

    @property
    def cap(self) -> int:
        return self.num_slots if self.max_path is None else int(self.max_path)

    @property
    def length(self) -> int:
        return self.num_slots + self.num_slot_layers**2

    def split(self, genome: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``genome [T + M²]`` -> ``(I [T], W [M, M])``."""
        t, m = self.num_slots, self.num_slot_layers
        return genome[..., :t], genome[..., t:].reshape(genome.shape[:-1] + (m, m))

    def source_path(self, source: int, on: float = 1.0, off: float = -1.0) -> np.ndarray:
        """The genome of source ``source``'s own model: its L layers in the first repeat, W = 1."""
        if not 0 <= source < self.num_sources:
            raise EvoMergeInputError(f"dfs.start_source: {source} is not a source index (0..{self.num_sources - 1})")
        ind = np.full(self.num_slots, off, np.float32)
        ind[source * self.num_layers:(source + 1) * self.num_layers] = on
        return np.concatenate([ind, np.ones(self.num_slot_layers**2, np.float32)])

    def check(self, genome: np.ndarray, name: str = "dfs genome") -> np.ndarray:
        """A finite genome of the right length whose path fits the cap, or a one-line error."""
        g = np.asarray(genome, np.float64)
        if g.shape != (self.length,):
            raise EvoMergeInputError(f"{name}: length {g.size}, the layout needs {self.length} (T + M²)")
        if not np.isfinite(g).all():
            raise EvoMergeInputError(f"{name}: non-finite value at index {int(np.argwhere(~np.isfinite(g))[0, 0])}")
        n_on = int((g[: self.num_slots] > 0).sum())
        if n_on > self.cap:
            raise EvoMergeInputError(f"{name}: path of {n_on} layers is longer than dfs.max_path={self.cap}")
        return g.astype(np.float32)


def schedule(layout: DFSLayout, genome: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Genome -> compiled path ``(layer_of_slot [T], on [T], scale [T])`` (see the module docstring)."""
    ind, w = layout.split(genome)
    m = layout.num_slot_layers
    layer_of_slot = jnp.arange(layout.num_slots) % m

    def step(carry, t):
        prev, count = carry
        j = layer_of_slot[t]
        on = (ind[t] > 0) & (count < layout.cap)
        scale = jnp.where(prev < 0, jnp.ones((), w.dtype), w[jnp.maximum(prev, 0), j])
        return (jnp.where(on, j, prev), count + on.astype(jnp.int32)), (on, scale)

    _, (on, scale) = jax.lax.scan(step, (jnp.asarray(-1), jnp.asarray(0)), jnp.arange(layout.num_slots))
    return layer_of_slot, on, scale


def layer_row(stack: SourceStack) -> dict[str, jax.Array]:
    """The M = S·L layers in a row: ``out[suffix]`` is ``[M, ...]`` with row ``s·L + l``."""
    cfg = stack.config
    suffixes = sorted({k[len(LAYER_PREFIX):].split(".", 1)[1] for k in stack.params if k.startswith(LAYER_PREFIX)})
    out = {}
    for suf in suffixes:
        per_layer = [stack.params[f"{LAYER_PREFIX}{l}.{suf}"] for l in range(cfg.num_hidden_layers)]  # [S, ...] each
        out[suf] = jnp.stack(per_layer, axis=1).reshape((-1,) + per_layer[0].shape[1:])  # [S·L, ...]
    return out


def top_level(stack: SourceStack, source: int) -> dict[str, jax.Array]:
    """Embeddings, final norm and head of one source (the DFS model's ends)."""
    if not 0 <= source < stack.num_sources:
        raise EvoMergeInputError(f"dfs.embed_source: {source} is not a source index (0..{stack.num_sources - 1})")
    return {k: stack.params[k][source] for k in TOP_LEVEL if k in stack.params}


@functools.lru_cache(maxsize=16)
def _layer_skeleton(cfg: ModelConfig):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: DecoderLayer(cfg, 0, nnx.Rngs(0))))
    return graphdef, [(p, v, ".".join(str(x) for x in p)) for p, v in nnx.to_flat_state(state)]


def _layer(cfg: ModelConfig, params: dict[str, jax.Array]) -> DecoderLayer:
    graphdef, flat = _layer_skeleton(cfg)
    return nnx.merge(graphdef, nnx.from_flat_state([(p, v.replace(params[n])) for p, v, n in flat]))


def path_logits(cfg: ModelConfig, top: dict[str, jax.Array], layers: dict[str, jax.Array],
                layer_of_slot: jax.Array, on: jax.Array, scale: jax.Array,
                ids: jax.Array, mask: jax.Array, at: jax.Array | None = None) -> jax.Array:
    """Logits ``[B, T or K, V]`` of the compiled path; the same numerics as ``LlamaForCausalLM``."""
    b, t = ids.shape
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    valid = mask.astype(bool)
    attn_mask = (positions[:, None, :] <= positions[:, :, None]) & valid[:, None, :]
    if cfg.sliding_window is not None:
        attn_mask &= positions[:, None, :] > positions[:, :, None] - cfg.sliding_window
    cos, sin = rope_tables_static(cfg, t)  # as LlamaForCausalLM without explicit positions
    emb = top["model.embed_tokens.weight"]
    h = jnp.take(emb, ids, axis=0)

    def slot(h, xs):
        j, is_on, s = xs
        layer = _layer(cfg, jax.tree.map(lambda a: a[j], layers))
        out, _ = layer(s.astype(h.dtype) * h, cos, sin, attn_mask, None, None, positions[:, 0], causal=True)
        return jnp.where(is_on, out, h), None

    h, _ = jax.lax.scan(slot, h, (layer_of_slot, on, scale))
    if at is not None:
        h = jnp.take_along_axis(h, at[..., None], axis=1)
    h32 = h.astype(jnp.float32)
    h32 = h32 * jax.lax.rsqrt(jnp.mean(h32 * h32, axis=-1, keepdims=True) + cfg.rms_norm_eps)
    h = top["model.norm.weight"] * h32.astype(h.dtype)
    head = top.get("lm_head.weight", emb) if not cfg.tie_word_embeddings else emb
    return (h @ head.T).astype(jnp.float32)


def dfs_logits(layout: DFSLayout, cfg: ModelConfig, top, layers, genome: jax.Array,
               ids: jax.Array, mask: jax.Array, at: jax.Array | None = None) -> jax.Array:
    """Logits of one DFS genome ``[T + M²]``."""
    layer_of_slot, on, scale = schedule(layout, genome)
    return path_logits(cfg, top, layers, layer_of_slot, on, scale, ids, mask, at)


def population_logits(layout: DFSLayout, cfg: ModelConfig, top, layers, population: jax.Array,
                      ids: jax.Array, mask: jax.Array, at: jax.Array | None = None) -> jax.Array:
    """``[P, B, ., V]``: every genome of ``population [P, T + M²]`` in one vmapped call."""
    return jax.vmap(lambda g: dfs_logits(layout, cfg, top, layers, g, ids, mask, at))(population)


def describe_path(layout: DFSLayout, genome: np.ndarray, names: tuple[str, ...] | None = None) -> list[dict]:
    """The layers on the path, in order: ``{"slot", "source", "layer", "scale"}`` per layer (host side)."""
    layer_of_slot, on, scale = (np.asarray(a) for a in schedule(layout, jnp.asarray(genome, jnp.float32)))
    rows = []
    for t in np.flatnonzero(on):
        j = int(layer_of_slot[t])
        src = j // layout.num_layers
        rows.append({"slot": int(t), "source": names[src] if names else src, "source_index": src,
                     "layer": j % layout.num_layers, "scale": float(scale[t])})
    return rows


@dataclasses.dataclass(frozen=True)
class DFSModel:
    """A found DFS model in compiled form: the ends (``top``), the layer row and the path."""

    config: ModelConfig
    top: dict[str, jax.Array]
    layers: dict[str, jax.Array]
    layer_of_slot: jax.Array
    on: jax.Array
    scale: jax.Array
    path_json: str = "[]"  # describe_path rows as JSON (hashable: a static pytree field)

    @property
    def path(self) -> list[dict]:
        return json.loads(self.path_json)

    def logits(self, ids: jax.Array, mask: jax.Array, at: jax.Array | None = None) -> jax.Array:
        return path_logits(self.config, self.top, self.layers, self.layer_of_slot, self.on, self.scale, ids, mask, at)


def dfs_model(layout: DFSLayout, stack: SourceStack, embed_source: int, genome: np.ndarray) -> DFSModel:
    """The DFS model of ``genome`` over ``stack`` (checked: finite, right length, within the cap)."""
    genome = layout.check(genome)
    layer_of_slot, on, scale = schedule(layout, jnp.asarray(genome))
    return DFSModel(stack.config, top_level(stack, embed_source), layer_row(stack), layer_of_slot, on, scale,
                    json.dumps(describe_path(layout, genome, stack.names)))


jax.tree_util.register_dataclass(DFSModel, data_fields=["top", "layers", "layer_of_slot", "on", "scale"],
                                 meta_fields=["config", "path_json"])
