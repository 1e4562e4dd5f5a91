"""A tiny VLM in transformers' LLaVA layout (Flax nnx): CLIP vision tower, projector, Llama decoder.

    feats   = vision_tower.hidden_states[vision_feature_layer]      ([:, 1:] under strategy "default")
    img     = linear_2(act(linear_1(feats)))                         # [n_images, N, H_text]
    embeds  = embed_tokens(input_ids);  embeds[input_ids == image_token_id] = img.reshape(-1, H_text)
    logits  = LlamaForCausalLM(inputs_embeds=embeds, attention_mask)

The splice is transformers 5.x's ``masked_scatter``: the processor has already expanded each
``<image>`` into ``N`` image tokens (:func:`expand_image_tokens` does the same on id lists), and
the ``n_images · N`` feature rows fill the image-token positions in row-major (batch, position)
order, so rows may hold different numbers of images as long as the totals agree.

The decoder is the project's :class:`~evojax_merge.models.llama.LlamaForCausalLM`, unchanged; its
parameters sit under ``language_model.`` with the Llama's own names, so
:func:`split_vlm_params` / :func:`join_vlm_params` hand the language model to any Llama merge and
put it back next to the untouched vision tower and projector.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.models.config import ModelConfig
from evojax_merge.models.llama import Linear, LlamaForCausalLM, dtype_of
from evojax_merge.models.vision import ACTIVATIONS, ClipVisionTower, VisionConfig

Params = dict[str, jax.Array]
PARTS = ("vision_tower", "multi_modal_projector", "language_model")


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
    """The whole VLM's shape: vision tower, text decoder and the LLaVA glue. Frozen and hashable."""

    vision: VisionConfig = VisionConfig()
    text: ModelConfig = ModelConfig()
    image_token_id: int = 0
    projector_hidden_act: str = "gelu"
    vision_feature_layer: tuple[int, ...] = (-2,)  # one layer is a 1-tuple; written back as an int
    vision_feature_select_strategy: str = "default"  # "default" drops the class token, "full" keeps it
    multimodal_projector_bias: bool = True
    image_seq_length: int | None = None  # informational (the processor's count); None = num_image_tokens

    @property
    def num_image_tokens(self) -> int:
        """Feature rows per image: ``(image_size / patch_size)^2``, plus 1 under strategy "full"."""
        return self.vision.num_patches + (self.vision_feature_select_strategy == "full")

    def to_hf_dict(self) -> dict[str, Any]:
        """A ``config.json`` that ``LlavaForConditionalGeneration.from_pretrained`` reads as this model."""
        text = self.text.to_hf_dict()
        text.pop("architectures", None)
        text.pop("torch_dtype", None)
        layer = self.vision_feature_layer
        return {
            "architectures": ["LlavaForConditionalGeneration"],
            "model_type": "llava",
            "vision_config": self.vision.to_hf_dict(),
            "text_config": text,
            "image_token_index": self.image_token_id,
            "image_seq_length": self.image_seq_length or self.num_image_tokens,
            "projector_hidden_act": self.projector_hidden_act,
            "vision_feature_layer": layer[0] if len(layer) == 1 else list(layer),
            "vision_feature_select_strategy": self.vision_feature_select_strategy,
            "multimodal_projector_bias": self.multimodal_projector_bias,
            "tie_word_embeddings": self.text.tie_word_embeddings,
            "dtype": self.text.dtype,
        }


class MultiModalProjector(nnx.Module):
    """``linear_2(act(linear_1(x)))``: vision width (× feature layers) -> text width -> text width."""

    def __init__(self, cfg: LlavaConfig, rngs: nnx.Rngs):
        dt, h = dtype_of(cfg.text), cfg.text.hidden_size
        d_in = cfg.vision.hidden_size * len(cfg.vision_feature_layer)
        self.linear_1 = Linear(d_in, h, cfg.multimodal_projector_bias, "", dt, rngs)
        self.linear_2 = Linear(h, h, cfg.multimodal_projector_bias, "", dt, rngs)
        self.act_name = cfg.projector_hidden_act

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(ACTIVATIONS[self.act_name](self.linear_1(x, None)), None)


def splice_image_features(embeds: jax.Array, input_ids: jax.Array, features: jax.Array,
                          image_token_id: int) -> jax.Array:
    """``masked_scatter``: the k-th image-token position (row-major over ``[B, T]``) gets ``features[k]``.

    ``embeds [B, T, H]``, ``features [M, H]``. Traceable; the count check is :func:`check_image_tokens`.
    """
    is_image = (input_ids == image_token_id).reshape(-1)
    order = jnp.clip(jnp.cumsum(is_image) - 1, 0, max(features.shape[0] - 1, 0))
    rows = features.astype(embeds.dtype)[order].reshape(embeds.shape)
    return jnp.where(is_image.reshape(input_ids.shape)[..., None], rows, embeds)


