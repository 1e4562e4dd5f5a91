"""A Flax (nnx) Llama-family causal decoder: Llama, Mistral and Qwen2.

Numerically it follows transformers' eager implementation: RMSNorm in float32, RoPE in the
rotate-half layout, grouped-query attention with a float32 softmax, SwiGLU MLP.

LoRA is an argument of the call, not state: every projection computes

    y = x W^T (+ b) + s · (x A^T) B^T

in factor form, so a vmap over adapters shares W and never builds the dense B A.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evojax_merge.lora.adapter import LoraAdapter, module_path
from evojax_merge.models.config import ModelConfig

_NEG_INF = -1e30  # finite, so fully-masked (padding) rows stay NaN-free
_QUERY_BLOCK, _MAX_QUERY_BLOCKS = 32, 4  # causal attention without a cache: query blocks skip later keys


def dtype_of(cfg: ModelConfig) -> jnp.dtype:
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


class KVCache(NamedTuple):
    """Keys and values of one layer, ``[B, S, kv_heads, head_dim]``, written at per-row positions."""

    k: jax.Array
    v: jax.Array


class Linear(nnx.Module):
    """A projection stored in torch layout ``weight [d_out, d_in]``, with an optional LoRA term."""

    def __init__(self, d_in: int, d_out: int, bias: bool, path: str, dtype, rngs: nnx.Rngs):
        std = 0.02
        self.weight = nnx.Param((std * jax.random.normal(rngs.params(), (d_out, d_in))).astype(dtype))
        self.bias = nnx.Param(jnp.zeros((d_out,), dtype)) if bias else None
        self.path = path

    def __call__(self, x: jax.Array, lora: LoraAdapter | None) -> jax.Array:
        y = x @ self.weight[...].T
        if self.bias is not None:
            y = y + self.bias[...]
        if lora is not None and self.path in lora.A:
            a = lora.A[self.path].astype(x.dtype)
            b = lora.B[self.path].astype(x.dtype)
            y = y + (lora.scale.astype(x.dtype) * ((x @ a.T) @ b.T))
        return y


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, dtype):
        self.weight = nnx.Param(jnp.ones((dim,), dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...] * x32.astype(x.dtype)


def rope_tables(cfg: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape ``[B, T, head_dim]`` for integer ``positions [B, T]``."""
    inv = jnp.asarray(cfg.inv_freq())
    freqs = positions[..., None].astype(jnp.float32) * inv  # [B, T, hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def rope_tables_static(cfg: ModelConfig, t: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin of shape ``[1, T, head_dim]`` for the positions ``0 .. T-1`` of every row.

    The same float32 numbers as :func:`rope_tables` up to the last bit of ``cos``/``sin``, but host
    constants: inside ``jit`` the traced tables are fused into every rope of every layer and the
    transcendentals are recomputed there per head, which costs more than the attention's softmax.
    """
    freqs = np.arange(t, dtype=np.float32)[:, None] * cfg.inv_freq()  # float32, as rope_tables
    emb = np.concatenate([freqs, freqs], axis=-1)[None]
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def _rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    # x: [B, T, H, hd]; cos/sin: [B, T, hd]
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return x * cos + _rotate_half(x) * sin


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, rngs: nnx.Rngs):
        dt, h, hd = dtype_of(cfg), cfg.hidden_size, cfg.head_dim
        nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        bias = cfg.attention_bias
        self.q_proj = Linear(h, nh * hd, bias, module_path(layer, "q_proj"), dt, rngs)
        self.k_proj = Linear(h, nkv * hd, bias, module_path(layer, "k_proj"), dt, rngs)
        self.v_proj = Linear(h, nkv * hd, bias, module_path(layer, "v_proj"), dt, rngs)
        self.o_proj = Linear(nh * hd, h, False, module_path(layer, "o_proj"), dt, rngs)
        self.num_heads, self.num_kv_heads, self.head_dim = nh, nkv, hd

    def __call__(self, x, cos, sin, mask, lora, cache: KVCache | None, write_pos, causal: bool = False):
        """``causal``: query t is position t of the T keys (no cache), so later keys are never seen."""
        b, t, _ = x.shape
        q = self.q_proj(x, lora).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x, lora).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x, lora).reshape(b, t, self.num_kv_heads, self.head_dim)
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        if cache is not None:
            # Write this step's keys/values at each row's own position (rows have different lengths).
            write = jax.vmap(lambda c, new, p: jax.lax.dynamic_update_slice_in_dim(c, new, p, axis=0))
            k = write(cache.k, k.astype(cache.k.dtype), write_pos).astype(x.dtype)
            v = write(cache.v, v.astype(cache.v.dtype), write_pos).astype(x.dtype)
            cache = KVCache(k, v)
        # Heads-major grouped-query attention: q as [B, kv, T·groups, hd] (query rows ordered t-major,
        # group-minor), k and v as [B, kv, S, hd], so both contractions are plain batched GEMMs over
        # (B, kv) and the scores need no transpose between them and the masked softmax.
        nkv, groups, hd = self.num_kv_heads, self.num_heads // self.num_kv_heads, self.head_dim
        qh = q.reshape(b, t, nkv, groups, hd).transpose(0, 2, 1, 3, 4).reshape(b, nkv, t * groups, hd)
        kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        # Causal without a cache: query block [t0, t1) sees keys [0, t1) only; the later keys are
        # masked for all its rows, so leaving them out changes nothing but float summation order
        # (and rows with no visible key at all, left padding, average fewer values: never read).
        blocks = [(0, t)]
        if causal and t >= 2 * _QUERY_BLOCK:
            tb = -(-t // min(_MAX_QUERY_BLOCKS, t // _QUERY_BLOCK))
            blocks = [(t0, min(t0 + tb, t)) for t0 in range(0, t, tb)]
        outs = []
        for t0, t1 in blocks:
            s = k.shape[1] if len(blocks) == 1 else t1
            scores = jnp.einsum("bkqd,bksd->bkqs", qh[:, :, t0 * groups : t1 * groups], kh[:, :, :s]) * (hd**-0.5)
            scores = scores.reshape(b, nkv, t1 - t0, groups, s)
            scores = jnp.where(mask[:, None, t0:t1, None, :s], scores.astype(jnp.float32), _NEG_INF)
            # The softmax is normalized after the second GEMM (on [.., hd] instead of [.., S]): the
            # same numbers up to float rounding, one pass less over the scores.
            e = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
            den = jnp.sum(e, axis=-1, keepdims=True).reshape(b, nkv, (t1 - t0) * groups, 1)
            o = jnp.einsum("bkqs,bksd->bkqd", e.astype(x.dtype).reshape(b, nkv, (t1 - t0) * groups, s), vh[:, :, :s])
            outs.append((o.astype(jnp.float32) / den).astype(x.dtype))
        out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)
        out = out.reshape(b, nkv, t, groups, hd)
        out = out.transpose(0, 2, 1, 3, 4).reshape(b, t, -1)
        return self.o_proj(out, lora), cache


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, rngs: nnx.Rngs):
        dt, h, m, bias = dtype_of(cfg), cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj = Linear(h, m, bias, module_path(layer, "gate_proj"), dt, rngs)
        self.up_proj = Linear(h, m, bias, module_path(layer, "up_proj"), dt, rngs)
        self.down_proj = Linear(m, h, bias, module_path(layer, "down_proj"), dt, rngs)

    def __call__(self, x, lora):
        return self.down_proj(jax.nn.silu(self.gate_proj(x, lora)) * self.up_proj(x, lora), lora)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, rngs: nnx.Rngs):
        dt = dtype_of(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dt)
        self.self_attn = Attention(cfg, layer, rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dt)
        self.mlp = MLP(cfg, layer, rngs)

    def __call__(self, x, cos, sin, mask, lora, cache, write_pos, causal: bool = False):
        attn, cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, lora, cache, write_pos, causal)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x), lora)
        return x, cache


class Backbone(nnx.Module):
    """``model.*`` in HF naming: embeddings, decoder layers, final norm."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        dt = dtype_of(cfg)
        emb = 0.02 * jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.hidden_size))
        self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dt, param_dtype=dt, rngs=rngs)
        self.embed_tokens.embedding = nnx.Param(emb.astype(dt))
        self.layers = nnx.List([DecoderLayer(cfg, i, rngs) for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dt)


class LlamaForCausalLM(nnx.Module):
    """Parameter names mirror transformers' (``model.layers.0.self_attn.q_proj.weight``)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.config = cfg
        self.model = Backbone(cfg, rngs)
        if not cfg.tie_word_embeddings:
            w = 0.02 * jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.hidden_size))
            self.lm_head = nnx.Param(w.astype(dtype_of(cfg)))
        else:
            self.lm_head = None

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        lora: LoraAdapter | None = None,
        positions: jax.Array | None = None,
        cache: list[KVCache] | None = None,
        key_valid: jax.Array | None = None,
        logits_at: jax.Array | None = None,
        inputs_embeds: jax.Array | None = None,
    ) -> tuple[jax.Array, list[KVCache] | None]:
        """Logits ``[B, T, V]`` (and the updated cache); ``[B, K, V]`` at ``logits_at [B, K]`` if given.

        ``logits_at`` skips the vocabulary projection where no loss is taken (the prompt), which
        is most of the sequence in answer-only training and scoring.

        Without a cache the keys are the T inputs and ``attention_mask [B, T]`` marks the real
        ones. With a cache of S slots the T inputs are written at ``positions[:, 0]`` onwards and
        ``key_valid [B, S]`` marks the slots (after the write) that may be attended to.

        ``inputs_embeds [B, T, H]``, when given, replaces the token embeddings of ``input_ids`` (which
        still set B and T): a VLM splices image features in this way (``models/llava.py``).
        """
        cfg = self.config
        b, t = input_ids.shape
        static_positions = positions is None
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t), (b, t))
        if cache is None:
            key_pos = positions
            valid = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
        else:
            s = cache[0].k.shape[1]
            key_pos = jnp.broadcast_to(jnp.arange(s), (b, s))
            valid = key_valid.astype(bool)
        mask = (key_pos[:, None, :] <= positions[:, :, None]) & valid[:, None, :]
        if cfg.sliding_window is not None:
            mask &= key_pos[:, None, :] > positions[:, :, None] - cfg.sliding_window
        if static_positions:
            cos, sin = rope_tables_static(cfg, t)
        else:
            cos, sin = rope_tables(cfg, positions)
        x = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds.astype(dtype_of(cfg))
        new_cache = [] if cache is not None else None
        write_pos = positions[:, 0]
        for i, layer in enumerate(self.model.layers):
            x, c = layer(x, cos, sin, mask, lora, None if cache is None else cache[i], write_pos,
                         causal=static_positions and cache is None)
            if cache is not None:
                new_cache.append(c)
        if logits_at is not None:
            x = jnp.take_along_axis(x, logits_at[..., None], axis=1)
        x = self.model.norm(x)
        head = self.model.embed_tokens.embedding[...] if self.lm_head is None else self.lm_head[...]
        return (x @ head.T).astype(jnp.float32), new_cache

    def init_cache(self, batch: int, length: int) -> list[KVCache]:
        """An empty KV cache of ``length`` slots per layer."""
        cfg, dt = self.config, dtype_of(self.config)
        shape = (batch, length, cfg.num_key_value_heads, cfg.head_dim)
        return [KVCache(jnp.zeros(shape, dt), jnp.zeros(shape, dt)) for _ in range(cfg.num_hidden_layers)]
