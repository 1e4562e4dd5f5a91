"""Exports: a PS merge as an HF checkpoint transformers loads; a DFS model with its path and scales."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import AutoModelForCausalLM

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.export.dfs_io import load_dfs, save_dfs
from evojax_merge.merge.sakana_dfs import DFSLayout, dfs_model
from evojax_merge.merge.sakana_ps import PSLayout, ps_merge_genome, task_vectors_of
from evojax_merge.models import ModelConfig, model_weights, save_model
from evojax_merge.models.functional import ParamsModel
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.models.sources import stack_models

pytestmark = pytest.mark.slow  # transformers oracle

CFG = ModelConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=8)
IDS = np.asarray([[1, 5, 9, 2, 7, 30], [1, 3, 3, 8, 0, 0]], np.int32)
MASK = np.asarray([[1] * 6, [1] * 4 + [0] * 2], np.int32)


def _stack():
    return stack_models([LlamaForCausalLM(CFG, rngs=nnx.Rngs(s)) for s in (1, 2)], ["a", "b"])


def test_ps_export_loads_in_transformers(tmp_path):
    stack = _stack()
    base = {k: jnp.asarray(v) for k, v in model_weights(LlamaForCausalLM(CFG, rngs=nnx.Rngs(0))).items()}
    layout = PSLayout(2, 2)
    genome = jnp.asarray(np.random.default_rng(0).uniform(0.2, 0.9, layout.length), jnp.float32)
    params = ps_merge_genome(layout, base, task_vectors_of(stack, base), genome, jax.random.key(1))
    ours = np.asarray(ParamsModel(CFG, params).logits(jnp.asarray(IDS), jnp.asarray(MASK)))
    out = save_model(stack.with_params(params), tmp_path / "ps")
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(IDS, dtype=torch.long), attention_mask=torch.tensor(MASK)).logits.numpy()
    real = MASK.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4)


def test_dfs_export_round_trip_has_identical_logits(tmp_path):
    stack = _stack()
    layout = DFSLayout(2, 2, repeats=2, max_path=6)
    ind = -np.ones(8, np.float32)
    ind[[0, 3, 5, 6]] = 1.0
    w = np.random.default_rng(1).uniform(0.5, 1.5, (4, 4)).astype(np.float32)
    model = dfs_model(layout, stack, 1, np.concatenate([ind, w.ravel()]))
    out = save_dfs(model, tmp_path / "dfs")
    back = load_dfs(out)
    assert back.config.num_hidden_layers == 4 and [p["slot"] for p in back.path] == [0, 3, 5, 6]
    a = np.asarray(jax.jit(lambda: model.logits(jnp.asarray(IDS), jnp.asarray(MASK)))())
    b = np.asarray(jax.jit(lambda: back.logits(jnp.asarray(IDS), jnp.asarray(MASK)))())
    np.testing.assert_array_equal(a, b)
    (out / "dfs.json").write_text('{"scales": [1.0]}')
    with pytest.raises(EvoMergeInputError, match="'scales' must list 4 numbers"):
        load_dfs(out)
