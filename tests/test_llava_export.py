"""Export of the Flax LLaVA VLM to an HF directory, and the {vision, projector, language} split for merges.

Oracle: transformers' ``LlavaForConditionalGeneration.from_pretrained`` on the exported directory (no
missing or unexpected keys, same logits), and transformers' ``LlamaForCausalLM`` for the merged LM.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from test_llava_parity import IMAGE_TOKEN, TEXT, build_hf_llava, hf_logits, max_valid_diff, vlm_batch
from transformers import LlamaConfig
from transformers import LlamaForCausalLM as HFLlama
from transformers import LlavaForConditionalGeneration as HFLlava

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.models.io import load_model, model_weights
from evojax_merge.models.llava import (
    join_vlm_params,
    split_vlm_params,
    vlm_logits_of,
    vlm_params,
    with_language_model,
)
from evojax_merge.models.llava_io import load_llava, save_llava, save_llava_params


def _from_pretrained(model_dir):
    model, info = HFLlava.from_pretrained(model_dir, output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


@pytest.mark.parametrize("case", [dict(), dict(text={"tie_word_embeddings": True}, tie_word_embeddings=True,
                                               vision_feature_select_strategy="full", vision_feature_layer=[-3, -2])])
def test_export_round_trip_through_transformers(case, tmp_path):
    hf = build_hf_llava(tmp_path / "src", seed=11, **case)
    model = load_llava(tmp_path / "src")
    save_llava(model, tmp_path / "out")
    back = _from_pretrained(tmp_path / "out")
    assert back.config.vision_feature_select_strategy == hf.config.vision_feature_select_strategy
    assert back.config.vision_feature_layer == hf.config.vision_feature_layer
    assert back.config.tie_word_embeddings == hf.config.tie_word_embeddings
    ids, mask, pixels = vlm_batch(model.config.num_image_tokens, seed=5)
    ref = hf_logits(hf, ids, mask, pixels)
    assert max_valid_diff(hf_logits(back, ids, mask, pixels), ref, mask) == 0.0  # the same weights, bit for bit
    ours = model(jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask))
    assert max_valid_diff(ours, ref, mask) <= 1e-4
    again = load_llava(tmp_path / "out")  # and our own loader reads our export
    assert max_valid_diff(again(jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask)), ours, mask) == 0.0


@pytest.mark.parametrize("layout", ["in_memory", "legacy_vision_model"])
def test_other_checkpoint_layouts_load_identically(layout, tmp_path):
    hf = build_hf_llava(tmp_path / "src", seed=12)
    tensors = load_file(str(tmp_path / "src" / "model.safetensors"))
    if layout == "in_memory":
        renamed = {k: v.numpy().copy() for k, v in hf.state_dict().items()}
    else:
        renamed = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in tensors.items()}
        renamed["vision_tower.vision_model.embeddings.position_ids"] = np.arange(17)[None]
    (tmp_path / "alt").mkdir()
    (tmp_path / "alt" / "config.json").write_text((tmp_path / "src" / "config.json").read_text())
    save_file(renamed, str(tmp_path / "alt" / "model.safetensors"))
    a, b = vlm_params(load_llava(tmp_path / "src")), vlm_params(load_llava(tmp_path / "alt"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


def test_unexpected_tensor_is_one_line_error(tmp_path):
    build_hf_llava(tmp_path / "src", seed=13)
    tensors = load_file(str(tmp_path / "src" / "model.safetensors"))
    tensors["vision_tower.encoder.layers.7.mlp.fc1.weight"] = np.zeros((2, 2), np.float32)
    save_file(tensors, str(tmp_path / "src" / "model.safetensors"))
    with pytest.raises(EvoMergeInputError, match=r"layers\.7\.mlp\.fc1") as e:
        load_llava(tmp_path / "src")
    assert "\n" not in str(e.value)


def _other_llama(tmp_path, seed: int):
    torch.manual_seed(seed)
    other = HFLlama(LlamaConfig(**TEXT)).eval()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.3 * torch.randn_like(p))
    other.save_pretrained(tmp_path / "llama")
    return load_model(tmp_path / "llama")


def test_split_join_and_language_model_merge(tmp_path):
    """Merge the VLM's LM with another Llama of the same shape (a plain average here); vision and projector
    stay the VLM's; the merged VLM exports, and transformers' LLaVA and Llama agree with it."""
    build_hf_llava(tmp_path / "vlm", seed=14)
    vlm = load_llava(tmp_path / "vlm")
    params = vlm_params(vlm)
    parts = split_vlm_params(params)
    assert join_vlm_params(parts) == params  # the same arrays, not copies
    llama = _other_llama(tmp_path, seed=15)
    other = model_weights(llama)
    assert parts.language.keys() == other.keys()  # the LM part is a Llama in the Llama's own names
    merged_lm = jax.tree.map(lambda a, b: 0.5 * a + 0.5 * b, parts.language, dict(other))
    merged = with_language_model(params, merged_lm)
    new = split_vlm_params(merged)
    assert new.vision is not parts.vision and all(new.vision[k] is parts.vision[k] for k in parts.vision)
    assert all(new.projector[k] is parts.projector[k] for k in parts.projector)
    key = "model.layers.1.mlp.down_proj.weight"
    np.testing.assert_allclose(new.language[key], 0.5 * (parts.language[key] + other[key]), rtol=0, atol=0)

    save_llava_params(vlm.config, merged, tmp_path / "merged")
    back = _from_pretrained(tmp_path / "merged")
    ids, mask, pixels = vlm_batch(vlm.config.num_image_tokens, seed=6)
    ours = vlm_logits_of(vlm.config, merged, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask))
    ref = hf_logits(back, ids, mask, pixels)
    assert max_valid_diff(ours, ref, mask) <= 1e-4
    assert max_valid_diff(ours, vlm(jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask)), mask) > 1e-2
    # text-only rows: the merged VLM is the merged Llama (transformers' Llama on the merged LM weights)
    text_ids, text_mask = ids[2:], mask[2:]
    assert not (text_ids == IMAGE_TOKEN).any()
    hf_llama = HFLlama(LlamaConfig(**TEXT)).eval()
    hf_llama.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in merged_lm.items()})
    with torch.no_grad():
        lm_ref = hf_llama(input_ids=torch.from_numpy(text_ids), attention_mask=torch.from_numpy(text_mask)).logits
    assert max_valid_diff(ours[2:], lm_ref.numpy(), text_mask) <= 1e-4


def test_language_model_of_another_shape_is_refused(tmp_path):
    build_hf_llava(tmp_path / "vlm", seed=16)
    params = vlm_params(load_llava(tmp_path / "vlm"))
    lm = dict(split_vlm_params(params).language)
    wrong = {**lm, "model.norm.weight": jnp.ones((48,))}
    with pytest.raises(EvoMergeInputError, match=r"model\.norm\.weight.*\(48,\)"):
        with_language_model(params, wrong)
    with pytest.raises(EvoMergeInputError, match="lm_head"):
        with_language_model(params, {k: v for k, v in lm.items() if k != "lm_head.weight"})
    with pytest.raises(EvoMergeInputError, match="not_a_tensor"):
        with_language_model(params, {**lm, "not_a_tensor": jnp.ones(1)})
    with pytest.raises(EvoMergeInputError, match="stray"):
        split_vlm_params({**params, "stray.weight": jnp.ones(1)})
