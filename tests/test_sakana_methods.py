"""Sakana methods on a tiny cell of random full fine-tunes, their bad input, and the DFS plot."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.merge.sakana_ps import PSLayout
from evojax_merge.methods.base import MergeTask
from evojax_merge.methods.sakana_dfs import SakanaDFS
from evojax_merge.methods.sakana_grid import SakanaGrid
from evojax_merge.methods.sakana_ps import SakanaPS
from evojax_merge.methods.sakana_ps_dfs import SakanaPSDFS
from evojax_merge.models import ModelConfig, model_weights
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.models.sources import stack_models
from evojax_merge.runner.sources import SourcesCell, _no_evaluator, plot_dfs_path

pytestmark = pytest.mark.slow  # searches

CFG = ModelConfig(vocab_size=24, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=8)


@pytest.fixture(scope="module")
def cell():
    stack = stack_models([LlamaForCausalLM(CFG, rngs=nnx.Rngs(s)) for s in (1, 2)], ["a", "b"])
    base = {k: jnp.asarray(v) for k, v in model_weights(LlamaForCausalLM(CFG, rngs=nnx.Rngs(0))).items()}
    rng = np.random.default_rng(0)
    batch = {"input_ids": jnp.asarray(rng.integers(4, 24, (4, 8)), jnp.int32),
             "attention_mask": jnp.ones((4, 8), jnp.int32), "answer_pos": jnp.full((4, 1), 6, jnp.int32),
             "answer_tgt": jnp.asarray(rng.integers(4, 24, (4, 1)), jnp.int32), "answer_mask": jnp.ones((4, 1), bool)}
    return SourcesCell(stack, base, batch, ("a", "b"))


def _task(cell, seed=0):
    return MergeTask("t", list(cell.stack.names), _no_evaluator, world=cell, seed=seed, progress=False)


def test_methods_run_and_never_do_worse_than_their_start(cell):
    ps = SakanaPS(population_size=4, generations=2).run(_task(cell))
    assert len(ps.details["genome"]) == PSLayout(2, 2).length and np.isfinite(ps.val_ce)
    dfs = SakanaDFS(population_size=4, generations=2, repeats=2, max_path=4, start_source=1).run(_task(cell))
    assert 1 <= len(dfs.details["path"]) <= 4
    assert dfs.val_ce <= dfs.search.history[0, 0] + 1e-6  # best-so-far includes the start path
    # the same stage shapes as above, so the compiled generations are reused
    both = SakanaPSDFS({"population_size": 4, "generations": 2}, {"population_size": 4, "generations": 2, "repeats": 2,
                                                                   "max_path": 4, "start_source": 1},
                       partner=1).run(_task(cell))
    assert both.details["sources"] == ["ps", "b"]
    grid = SakanaGrid("task_arithmetic", lambdas=(0.5, 1.0)).run(_task(cell))
    assert grid.val_ce == pytest.approx(min(c for *_, c in grid.details["grid"]))


def test_bad_input_is_one_line_before_any_search(cell):
    with pytest.raises(EvoMergeInputError, match="method.start_source: 5"):
        SakanaDFS(start_source=5).run(_task(cell))
    with pytest.raises(EvoMergeInputError, match="method.max_path"):
        SakanaDFS(max_path=0)
    with pytest.raises(EvoMergeInputError, match="method.partner: 2"):
        SakanaPSDFS(partner=2).run(_task(cell))
    with pytest.raises(EvoMergeInputError, match="method.kind"):
        SakanaGrid(kind="linear")
    with pytest.raises(EvoMergeInputError, match="full fine-tunes"):
        SakanaPS().run(MergeTask("t", [], _no_evaluator, world=None))
    bad = SourcesCell(cell.stack, {k: v for k, v in cell.base.items() if k != "lm_head.weight"}, cell.batch, ("a", "b"))
    with pytest.raises(EvoMergeInputError, match="no tensor 'lm_head.weight'"):
        SakanaPS(population_size=4, generations=1).run(_task(bad))


def test_dfs_path_plot(tmp_path):
    path = [{"slot": 0, "source_index": 0, "layer": 0, "scale": 1.0}, {"slot": 5, "source_index": 1, "layer": 1,
                                                                       "scale": 0.7}]
    out = plot_dfs_path(path, 8, 2, ["lang", "skill"], "test", tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
