"""A CLIP-style vision tower in Flax (nnx): the ``vision_tower`` of transformers' LLaVA layout.

Numerically it follows transformers' ``CLIPVisionModel`` (eager attention, float32):

    patches  = Conv2d(C -> D, kernel = stride = P, no bias)(pixels)        # [B, D, H/P, W/P]
    h_0      = pre_layrnorm([class_embedding ; flatten(patches)] + position_embedding)   # [B, 1 + N, D]
    h_{l+1}  = h_l' + fc2(act(fc1(LN2(h_l'))))   with  h_l' = h_l + out_proj(MHA(LN1(h_l)))

``hidden_states = (h_0, h_1, .., h_L)`` as transformers returns them with ``output_hidden_states``
(the embeddings after ``pre_layrnorm``, then each encoder layer's output; ``post_layernorm`` is
kept for the checkpoint's sake but LLaVA never applies it). The convolution has stride = kernel,
so it is computed as one matmul over flattened ``(C, P, P)`` patches.

Parameter names mirror the checkpoint (``embeddings.patch_embedding.weight`` in torch's
``[D, C, P, P]`` layout, ``encoder.layers.0.self_attn.q_proj.weight`` ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.models.llama import Linear

VISION_MODEL_TYPES = ("clip_vision_model",)


def quick_gelu(x: jax.Array) -> jax.Array:
    """``x · sigmoid(1.702 x)`` (CLIP's activation)."""
    return x * jax.nn.sigmoid(1.702 * x)


# transformers' ACT2FN names used by CLIP towers and LLaVA projectors.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # x · Φ(x), with erf
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),  # the tanh approximation
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


