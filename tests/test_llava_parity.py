"""The Flax LLaVA VLM against transformers' LlavaForConditionalGeneration on tiny random models.

Float32, eager attention: max |Δlogit| <= 1e-4 over the real tokens of a padded batch whose rows hold
1, 2 and 0 images (transformers' masked_scatter fills image tokens row-major across the batch).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig
from transformers import LlavaConfig as HFLlavaConfig
from transformers import LlavaForConditionalGeneration as HFLlava

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.models.llava import expand_image_tokens, vlm_logits_of, vlm_params
from evojax_merge.models.llava_io import load_llava

VOCAB, IMAGE_TOKEN = 100, 99
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=16,
              patch_size=4, projection_dim=16)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=VOCAB, max_position_embeddings=128)


def build_hf_llava(out_dir: Path, seed: int = 0, vision: dict | None = None, text: dict | None = None, **top):
    """A random transformers LLaVA saved to ``out_dir`` (eval mode, eager attention).

    Every parameter is redrawn at a scale where all paths matter (norm gains around 1, non-zero biases,
    class and position embeddings of the size of the patch embeddings), so a wrong path shows in the logits.
    """
    vc = CLIPVisionConfig(**{**VISION, **(vision or {})})
    tc = LlamaConfig(**{**TEXT, **(text or {})})
    cfg = HFLlavaConfig(vision_config=vc, text_config=tc, image_token_index=IMAGE_TOKEN, **top)
    torch.manual_seed(seed)
    model = HFLlava(cfg).eval()
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
            elif "embed" in name:
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5 * (1.0 if p.ndim == 2 else 3.0))
    model.save_pretrained(out_dir)
    return model


def vlm_batch(n_tokens: int, seed: int = 0):
    """Ids (image tokens expanded), right-padded mask and pixels: rows hold 1, 2 and 0 images."""
    rng = np.random.default_rng(seed)
    text = lambda n: rng.integers(1, IMAGE_TOKEN, n).tolist()  # noqa: E731
    rows = [text(2) + [IMAGE_TOKEN] + text(4),
            text(1) + [IMAGE_TOKEN] + text(2) + [IMAGE_TOKEN] + text(3),
            text(6)]
    expanded = [[t for tok in r for t in ([tok] * n_tokens if tok == IMAGE_TOKEN else [tok])] for r in rows]
    width = max(map(len, expanded))
    ids = np.zeros((3, width), np.int64)
    mask = np.zeros((3, width), np.int64)
    for i, r in enumerate(expanded):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    pixels = rng.normal(size=(3, 3, 16, 16)).astype(np.float32)
    return ids, mask, pixels


def hf_logits(model, ids, mask, pixels) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                     pixel_values=torch.from_numpy(pixels)).logits.numpy()


def max_valid_diff(a, b, mask) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b))[mask.astype(bool)].max())


CASES = {
    "default_-2": dict(),
    "full_multi_layer_gelu": dict(vision={"hidden_act": "gelu"}, vision_feature_select_strategy="full",
                                  vision_feature_layer=[0, -1], projector_hidden_act="quick_gelu"),
    "tied_last_layer": dict(text={"tie_word_embeddings": True}, tie_word_embeddings=True, vision_feature_layer=-1,
                            multimodal_projector_bias=False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(case, tmp_path):
    hf = build_hf_llava(tmp_path / case, seed=len(case), **CASES[case])
    model = load_llava(tmp_path / case)
    ids, mask, pixels = vlm_batch(model.config.num_image_tokens, seed=1)
    ref = hf_logits(hf, ids, mask, pixels)
    ours = model(jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask))
    assert ours.shape == ref.shape
    assert np.abs(ref).max() > 1.0  # the logits are not near zero, so 1e-4 is a real bound
    assert max_valid_diff(ours, ref, mask) <= 1e-4


def test_image_features_change_the_logits(tmp_path):
    """The splice is real: other pixels move the logits after the image tokens, not before them."""
    build_hf_llava(tmp_path / "m", seed=3)
    model = load_llava(tmp_path / "m")
    ids, mask, pixels = vlm_batch(model.config.num_image_tokens, seed=2)
    a = np.asarray(model(jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask)))
    b = np.asarray(model(jnp.asarray(ids), jnp.asarray(pixels[::-1].copy()), jnp.asarray(mask)))
    first_image = int(np.argmax(ids[0] == IMAGE_TOKEN))
    assert np.abs(a - b)[0, :first_image].max() == 0.0
    assert np.abs(a - b)[0, first_image:].max() > 1e-2


def test_vision_hidden_states_match_clip(tmp_path):
    hf = build_hf_llava(tmp_path / "m", seed=4)
    model = load_llava(tmp_path / "m")
    tower = CLIPVisionModel(CLIPVisionConfig(**VISION)).eval()
    tower.load_state_dict(hf.model.vision_tower.state_dict())
    pixels = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        ref = tower(pixel_values=torch.from_numpy(pixels), output_hidden_states=True).hidden_states
    ours = model.vision_tower.hidden_states(jnp.asarray(pixels))
    assert len(ours) == len(ref) == VISION["num_hidden_layers"] + 1
    for a, b in zip(ours, ref, strict=True):
        assert float(np.abs(np.asarray(a) - b.numpy()).max()) <= 1e-4


def test_pure_function_under_jit_equals_module(tmp_path):
    build_hf_llava(tmp_path / "m", seed=5)
    model = load_llava(tmp_path / "m")
    ids, mask, pixels = vlm_batch(model.config.num_image_tokens, seed=3)
    params = vlm_params(model)
    fn = jax.jit(lambda p, i, x, m: vlm_logits_of(model.config, p, i, x, m))
    a = fn(params, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask))
    b = model(jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask))
    assert float(jnp.abs(a - b).max()) <= 1e-5


def test_expand_image_tokens_matches_processor_count(tmp_path):
    build_hf_llava(tmp_path / "m", seed=6)
    cfg = load_llava(tmp_path / "m").config
    assert expand_image_tokens([5, IMAGE_TOKEN, 7], cfg) == [5] + [IMAGE_TOKEN] * 16 + [7]


# --- bad input: one line, naming the file or key ------------------------------------------------------


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def _edit_config(model_dir: Path, edit) -> None:
    path = model_dir / "config.json"
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))


def test_missing_files_are_one_line_errors(tmp_path):
    build_hf_llava(tmp_path / "m", seed=7)
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(EvoMergeInputError) as e:
        load_llava(tmp_path / "m")
    assert "model.safetensors" in _one_line(e)
    (tmp_path / "m" / "config.json").unlink()
    with pytest.raises(EvoMergeInputError) as e:
        load_llava(tmp_path / "m")
    assert "config.json" in _one_line(e)


@pytest.mark.parametrize("edit, needle", [
    (lambda r: r["vision_config"].pop("patch_size"), "vision_config.patch_size"),
    (lambda r: r["vision_config"].update(image_size=20), "position_embedding"),
    (lambda r: r["vision_config"].update(patch_size=5), "patch_size 5"),
    (lambda r: r["vision_config"].update(hidden_act="swish_x"), "swish_x"),
    (lambda r: r["vision_config"].update(model_type="siglip_vision_model"), "siglip_vision_model"),
    (lambda r: r.update(vision_feature_layer=-4), "vision_feature_layer"),
    (lambda r: r.update(vision_feature_select_strategy="pool"), "vision_feature_select_strategy"),
    (lambda r: r.pop("vision_config"), "vision_config"),
    (lambda r: r["vision_config"].update(num_hidden_layers=1), "encoder.layers.1"),
])
def test_bad_vision_config_is_one_line_error(edit, needle, tmp_path):
    build_hf_llava(tmp_path / "m", seed=8)
    _edit_config(tmp_path / "m", edit)
    with pytest.raises(EvoMergeInputError) as e:
        load_llava(tmp_path / "m")
    msg = _one_line(e)
    assert needle in msg
    assert "config.json" in msg or str(tmp_path / "m") in msg


def test_image_token_count_mismatch_is_one_line_error(tmp_path):
    build_hf_llava(tmp_path / "m", seed=9)
    model = load_llava(tmp_path / "m")
    ids, mask, pixels = vlm_batch(model.config.num_image_tokens, seed=4)
    with pytest.raises(EvoMergeInputError) as e:  # 3 images' tokens, 2 images
        model(jnp.asarray(ids), jnp.asarray(pixels[:2]), jnp.asarray(mask))
    assert "48 image tokens" in _one_line(e) and "expected 32" in str(e.value)
    with pytest.raises(EvoMergeInputError) as e:  # unexpanded: one token per image
        model(jnp.asarray(np.array([[3, IMAGE_TOKEN, 4]])), jnp.asarray(pixels[:1]))
    assert "1 image tokens" in _one_line(e)
    with pytest.raises(EvoMergeInputError):  # image tokens without pixels
        model(jnp.asarray(ids), None, jnp.asarray(mask))
