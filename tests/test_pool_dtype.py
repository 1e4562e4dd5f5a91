"""The pool read lazily, module by module, straight into its target dtype; dtype mixing errors."""

from __future__ import annotations

import json
import tracemalloc

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import PROJECTIONS, module_path
from evojax_merge.lora.pool import default_pool_dtype, load_pool, read_adapter
from evojax_merge.models.config import ModelConfig

CFG = ModelConfig(vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=8, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32)
R = 8


def write_adapter(path, seed: int, dtype, scale: float = 1.0) -> dict[str, np.ndarray]:
    """A PEFT adapter directory with every module, tensors stored in ``dtype``; returns them."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(CFG.num_hidden_layers):
        for proj, (d_out, d_in) in CFG.module_shapes().items():
            m = module_path(layer, proj)
            tensors[f"base_model.model.model.{m}.lora_A.weight"] = (scale * rng.normal(size=(R, d_in))).astype(dtype)
            tensors[f"base_model.model.model.{m}.lora_B.weight"] = (scale * rng.normal(size=(d_out, R))).astype(dtype)
    path.mkdir(parents=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": R, "lora_alpha": 2 * R, "target_modules": list(PROJECTIONS)}))
    return tensors


def test_bf16_adapters_load_bitwise_into_bf16_and_exactly_into_f32(tmp_path):
    files = [write_adapter(tmp_path / f"a{i}", i, ml_dtypes.bfloat16) for i in range(3)]
    bf = load_pool(str(tmp_path / "a*"), CFG, dtype="bfloat16")
    f32 = load_pool(str(tmp_path / "a*"), CFG, dtype="float32")
    m = module_path(2, "down_proj")
    want_a = np.stack([f[f"base_model.model.model.{m}.lora_A.weight"] for f in files])
    assert bf.stack.A[m].dtype == ml_dtypes.bfloat16 and f32.stack.A[m].dtype == np.float32
    np.testing.assert_array_equal(np.asarray(bf.stack.A[m]).view(np.uint16), want_a.view(np.uint16))
    np.testing.assert_array_equal(np.asarray(f32.stack.A[m]), want_a.astype(np.float32))
    assert len(bf.stack.A) == 7 * CFG.num_hidden_layers
    assert default_pool_dtype() == "float32"  # this CPU; bf16 on accelerators
    assert load_pool(str(tmp_path / "a*"), CFG).stack.B[m].dtype == np.float32


def test_f32_adapters_cast_to_bf16_round_to_nearest(tmp_path):
    files = [write_adapter(tmp_path / f"a{i}", i, np.float32) for i in range(2)]
    pool = load_pool(str(tmp_path / "a*"), CFG, dtype="bfloat16")
    m = module_path(0, "q_proj")
    want = np.stack([f[f"base_model.model.model.{m}.lora_B.weight"] for f in files]).astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(np.asarray(pool.stack.B[m]).view(np.uint16), want.view(np.uint16))
    key = f"base_model.model.model.{m}.lora_B.weight"
    np.testing.assert_array_equal(read_adapter(tmp_path / "a1", CFG).B[m], files[1][key])


def test_pool_mixing_float16_and_bfloat16_names_the_adapter(tmp_path):
    write_adapter(tmp_path / "a0", 0, np.float16)
    write_adapter(tmp_path / "a1", 1, np.float32)
    write_adapter(tmp_path / "a2", 2, ml_dtypes.bfloat16)
    with pytest.raises(EvoMergeInputError) as err:
        load_pool(str(tmp_path / "a*"), CFG, dtype="bfloat16")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "a2") in msg and "bfloat16" in msg and "float16" in msg


def test_values_overflowing_the_target_dtype_are_named(tmp_path):
    write_adapter(tmp_path / "a0", 0, np.float32)
    write_adapter(tmp_path / "a1", 1, np.float32, scale=1e6)  # |x| > 65504: inf in float16
    with pytest.raises(EvoMergeInputError, match=r"a1: .*lora_A\.weight' overflows float16"):
        load_pool(str(tmp_path / "a*"), CFG, dtype="float16")
    with pytest.raises(EvoMergeInputError, match="pool dtype 'int8'"):
        load_pool(str(tmp_path / "a*"), CFG, dtype="int8")


def test_host_peak_is_one_module_stack_not_the_pool(tmp_path):
    """tracemalloc sees numpy's host buffers: beyond what it keeps (the pool itself), the lazy load's
    transient host memory is a few module stacks, never the whole pool (the old load read every
    adapter as float32 first, then stacked: peak > 2x the pool)."""
    n = 8
    for i in range(n):
        write_adapter(tmp_path / f"a{i:02d}", i, np.float32)
    load_pool(str(tmp_path / "a00"), CFG, dtype="float32")  # one-time imports and caches, not measured
    pool_bytes = n * sum(R * (i + o) * 4 for o, i in CFG.module_shapes().values()) * CFG.num_hidden_layers
    biggest_module = n * R * max(i for _, i in CFG.module_shapes().values()) * 4
    tracemalloc.start()
    try:
        pool = load_pool(str(tmp_path / "a*"), CFG, dtype="float32")
        held, peak = tracemalloc.get_traced_memory()
        peak -= held  # on a CPU device_put may keep the host buffer as the device array: that is the pool
    finally:
        tracemalloc.stop()
    assert pool.num_adapters == n
    assert peak < pool_bytes / 4, f"host peak {peak} B for a {pool_bytes} B pool"
    assert peak < 4 * biggest_module + 256_000, f"host peak {peak} B, one module stack {biggest_module} B"
