"""The exported merged adapter, loaded by PEFT on the real HF checkpoint, is the genome the search scored."""

from __future__ import annotations

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.numpy import load_file, save_file
from transformers import AutoModelForCausalLM

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora import load_pool, save_peft_adapter
from evojax_merge.lora.export import source_weights_dtype
from evojax_merge.merge import evo_merge
from evojax_merge.models import load_model
from evojax_merge.search.fitness import MergeEvaluator, ValidationConfig

BASE_NAME = "my-org/tiny-llama-base"


def _sources(adapters, tmp_path, dtype=np.float32, **config):
    """Copies of the fixture's adapters with a named base model (and other fields), weights in ``dtype``."""
    out = []
    for i, a in enumerate(adapters):
        d = shutil.copytree(a, tmp_path / f"src_{i}")
        cfg = json.loads((d / "adapter_config.json").read_text())
        cfg.update(base_model_name_or_path=BASE_NAME, lora_dropout=0.05, task_type="CAUSAL_LM", **config)
        (d / "adapter_config.json").write_text(json.dumps(cfg))
        w = load_file(str(d / "adapter_model.safetensors"))
        save_file({k: v.astype(dtype) for k, v in w.items()}, str(d / "adapter_model.safetensors"))
        out.append(d)
    return out


def _examples(vocab: int, rows: int = 6, length: int = 12, seed: int = 3) -> dict[str, np.ndarray]:
    """Right-padded rows; the last 3 real tokens of each are the answer (labels), the rest -100."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(rows, length)).astype(np.int32)
    mask = np.zeros((rows, length), np.int32)
    labels = np.full((rows, length), -100, np.int32)
    for b in range(rows):
        n = length - (b % 3)
        mask[b, :n] = 1
        labels[b, n - 3 : n] = ids[b, n - 3 : n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.slow
def test_peft_loss_of_the_export_equals_the_fitness_ce(llama_with_pool, tmp_path):
    base_dir, adapters, _ = llama_with_pool
    sources = _sources(adapters, tmp_path, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"])
    model = load_model(base_dir)
    pool = load_pool(sources, model.config)
    examples = _examples(model.config.vocab_size)
    evaluator = MergeEvaluator(model, pool.stack, examples, ValidationConfig(batch_size=3, num_batches=2))
    rng = np.random.default_rng(0)
    alpha = rng.uniform(0.2, 0.9, pool.num_adapters).astype(np.float32)
    beta = rng.uniform(-1.0, 1.5, pool.num_adapters).astype(np.float32)
    ce = float(evaluator.evaluate(alpha[None], beta[None])[0])

    merged = evo_merge(pool.stack, evaluator.magnitudes, jnp.asarray(alpha), jnp.asarray(beta), prune="A")
    out = save_peft_adapter(merged, tmp_path / "merged", base_model_name_or_path="ignored", source_dirs=pool.paths)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == BASE_NAME
    assert cfg["task_type"] == "CAUSAL_LM" and cfg["lora_dropout"] == 0.05
    assert cfg["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert source_weights_dtype(out) == "float32"

    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out).eval()
    losses = []
    with torch.no_grad():
        for rows in evaluator.batch_index(0):
            batch = {k: torch.tensor(v[rows]).long() for k, v in examples.items()}
            losses.append(float(peft_model(**batch).loss))
    print(f"PEFT loss {np.mean(losses):.8f}  fitness CE {ce:.8f}  |delta| {abs(np.mean(losses) - ce):.2e}")
    assert abs(np.mean(losses) - ce) < 1e-4, (np.mean(losses), ce)
    # and the genome matters: the base alone scores differently
    assert abs(evaluator.evaluate_adapter(None) - ce) > 1e-3


@pytest.mark.parametrize("dtype,name,code", [(np.float16, "float16", "F16"), (np.float32, "float32", "F32")])
def test_export_keeps_the_pool_dtype(llama_with_pool, tmp_path, dtype, name, code):
    base_dir, adapters, _ = llama_with_pool
    sources = _sources(adapters[:3], tmp_path, dtype=dtype, target_modules="all-linear", use_rslora=True)
    model = load_model(base_dir)
    pool = load_pool(sources, model.config)
    beta = jnp.asarray([0.5, -0.25, 1.0])
    merged = evo_merge(pool.stack, None, jnp.ones(3), beta, prune="none")
    out = save_peft_adapter(merged, tmp_path / "merged", source_dirs=pool.paths)
    with safe_open(str(out / "adapter_model.safetensors"), framework="numpy") as fh:
        assert {fh.get_slice(k).get_dtype() for k in fh.keys()} == {code}
        key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
        np.testing.assert_array_equal(fh.get_tensor(key), np.asarray(merged.A["layers.0.self_attn.q_proj"], dtype))
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["target_modules"] == "all-linear" and cfg["use_rslora"] is True
    # rsLoRA: PEFT's scale is lora_alpha / sqrt(r); it must equal the merged scale
    assert cfg["lora_alpha"] / np.sqrt(cfg["r"]) == pytest.approx(float(merged.scale), rel=1e-6)
    assert source_weights_dtype(out) == name


def test_export_without_sources_and_bad_source(llama_with_pool, tmp_path):
    base_dir, adapters, _ = llama_with_pool
    model = load_model(base_dir)
    pool = load_pool(adapters[:2], model.config)
    merged = evo_merge(pool.stack, None, jnp.ones(2), jnp.asarray([0.5, 0.5]), prune="none")
    out = save_peft_adapter(merged, tmp_path / "plain", base_model_name_or_path=str(base_dir))
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(base_dir) and cfg["task_type"] == "CAUSAL_LM"
    assert cfg["lora_alpha"] == pytest.approx(float(merged.scale) * cfg["r"])
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{}")
    (broken / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(EvoMergeInputError, match="broken/adapter_model.safetensors: unreadable safetensors"):
        save_peft_adapter(merged, tmp_path / "never", source_dirs=[broken])
    assert not (tmp_path / "never").exists()