def check_image_tokens(input_ids: Any, num_images: int, cfg: LlavaConfig) -> None:
    """A one-line :class:`EvoMergeInputError` unless the image tokens number ``num_images · N``.

    Needs concrete ids (call it before ``jit``); traced ids are not checked.
    """
    if isinstance(input_ids, jax.core.Tracer):
        return
    found = int(np.sum(np.asarray(input_ids) == cfg.image_token_id))
    need = num_images * cfg.num_image_tokens
    if found != need:
        raise EvoMergeInputError(
            f"input_ids: {found} image tokens (id {cfg.image_token_id}) for {num_images} image(s) of "
            f"{cfg.num_image_tokens} features each: expected {need} (expand each <image> with expand_image_tokens)"
        )


def expand_image_tokens(ids: list[int], cfg: LlavaConfig) -> list[int]:
    """The processor's expansion: every image token becomes ``cfg.num_image_tokens`` of them."""
    out: list[int] = []
    for tok in ids:
        out.extend([tok] * cfg.num_image_tokens if tok == cfg.image_token_id else [tok])
    return out


class LlavaForConditionalGeneration(nnx.Module):
    """Parameters under ``vision_tower.``, ``multi_modal_projector.`` and ``language_model.`` (a Llama)."""

    def __init__(self, cfg: LlavaConfig, rngs: nnx.Rngs):
        self.config = cfg
        self.vision_tower = ClipVisionTower(cfg.vision, rngs)
        self.multi_modal_projector = MultiModalProjector(cfg, rngs)
        self.language_model = LlamaForCausalLM(cfg.text, rngs)

    def image_features(self, pixel_values: jax.Array) -> jax.Array:
        """``[n_images, N, H_text]``: selected vision hidden states through the projector."""
        cfg = self.config
        feats = self.vision_tower.select(pixel_values, cfg.vision_feature_layer,
                                         drop_cls=cfg.vision_feature_select_strategy == "default")
        return self.multi_modal_projector(feats.astype(dtype_of(cfg.text)))

    def __call__(
        self,
        input_ids: jax.Array,
        pixel_values: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        logits_at: jax.Array | None = None,
    ) -> jax.Array:
        """Logits ``[B, T, V]`` (``[B, K, V]`` at ``logits_at [B, K]``) for ``input_ids [B, T]`` whose image
        tokens are already expanded, and ``pixel_values [n_images, C, H, W]`` (None: text only)."""
        lm = self.language_model
        embeds = lm.model.embed_tokens(input_ids)
        if pixel_values is not None:
            check_image_tokens(input_ids, pixel_values.shape[0], self.config)
            img = self.image_features(pixel_values)
            embeds = splice_image_features(embeds, input_ids, img.reshape(-1, img.shape[-1]),
                                           self.config.image_token_id)
        else:
            check_image_tokens(input_ids, 0, self.config)
        return lm(input_ids, attention_mask, logits_at=logits_at, inputs_embeds=embeds)[0]


# --- the VLM as a pure function of a flat params dict ------------------------------------------------


def _flat_name(path: tuple) -> str:
    name = ".".join(str(p) for p in path)
    for nnx_name, hf in (("language_model.model.embed_tokens.embedding", "language_model.model.embed_tokens.weight"),
                         ("language_model.lm_head", "language_model.lm_head.weight")):
        if name == nnx_name:
            return hf
    return name


@functools.lru_cache(maxsize=8)
def _skeleton(cfg: LlavaConfig):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: LlavaForConditionalGeneration(cfg, rngs=nnx.Rngs(0))))
    return graphdef, [(path, var, _flat_name(path)) for path, var in nnx.to_flat_state(state)]


