"""models/sources.py: stacking HF checkpoints with a model axis; mismatches name the directory."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.models import ModelConfig, save_model
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.models.sources import layer_group, load_sources, stack_models

CFG = ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=8)


@pytest.mark.slow  # writes and reloads full checkpoints (4 s)
def test_load_sources_stacks_every_weight(tmp_path):
    models = [LlamaForCausalLM(CFG, rngs=nnx.Rngs(s)) for s in range(3)]
    dirs = [save_model(m, tmp_path / f"m{i}") for i, m in enumerate(models)]
    stack = load_sources(dirs)
    assert stack.num_sources == 3 and stack.names == tuple(str(d) for d in dirs)
    w = stack.params["model.layers.1.mlp.down_proj.weight"]
    assert w.shape == (3, 16, 24)
    np.testing.assert_array_equal(np.asarray(w[2]), np.asarray(models[2].model.layers[1].mlp.down_proj.weight[...]))
    ids = np.array([[1, 5, 7, 3]])
    np.testing.assert_array_equal(np.asarray(stack.model(1)(ids)[0]), np.asarray(models[1](ids)[0]))


def test_mismatched_shapes_name_the_directory(tmp_path):
    a = save_model(LlamaForCausalLM(CFG, rngs=nnx.Rngs(0)), tmp_path / "a")
    b = save_model(LlamaForCausalLM(dataclasses.replace(CFG, intermediate_size=32), rngs=nnx.Rngs(0)), tmp_path / "b")
    with pytest.raises(EvoMergeInputError, match=r"b: intermediate_size=32 differs"):
        load_sources([a, b])
    c = dataclasses.replace(CFG, model_type="qwen2", attention_bias=True)
    with pytest.raises(EvoMergeInputError, match="other: model_type"):
        stack_models([LlamaForCausalLM(CFG, rngs=nnx.Rngs(0)), LlamaForCausalLM(c, rngs=nnx.Rngs(0))],
                     ["one", "other"])


def test_layer_groups():
    assert layer_group("model.embed_tokens.weight", 4) == 0
    assert layer_group("model.layers.0.self_attn.q_proj.weight", 4) == 1
    assert layer_group("model.layers.3.input_layernorm.weight", 4) == 4
    assert layer_group("model.norm.weight", 4) == 5 and layer_group("lm_head.weight", 4) == 5
