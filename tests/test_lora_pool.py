"""LoraPool against PEFT: per-adapter logits, merged export round trip, and bad input."""

import json
import logging
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_oracles import build_hf_model, build_peft_adapter, random_batch
from peft import PeftModel
from safetensors.numpy import load_file, save_file

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora import LoraAdapter, load_pool, save_peft_adapter
from evojax_merge.models import load_config, load_model


def _peft_logits(base_dir, adapter_dir, ids, mask):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    peft_model = PeftModel.from_pretrained(hf, adapter_dir).eval()
    with torch.no_grad():
        return peft_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()


def test_every_adapter_matches_peft(llama_with_pool):
    base_dir, adapter_dirs, _ = llama_with_pool
    cfg = load_config(base_dir)
    pool = load_pool(adapter_dirs, cfg)
    assert pool.num_adapters == 5 and pool.rank == 4
    assert pool.stack.A["layers.1.mlp.down_proj"].shape == (5, 4, cfg.intermediate_size)
    assert pool.stack.B["layers.0.self_attn.k_proj"].shape == (5, cfg.num_key_value_heads * cfg.head_dim, 4)
    model = load_model(base_dir)
    ids, mask = random_batch(cfg.vocab_size, seed=7)
    plain, _ = model(jnp.asarray(ids), jnp.asarray(mask))
    for i, d in enumerate(adapter_dirs):
        ours, _ = model(jnp.asarray(ids), jnp.asarray(mask), lora=pool.stack.adapter(i))
        ref = _peft_logits(base_dir, d, ids, mask)
        valid = mask.astype(bool)
        assert np.abs(np.asarray(ours) - ref)[valid].max() <= 1e-4
        # the adapter really changes the output, so the check above is not vacuous
        assert np.abs(np.asarray(ours) - np.asarray(plain))[valid].max() > 1e-2


def test_glob_loads_sorted(llama_with_pool):
    base_dir, adapter_dirs, _ = llama_with_pool
    pool = load_pool(str(adapter_dirs[0].parent / "adapter_*"), load_config(base_dir))
    assert pool.names == tuple(f"adapter_{i}" for i in range(5))
    assert pool.without("adapter_2").names == ("adapter_0", "adapter_1", "adapter_3", "adapter_4")


def test_merged_adapter_export_reloads_in_peft(llama_with_pool, tmp_path):
    base_dir, adapter_dirs, _ = llama_with_pool
    cfg = load_config(base_dir)
    pool = load_pool(adapter_dirs, cfg)
    beta = jnp.asarray([0.7, -0.3, 0.5, 1.2, -0.9])
    merged = LoraAdapter(
        A={m: jnp.einsum("n,nrd->rd", beta, a) for m, a in pool.stack.A.items()},
        B={m: jnp.einsum("n,nor->or", beta, b) for m, b in pool.stack.B.items()},
        scale=pool.stack.scale[0],
    )
    out = save_peft_adapter(merged, tmp_path / "merged", base_model_name_or_path=str(base_dir))
    ids, mask = random_batch(cfg.vocab_size, seed=8)
    ours, _ = load_model(base_dir)(jnp.asarray(ids), jnp.asarray(mask), lora=merged)
    ref = _peft_logits(base_dir, out, ids, mask)
    assert np.abs(np.asarray(ours) - ref)[mask.astype(bool)].max() <= 1e-4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_rslora_scale(tmp_path, llama_with_pool):
    base_dir, _, base = llama_with_pool
    d = build_peft_adapter(base, tmp_path / "rs", seed=3, r=4, alpha=8.0, use_rslora=True)
    pool = load_pool([d], load_config(base_dir))
    assert float(pool.stack.scale[0]) == pytest.approx(8.0 / 2.0)
    ids, mask = random_batch(97, seed=9)
    ours, _ = load_model(base_dir)(jnp.asarray(ids), jnp.asarray(mask), lora=pool.stack.adapter(0))
    assert np.abs(np.asarray(ours) - _peft_logits(base_dir, d, ids, mask))[mask.astype(bool)].max() <= 1e-4