def param_shapes(cfg: LlavaConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's flat name and shape for ``cfg``."""
    return {name: tuple(var.shape) for _, var, name in _skeleton(cfg)[1]}


def vlm_params(model: LlavaForConditionalGeneration) -> Params:
    """The model's parameters as a flat dict: ``vision_tower.*``, ``multi_modal_projector.*``,
    ``language_model.<Llama HF name>`` (e.g. ``language_model.model.layers.0.mlp.up_proj.weight``)."""
    _, state = nnx.split(model)
    return {_flat_name(path): var[...] for path, var in nnx.to_flat_state(state)}


def vlm_model_of(cfg: LlavaConfig, params: Params) -> LlavaForConditionalGeneration:
    """The module whose parameters are ``params`` (traceable: usable under jit/vmap)."""
    graphdef, flat = _skeleton(cfg)
    missing = [n for _, _, n in flat if n not in params]
    if missing:
        raise EvoMergeInputError(f"VLM params: missing {missing[0]!r} (and {len(missing) - 1} more)")
    return nnx.merge(graphdef, nnx.from_flat_state([(p, v.replace(params[n])) for p, v, n in flat]))


def vlm_logits_of(cfg: LlavaConfig, params: Params, ids: jax.Array, pixel_values: jax.Array | None,
                  mask: jax.Array | None = None, at: jax.Array | None = None) -> jax.Array:
    """``LlavaForConditionalGeneration(params)(ids, pixel_values, mask, logits_at=at)``."""
    return vlm_model_of(cfg, params)(ids, pixel_values, mask, logits_at=at)


class VlmParts(NamedTuple):
    """A VLM's parameters in three pytrees; ``language`` has a Llama's own names (``model.layers.0...``)."""

    vision: Params
    projector: Params
    language: Params


def split_vlm_params(params: Params) -> VlmParts:
    """Split a flat VLM params dict by its prefixes (pure: the arrays are shared, not copied)."""
    parts: dict[str, Params] = {p: {} for p in PARTS}
    for name, value in params.items():
        head, _, rest = name.partition(".")
        if head not in parts or not rest:
            raise EvoMergeInputError(f"VLM params: {name!r} is under none of {', '.join(PARTS)}")
        parts[head][rest] = value
    return VlmParts(parts["vision_tower"], parts["multi_modal_projector"], parts["language_model"])


def join_vlm_params(parts: VlmParts) -> Params:
    """The inverse of :func:`split_vlm_params`."""
    out: Params = {}
    for prefix, part in zip(PARTS, parts, strict=True):
        out.update({f"{prefix}.{k}": v for k, v in part.items()})
    return out


def with_language_model(params: Params, language: Params) -> Params:
    """``params`` with its language model replaced by ``language`` (e.g. a merge of the VLM's LM and
    another Llama of the same shape); the vision tower and projector are kept as they are.

    ``language`` must have exactly the VLM's LM tensor names and shapes (a one-line error names the first
    that differs), so a Llama with another shape or tying can never be spliced in silently.
    """
    parts = split_vlm_params(params)
    for name, value in parts.language.items():
        if name not in language:
            raise EvoMergeInputError(f"language model: missing tensor {name!r}")
        if tuple(language[name].shape) != tuple(value.shape):
            raise EvoMergeInputError(f"language model: tensor {name!r} has shape {tuple(language[name].shape)}, "
                                     f"the VLM needs {tuple(value.shape)}")
    extra = sorted(set(language) - set(parts.language))
    if extra:
        raise EvoMergeInputError(f"language model: tensor {extra[0]!r} is not in the VLM's language model")
    return join_vlm_params(VlmParts(parts.vision, parts.projector, dict(language)))


# --- the language model with fixed image rows: what a merge of the LM alone changes --------------------


def image_rows(features: np.ndarray, input_ids: np.ndarray, image: np.ndarray, image_token_id: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Host side, once per data set: ``(rows [B, T, H], is_image [B, T])`` with row b's image-token
    positions filled by ``features[image[b]]`` in order (the :func:`splice_image_features` splice of
    one image per row), zeros elsewhere. With the vision tower and projector fixed (a merge of the
    language model alone) the features are computed once and every candidate reuses them."""
    feats = np.asarray(features)[np.asarray(image)]  # [B, N, H]
    is_image = np.asarray(input_ids) == image_token_id
    if (is_image.sum(1) != feats.shape[1]).any():
        raise EvoMergeInputError(f"input_ids: a row without exactly {feats.shape[1]} image tokens "
                                 f"(id {image_token_id})")
    rows = np.zeros(is_image.shape + (feats.shape[-1],), np.float32)
    rows[is_image] = feats.reshape(-1, feats.shape[-1])
    return rows, is_image


def spliced_logits(text_cfg: ModelConfig, lm_params: Params, ids: jax.Array, mask: jax.Array, at: jax.Array | None,
                   rows: jax.Array, is_image: jax.Array) -> jax.Array:
    """The VLM's logits from its language model ``lm_params`` (Llama names) and precomputed image ``rows``:

        embeds = where(is_image, rows, embed_tokens(ids));   logits = LM(inputs_embeds=embeds)

    equal to :func:`vlm_logits_of` when ``rows`` came from the same vision tower and projector."""
    from evojax_merge.models.functional import model_of

    lm = model_of(text_cfg, lm_params)
    embeds = lm.model.embed_tokens(ids)
    embeds = jnp.where(is_image[..., None], rows.astype(embeds.dtype), embeds)
    return lm(ids, mask, logits_at=at, inputs_embeds=embeds)[0]


@dataclasses.dataclass(frozen=True)
class SplicedLM:
    """A VLM's language model (a params dict, e.g. a merge) with the fixed vision tower's image rows of one
    data set: ``logits(ids, mask, at)`` as :class:`~evojax_merge.models.functional.ParamsModel`'s."""

    config: ModelConfig
    params: Params
    rows: jax.Array
    is_image: jax.Array

    def logits(self, ids: jax.Array, mask: jax.Array, at: jax.Array | None = None) -> jax.Array:
        return spliced_logits(self.config, self.params, ids, mask, at, self.rows, self.is_image)


jax.tree_util.register_dataclass(SplicedLM, data_fields=["params", "rows", "is_image"], meta_fields=["config"])
