"""Sakana methods on a tiny cell of random full fine-tunes, their bad input, and the DFS plot."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.merge.sakana_ps import PSLayout
from evojax_merge.methods.base import MergeTask, SourcesCell
from evojax_merge.methods.sakana_dfs import SakanaDFS
from evojax_merge.methods.sakana_grid import SakanaGrid
from evojax_merge.methods.sakana_ps import SakanaPS
from evojax_merge.methods.sakana_ps_dfs import SakanaPSDFS
from evojax_merge.models import ModelConfig, model_weights
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.models.sources import stack_models
from evojax_merge.report.method_plots import dfs_path_figure

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


def _no_evaluator(prune):
    raise AssertionError("a full-fine-tune method asked for a LoRA evaluator")


def _task(cell, seed=0):
    return MergeTask("t", list(cell.stack.names), _no_evaluator, sources=cell, seed=seed, progress=False)


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
    cell = {"path": path, "num_slots": 8, "sources": ["lang", "skill"]}
    out = dfs_path_figure("sakana_dfs", [(0, "skill_b", cell), (1, "skill_b", cell)], tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _examples(seed: int, n: int = 4, length: int = 8) -> dict:
    rng = np.random.default_rng(seed)
    labels = np.full((n, length), -100, np.int32)
    labels[:, 5:7] = rng.integers(4, 24, (n, 2))
    return {"input_ids": rng.integers(4, 24, (n, length)).astype(np.int32),
            "attention_mask": np.ones((n, length), np.int32), "labels": labels}


def test_dam_and_soup_run_on_full_fine_tunes(cell):
    """``+experiment=dam``'s rows on a sources cell: DAM (KL on each source's own data, or CE on the
    target's validation data) merges into a model scored on the cell; the soup is the sources' mean."""
    import dataclasses

    from evojax_merge.methods.dam import DAM

    full = dataclasses.replace(cell, source_data=(_examples(1), _examples(2)), val_data=_examples(3))
    for objective in ("kl", "ce"):
        out = DAM(objective=objective, positions="all", batch_size=2, max_len=8).run(_task(full))
        assert np.isfinite(out.val_ce)
        assert out.details["sources"] == ["a", "b"]
        assert out.details["forward_examples"] > 4 and out.details["backward_examples"] > 0
        assert set(out.model.params) == set(cell.stack.params)
        # one coefficient vector per source for every linear weight, initialised at 1/N and moved by training
        coeffs = out.details["coefficients"]["model.layers.0.mlp.down_proj.weight"]
        assert len(coeffs) == 2 and coeffs != [0.5, 0.5]
    with pytest.raises(EvoMergeInputError, match="dam: source 'b' has no records of its own task"):
        DAM(positions="all").run(_task(dataclasses.replace(cell, source_data=(_examples(1), None))))
    soup = SakanaGrid(kind="soup").run(_task(cell))
    for k in ("model.layers.1.self_attn.q_proj.weight", "lm_head.weight"):
        np.testing.assert_allclose(np.asarray(soup.model.params[k]), np.asarray(cell.stack.params[k]).mean(0),
                                   rtol=0, atol=1e-6)
    assert soup.details["grid"][0][:2] == [0.5, 1.0] and soup.details["forward_examples"] == 4


def test_exact_match_error_by_hand():
    """Three examples, answers of 2, 1 and 2 tokens (the third padded): example 0 right on both
    tokens, example 1 right, example 2 wrong on its second token -> accuracy 2/3, error 1/3. A wrong
    argmax on a padded position does not count."""
    from evojax_merge.search.sakana import exact_match_error

    logits = np.full((3, 2, 5), -1.0, np.float32)
    for b, toks in enumerate(([1, 2], [3, 0], [4, 4])):  # the argmax token per position
        for k, t in enumerate(toks):
            logits[b, k, t] = 1.0
    targets = np.asarray([[1, 2], [3, 4], [4, 1]])
    mask = np.asarray([[True, True], [True, False], [True, True]])
    err = float(exact_match_error(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask)))
    assert err == pytest.approx(1 / 3)
    assert float(exact_match_error(jnp.asarray(logits), jnp.asarray(targets), jnp.zeros_like(mask))) == 0.0


def test_accuracy_fitness_searches_and_reports_the_ce(cell):
    """fitness: accuracy minimises 1 - exact match; the outcome's val_ce is still the CE of the found model."""
    from evojax_merge.models.functional import ParamsModel
    from evojax_merge.search.sakana import _ce

    out = SakanaPS(population_size=4, generations=2, fitness="accuracy").run(_task(cell))
    assert 0.0 <= out.val_fitness <= 1.0 and out.val_fitness * 4 == pytest.approx(round(out.val_fitness * 4))
    assert isinstance(out.model, ParamsModel)
    assert out.val_ce == pytest.approx(float(_ce(out.model.logits, cell.batch)), rel=1e-5)
    dfs = SakanaDFS(population_size=4, generations=1, repeats=1, fitness="accuracy").run(_task(cell))
    assert 0.0 <= dfs.val_fitness <= 1.0 and np.isfinite(dfs.val_ce)
    with pytest.raises(EvoMergeInputError, match="method.fitness: 'f1' is not one of ce, accuracy"):
        SakanaPS(fitness="f1")


def test_population_chunk_knob(cell):
    """PS defaults to auto (one candidate at a time on a CPU), DFS to the whole population; both take
    an int, and a bad value is a one-line error when the method is built."""
    assert SakanaPS().config().population_chunk == "auto" and SakanaDFS().config().population_chunk is None
    out = SakanaDFS(population_size=4, generations=1, repeats=1, population_chunk=2).run(_task(cell))
    assert np.isfinite(out.val_ce)
    with pytest.raises(EvoMergeInputError, match="population_chunk: 0 is not auto"):
        SakanaDFS(population_chunk=0)
