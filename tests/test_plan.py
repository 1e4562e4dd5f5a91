"""bench --plan: a compile-time plan on abstract shapes, checked against XLA, a hand count and a
measured run on this CPU; its bad-input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import pytest

from evojax_merge.bench.plan import (
    NAMED_SHAPES,
    Workload,
    abstract_call,
    analytic_flops,
    check_on_host,
    make_plan,
    resolve_model,
)
from evojax_merge.errors import EvoMergeInputError

pytestmark = pytest.mark.slow  # compiles and times

TINY = {"model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 160,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}
W = Workload(adapters=12, rank=4, population=6, examples=16, seq=64, batch=8, answer_tokens=16,
             dtype="float32", pool_dtype="float32")


def test_named_shapes_are_the_real_models():
    cfg = resolve_model("llama-3.1-8b")
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size) == (4096, 32, 14336, 128256)
    assert cfg.num_key_value_heads == 8 and cfg.dtype == "bfloat16" and cfg.rope_llama3 == (8.0, 1.0, 4.0, 8192)
    # 8.03e9 parameters, as published
    n = sum(o * i for o, i in cfg.module_shapes().values()) * 32 + 2 * 128256 * 4096 + 4096 * 65
    assert abs(n - 8.03e9) < 0.01e9
    assert resolve_model("Llama-3.2-1B").tie_word_embeddings
    assert set(NAMED_SHAPES) >= {"llama-3.1-8b", "llama-3.2-1b", "bench-tiny"}


def test_config_json_path_and_its_errors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    assert resolve_model(str(tmp_path)).hidden_size == 64
    assert resolve_model(str(tmp_path / "config.json")).hidden_size == 64
    with pytest.raises(EvoMergeInputError, match=r"unknown model 'llama-9b'.*llama-3.1-8b") as err:
        resolve_model("llama-9b")
    assert "\n" not in str(err.value)
    broken = {k: v for k, v in TINY.items() if k != "intermediate_size"}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(EvoMergeInputError, match=r"broken.json: missing key 'intermediate_size'"):
        resolve_model(str(tmp_path / "broken.json"))
    with pytest.raises(EvoMergeInputError, match="no such config.json"):
        resolve_model(str(tmp_path / "nope.json"))


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "evojax_merge.bench", "--plan", "gpt-5"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: ")
    assert "'gpt-5'" in proc.stderr


def test_abstract_inputs_allocate_nothing():
    cfg = resolve_model("llama-3.1-8b")
    _, args = abstract_call(cfg, Workload(), 20)
    leaves = jax.tree.leaves(args)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    params, stack, mags = args[0], args[1], args[2]
    assert params["lm_head"].shape == (128256, 4096)
    m = "layers.31.mlp.down_proj"
    assert stack.A[m].shape == (100, 8, 14336) and stack.A[m].dtype == jax.numpy.bfloat16
    assert mags["A"][m].shape == (100, 8 * 14336) and mags["A"][m].dtype == jax.numpy.bfloat16  # sorted |A|, pool dtype


def test_plan_figures_and_fit_verdict(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    cfg = resolve_model(str(tmp_path), dtype="float32")
    lines = []
    out = make_plan(cfg, W, chunks=(1, 6), mfu=0.4, log=lines.append)
    # XLA's count of one generation against the hand count (matmuls only; the rest is < 5%)
    assert out["flops_per_generation"] == pytest.approx(analytic_flops(cfg, W), rel=0.05)
    assert out["h100_seconds_per_generation"] == pytest.approx(out["flops_per_generation"] / (0.4 * 989.4e12))
    for c in (1, 6):
        fig = out["chunks"][c]
        assert fig["argument_bytes"] >= out["weights_bytes"] + out["pool_bytes"] + out["magnitudes_bytes"]
        assert fig["temp_bytes"] > 0 and fig["fits"]
    assert out["chunks"][6]["temp_bytes"] > out["chunks"][1]["temp_bytes"]  # the whole population's activations
    assert out["largest_fitting_chunk"] == 6
    assert any(line.startswith("verdict: fits") for line in lines)
    small = make_plan(cfg, W, chunks=(1,), device_bytes=1e5, log=lines.append)
    assert small["largest_fitting_chunk"] is None and lines[-1].startswith("verdict: does not fit")


def test_prediction_within_2x_of_a_measured_run_on_this_cpu():
    """The plan's FLOPs for a whole generation (10 candidates x 2 batches), at the rate this host
    reaches on one candidate and one batch, against the real population call timed here
    (population_chunk=1, the CPU setting). Timings are noisy on a shared machine; both sides take
    the best of several runs."""
    cfg = resolve_model("bench-tiny", dtype="float32")
    w = Workload(adapters=50, population=10, examples=32, batch=16, seq=128, answer_tokens=64,
                 dtype="float32", pool_dtype="float32")
    res = check_on_host(cfg, w, chunk=1, repeats=3, log=print)
    assert 0.5 <= res["ratio"] <= 2.0, res
