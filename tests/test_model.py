"""The Flax decoder against transformers on tiny random models (float32: max |Δlogit| <= 1e-4)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_oracles import build_hf_model, random_batch

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.models import causal_lm_loss, load_config, load_model

ARCHS = ["llama", "llama3", "mistral", "qwen2"]


def _valid_max_diff(a, b, mask):
    return float(np.abs(a - b)[mask.astype(bool)].max())


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers_on_padded_batch(arch, tmp_path):
    hf = build_hf_model(arch, tmp_path / arch, seed=1)
    ids, mask = random_batch(hf.config.vocab_size, batch=3, length=11)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    model = load_model(tmp_path / arch)
    ours, _ = model(jnp.asarray(ids), jnp.asarray(mask))
    assert _valid_max_diff(np.asarray(ours), ref, mask) <= 1e-4


def test_answer_only_loss_matches_transformers(tmp_path):
    hf = build_hf_model("llama", tmp_path / "m", seed=2)
    ids, mask = random_batch(hf.config.vocab_size, batch=3, length=11, seed=3)
    labels = np.where(mask == 1, ids, -100)
    labels[:, :4] = -100  # the prompt: no loss there
    with torch.no_grad():
        ref = hf(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            labels=torch.from_numpy(labels),
        ).loss.item()
    logits, _ = load_model(tmp_path / "m")(jnp.asarray(ids), jnp.asarray(mask))
    ours = float(causal_lm_loss(logits, jnp.asarray(labels)))
    assert abs(ours - ref) <= 1e-5


def test_sharded_checkpoint_loads_identically(tmp_path):
    hf = build_hf_model("llama", tmp_path / "single", seed=4)
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    ids, mask = random_batch(hf.config.vocab_size)
    a, _ = load_model(tmp_path / "single")(jnp.asarray(ids), jnp.asarray(mask))
    b, _ = load_model(tmp_path / "sharded")(jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_tracks_float32(tmp_path):
    hf = build_hf_model("qwen2", tmp_path / "m", seed=5)
    ids, mask = random_batch(hf.config.vocab_size)
    f32, _ = load_model(tmp_path / "m")(jnp.asarray(ids), jnp.asarray(mask))
    model16 = load_model(tmp_path / "m", dtype="bfloat16")
    assert model16.model.layers[0].self_attn.q_proj.weight[...].dtype == jnp.bfloat16
    b16, _ = model16(jnp.asarray(ids), jnp.asarray(mask))
    diff = _valid_max_diff(np.asarray(b16), np.asarray(f32), mask)
    assert 0 < diff <= 0.05 * float(np.abs(np.asarray(f32)).max())


def test_unsupported_architecture_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    with pytest.raises(EvoMergeInputError, match=r"config\.json: unsupported architecture model_type='gpt2'"):
        load_config(tmp_path)


def test_missing_weights_names_the_directory(tmp_path):
    build_hf_model("llama", tmp_path / "m", seed=6)
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(EvoMergeInputError, match="no model.safetensors"):
        load_model(tmp_path / "m")


def test_logits_at_answer_positions_give_the_same_loss(tmp_path):
    """answer_loss on logits taken only at the answer positions == the full answer-only CE."""
    from evojax_merge.models.loss import answer_loss, answer_targets

    hf = build_hf_model("llama", tmp_path / "m", seed=7)
    ids, mask = random_batch(hf.config.vocab_size, batch=3, length=11, seed=4)
    labels = np.where(mask == 1, ids, -100)
    labels[:, :5] = -100
    model = load_model(tmp_path / "m")
    full, _ = model(jnp.asarray(ids), jnp.asarray(mask))
    t = answer_targets(labels, k=6)
    at, _ = model(jnp.asarray(ids), jnp.asarray(mask), logits_at=jnp.asarray(t["answer_pos"]))
    assert at.shape == (3, 6, hf.config.vocab_size)
    ref = float(causal_lm_loss(full, jnp.asarray(labels)))
    assert abs(float(answer_loss(at, t["answer_tgt"], t["answer_mask"])) - ref) <= 1e-6


@pytest.mark.parametrize("dim,theta,llama3", [(64, 100000.0, None), (64, 10000.0, None), (128, 500000.0, None),
                                              (128, 1000000.0, None), (128, 500000.0, (8.0, 1.0, 4.0, 8192))])
def test_rope_inv_freq_is_bitwise_transformers(dim, theta, llama3):
    """The float32 power correctly rounded, as torch's vectorised pow nearly always gives it; numpy's float32
    pow is an ulp off for several entries (5 of 32 at 64/1e5, SmolLM2's), and at position p that is p ulps of
    angle. Torch's own pow is an ulp off the correct rounding in rare entries (1 of 64 at 128/1e6)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from evojax_merge.models.config import ModelConfig

    rope = {"rope_type": "default", "rope_theta": theta}
    if llama3 is not None:
        f, lo, hi, old = llama3
        rope = {"rope_type": "llama3", "rope_theta": theta, "factor": f, "low_freq_factor": lo,
                "high_freq_factor": hi, "original_max_position_embeddings": old}
    hf = LlamaConfig(hidden_size=dim * 4, num_attention_heads=4, head_dim=dim, rope_parameters=rope)
    ref = LlamaRotaryEmbedding(hf).inv_freq.numpy()
    ours = ModelConfig(head_dim=dim, rope_theta=theta, rope_llama3=llama3).inv_freq()
    assert ours.dtype == np.float32
    np.testing.assert_array_max_ulp(ours, ref, maxulp=1)
    assert (ours != ref).sum() <= 1