def activation(name: str, where: str) -> Callable[[jax.Array], jax.Array]:
    """The activation called ``name`` in transformers; an :class:`EvoMergeInputError` naming ``where`` else."""
    if name not in ACTIVATIONS:
        raise EvoMergeInputError(f"{where}: unsupported activation {name!r} ({', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """The CLIP vision tower's shape (``vision_config`` of a LLaVA ``config.json``). Frozen and hashable."""

    hidden_size: int = 32
    intermediate_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    image_size: int = 16
    patch_size: int = 4
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    projection_dim: int = 16  # unused by LLaVA; kept so an export writes the config it read
    dtype: str = "float32"

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_hf_dict(self) -> dict[str, Any]:
        return {
            "model_type": "clip_vision_model",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "num_channels": self.num_channels,
            "layer_norm_eps": self.layer_norm_eps,
            "hidden_act": self.hidden_act,
            "projection_dim": self.projection_dim,
            "attention_dropout": 0.0,
        }


def vision_config_from_hf_dict(raw: dict[str, Any], where: str, dtype: str = "float32") -> VisionConfig:
    """Parse a ``vision_config`` dict; every error names ``where`` and the offending key."""
    model_type = raw.get("model_type", "clip_vision_model")
    if model_type not in VISION_MODEL_TYPES:
        raise EvoMergeInputError(f"{where}: unsupported vision_config.model_type {model_type!r} (clip_vision_model)")
    try:
        cfg = VisionConfig(
            hidden_size=int(raw["hidden_size"]),
            intermediate_size=int(raw["intermediate_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=int(raw["num_attention_heads"]),
            image_size=int(raw["image_size"]),
            patch_size=int(raw["patch_size"]),
            num_channels=int(raw.get("num_channels", 3)),
            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-5)),
            hidden_act=str(raw.get("hidden_act", "quick_gelu")),
            projection_dim=int(raw.get("projection_dim", 512)),
            dtype=dtype,
        )
    except KeyError as e:
        raise EvoMergeInputError(f"{where}: missing key vision_config.{e.args[0]}") from None
    except (TypeError, ValueError) as e:
        raise EvoMergeInputError(f"{where}: bad value in vision_config ({e})") from None
    activation(cfg.hidden_act, f"{where}: vision_config.hidden_act")
    if cfg.hidden_size % cfg.num_attention_heads:
        raise EvoMergeInputError(f"{where}: vision_config.hidden_size {cfg.hidden_size} is not divisible by "
                                 f"num_attention_heads {cfg.num_attention_heads}")
    if cfg.patch_size <= 0 or cfg.image_size % cfg.patch_size:
        raise EvoMergeInputError(f"{where}: vision_config.image_size {cfg.image_size} is not a multiple of "
                                 f"patch_size {cfg.patch_size}")
    return cfg


def _dtype(cfg: VisionConfig) -> jnp.dtype:
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


class LayerNorm(nnx.Module):
    """``(x - mean) / sqrt(var + eps) · weight + bias`` over the last axis, in float32 (torch's biased var)."""

    def __init__(self, dim: int, eps: float, dtype):
        self.weight = nnx.Param(jnp.ones((dim,), dtype))
        self.bias = nnx.Param(jnp.zeros((dim,), dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(x.dtype)


class _Weight(nnx.Module):
    """A bare ``weight`` parameter (torch's ``Conv2d`` / ``Embedding`` naming)."""

    def __init__(self, value: jax.Array):
        self.weight = nnx.Param(value)


class VisionEmbeddings(nnx.Module):
    def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs):
        dt, d, p = _dtype(cfg), cfg.hidden_size, cfg.patch_size
        self.class_embedding = nnx.Param((0.02 * jax.random.normal(rngs.params(), (d,))).astype(dt))
        conv = 0.02 * jax.random.normal(rngs.params(), (d, cfg.num_channels, p, p))
        self.patch_embedding = _Weight(conv.astype(dt))
        pos = 0.02 * jax.random.normal(rngs.params(), (cfg.num_patches + 1, d))
        self.position_embedding = _Weight(pos.astype(dt))
        self.patch_size, self.image_size = p, cfg.image_size

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """``pixel_values [B, C, H, W]`` (NCHW, as the processor gives) -> ``[B, 1 + N, D]``."""
        b, c, h, w = pixel_values.shape
        if (h, w) != (self.image_size, self.image_size):
            raise EvoMergeInputError(f"pixel_values: image size {h}x{w}, the vision tower needs "
                                     f"{self.image_size}x{self.image_size}")
        p = self.patch_size
        weight = self.patch_embedding.weight[...]
        x = pixel_values.astype(weight.dtype).reshape(b, c, h // p, p, w // p, p)
        x = x.transpose(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)  # row-major patches
        patches = x @ weight.reshape(weight.shape[0], -1).T
        cls = jnp.broadcast_to(self.class_embedding[...], (b, 1, weight.shape[0]))
        return jnp.concatenate([cls, patches], axis=1) + self.position_embedding.weight[...][None]


class VisionAttention(nnx.Module):
    """Bidirectional multi-head attention: ``softmax(q kᵀ / sqrt(d_head)) v`` with a float32 softmax."""

    def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs):
        dt, d = _dtype(cfg), cfg.hidden_size
        self.q_proj = Linear(d, d, True, "", dt, rngs)
        self.k_proj = Linear(d, d, True, "", dt, rngs)
        self.v_proj = Linear(d, d, True, "", dt, rngs)
        self.out_proj = Linear(d, d, True, "", dt, rngs)
        self.num_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, _ = x.shape
        q, k, v = (proj(x, None).reshape(b, t, self.num_heads, self.head_dim)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * (self.head_dim**-0.5)
        weights = jax.nn.softmax(scores, axis=-1).astype(x.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, -1)
        return self.out_proj(out, None)


class VisionMLP(nnx.Module):
    def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs):
        dt = _dtype(cfg)
        self.fc1 = Linear(cfg.hidden_size, cfg.intermediate_size, True, "", dt, rngs)
        self.fc2 = Linear(cfg.intermediate_size, cfg.hidden_size, True, "", dt, rngs)
        self.act_name = cfg.hidden_act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(ACTIVATIONS[self.act_name](self.fc1(x, None)), None)


class VisionEncoderLayer(nnx.Module):
    def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs):
        dt = _dtype(cfg)
        self.layer_norm1 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dt)
        self.self_attn = VisionAttention(cfg, rngs)
        self.layer_norm2 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dt)
        self.mlp = VisionMLP(cfg, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionEncoder(nnx.Module):
    def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs):
        self.layers = nnx.List([VisionEncoderLayer(cfg, rngs) for _ in range(cfg.num_hidden_layers)])


class ClipVisionTower(nnx.Module):
    """``CLIPVisionModel``: embeddings, ``pre_layrnorm`` (sic: the checkpoint's spelling), encoder, post_layernorm."""

    def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs):
        self.config = cfg
        dt = _dtype(cfg)
        self.embeddings = VisionEmbeddings(cfg, rngs)
        self.pre_layrnorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dt)
        self.encoder = VisionEncoder(cfg, rngs)
        self.post_layernorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dt)

    def hidden_states(self, pixel_values: jax.Array, upto: int | None = None) -> list[jax.Array]:
        """``[h_0, .., h_upto]`` (``upto`` defaults to L: all of them); layers past ``upto`` are not run."""
        n = len(self.encoder.layers)
        upto = n if upto is None else upto
        h = self.pre_layrnorm(self.embeddings(pixel_values))
        out = [h]
        for layer in list(self.encoder.layers)[:upto]:
            h = layer(h)
            out.append(h)
        return out

    def select(self, pixel_values: jax.Array, layers: tuple[int, ...], drop_cls: bool) -> jax.Array:
        """LLaVA's image features: ``concat_l hidden_states[l]`` over ``layers`` (negative = from the end),
        without the class token when ``drop_cls`` (strategy "default"); ``[B, N (+1), D · len(layers)]``."""
        n = len(self.encoder.layers) + 1
        idx = [l % n for l in layers]
        states = self.hidden_states(pixel_values, upto=max(idx))
        feats = jnp.concatenate([states[i] for i in idx], axis=-1)
        return feats[:, 1:] if drop_cls else feats