def test_missing_module_contributes_zero_with_warning(tmp_path, llama_with_pool, caplog):
    base_dir, adapter_dirs, base = llama_with_pool
    partial = build_peft_adapter(base, tmp_path / "partial", seed=4, targets=["q_proj", "v_proj"])
    with caplog.at_level(logging.WARNING):
        pool = load_pool([adapter_dirs[0], partial], load_config(base_dir))
    assert "partial" in caplog.text and "layers.0.mlp.down_proj" in caplog.text
    assert float(jnp.abs(pool.stack.A["layers.0.mlp.down_proj"][1]).max()) == 0.0
    assert float(jnp.abs(pool.stack.A["layers.0.self_attn.q_proj"][1]).max()) > 0.0


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_tensor(adapter_dir, key_part, fn):
    f = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(f)
    key = next(k for k in tensors if key_part in k)
    tensors[key] = fn(tensors[key])
    save_file(tensors, f)


def _with_nan(t):
    return np.where(np.arange(t.size).reshape(t.shape) == 3, np.nan, t)


def test_bad_adapters_get_one_line_errors(tmp_path, llama_with_pool):
    base_dir, adapter_dirs, base = llama_with_pool
    cfg = load_config(base_dir)

    missing = _copy(adapter_dirs[0], tmp_path / "missing")
    (missing / "adapter_model.safetensors").unlink()
    with pytest.raises(EvoMergeInputError, match=r"missing.*: missing adapter_model\.safetensors") as e:
        load_pool([adapter_dirs[1], missing], cfg)
    assert "\n" not in str(e.value)

    other_rank = build_peft_adapter(base, tmp_path / "rank8", seed=5, r=8)
    with pytest.raises(EvoMergeInputError, match=r"rank8: rank mismatch: r=8"):
        load_pool([adapter_dirs[0], other_rank], cfg)

    nan = _copy(adapter_dirs[0], tmp_path / "nan")
    _edit_tensor(nan, "layers.1.mlp.up_proj.lora_B", _with_nan)
    key = r"'base_model\.model\.model\.layers\.1\.mlp\.up_proj\.lora_B"
    with pytest.raises(EvoMergeInputError, match=r"nan: non-finite values .* " + key):
        load_pool([nan], cfg)

    wrong_shape = _copy(adapter_dirs[0], tmp_path / "wrong_shape")
    _edit_tensor(wrong_shape, "layers.0.self_attn.q_proj.lora_A", lambda t: np.zeros((4, 63), np.float32))
    expected = r"wrong_shape: .*q_proj.* has shape \(4, 63\), the base model's q_proj needs \(4, 64\)"
    with pytest.raises(EvoMergeInputError, match=expected):
        load_pool([wrong_shape], cfg)

    bad_config = _copy(adapter_dirs[0], tmp_path / "bad_config")
    (bad_config / "adapter_config.json").write_text("{not json")
    with pytest.raises(EvoMergeInputError, match=r"bad_config/adapter_config\.json: malformed JSON"):
        load_pool([bad_config], cfg)

    with pytest.raises(EvoMergeInputError, match=r"nowhere: adapter directory does not exist"):
        load_pool([tmp_path / "nowhere"], cfg)

    dora = _copy(adapter_dirs[0], tmp_path / "dora")
    conf = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**conf, "use_dora": True}))
    with pytest.raises(EvoMergeInputError, match="dora: DoRA adapters are not supported"):
        load_pool([dora], cfg)


def test_adapter_for_another_base_is_rejected(tmp_path, llama_with_pool):
    _, adapter_dirs, _ = llama_with_pool
    other = build_hf_model("llama", tmp_path / "wide", seed=1, hidden_size=32, intermediate_size=48)
    del other
    with pytest.raises(EvoMergeInputError, match="the base model's"):
        load_pool([adapter_dirs[0]], load_config(tmp_path / "wide"))
