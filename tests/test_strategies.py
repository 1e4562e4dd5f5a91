"""Black-box search strategies (conf/strategy/): every shipped file runs a stage, improves on x0 and resumes
bit-identically; bad names and params are one-line errors; Evo-Merging and Sakana PS take the strategy."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.search.checkpoint import CheckpointRunner
from evojax_merge.search.checkpoint_state import spec_fingerprint
from evojax_merge.search.cmaes import StageResult, StageSpec, TracedFitness, init_stage, run_stage
from evojax_merge.search.evo_merging import default_stage_runner
from evojax_merge.search.genome import GenomeLayout
from evojax_merge.search.preemption import Preempted, PreemptionGuard
from evojax_merge.search.strategy import StrategySpec, step_size

CONF = Path(__file__).resolve().parent.parent / "conf"
STRATEGY_FILES = sorted((CONF / "strategy").glob("*.yaml"))
OPTIMUM = np.array([0.3, -0.7, 0.5, 0.1], np.float32)
X0 = (0.0,) * 4


def _spec(strategy: StrategySpec, generations: int = 5) -> StageSpec:
    return StageSpec("q", GenomeLayout("beta", 4, -1.5, 1.5), X0, 0.3, 8, generations, strategy)


def _host(population: np.ndarray, generation: int) -> np.ndarray:
    return ((population - OPTIMUM) ** 2).sum(axis=1) + 0.01 * generation


@dataclasses.dataclass(frozen=True)
class Quadratic:
    """The same quadratic inside jit (args: the optimum)."""

    def __call__(self, args, population, generation):
        return jnp.sum((population - args) ** 2, axis=1) + 0.01 * generation


def _same(a: StageResult, b: StageResult) -> bool:
    return (a.best_fitness == b.best_fitness and a.best_genome.tobytes() == b.best_genome.tobytes()
            and a.history.tobytes() == b.history.tobytes())


def _interrupted_then_resumed(directory: Path, spec: StageSpec, fitness, key: jax.Array, at: int) -> StageResult:
    guard = PreemptionGuard()  # not installed: request() stands in for the signal

    def hook(spec, state, step):
        if step == at:
            guard.request(signal.SIGTERM)

    runner = CheckpointRunner(directory, preemption=guard, on_generation=hook, progress=False)
    with pytest.raises(Preempted) as stop, runner:
        runner(spec, fitness, key)
    assert stop.value.step == at
    with CheckpointRunner(directory, progress=False) as runner:
        assert runner.resumed_from == at
        return runner(spec, fitness, key)


def test_the_group_ships_the_strategies():
    assert {p.stem for p in STRATEGY_FILES} >= {"cma_es", "sep_cma_es", "snes", "lm_ma_es", "simple_es"}
    for path in STRATEGY_FILES:  # adding a strategy is one file: {name, params}
        assert set(yaml.safe_load(path.read_text())) == {"name", "params"}, path.name


@pytest.mark.parametrize("path", STRATEGY_FILES, ids=lambda p: p.stem)
def test_strategy_improves_and_resumes_bit_identically(path, tmp_path):
    strategy = StrategySpec.from_config(OmegaConf.to_container(OmegaConf.load(path)))
    spec = _spec(strategy)
    key = jax.random.key(7)
    start = float(_host(np.asarray([X0], np.float32), 0)[0])
    for kind, fitness in (("host", _host), ("traced", TracedFitness(Quadratic(), jnp.asarray(OPTIMUM)))):
        reference = default_stage_runner(progress=False)(spec, fitness, key)
        assert reference.best_fitness < start, (path.stem, kind)
        assert np.isfinite(reference.history).all() and reference.history.shape == (5, 4)
        assert np.all(np.diff(reference.history[:, 0]) <= 0)  # best-so-far never gets worse
        resumed = _interrupted_then_resumed(tmp_path / kind, spec, fitness, key, at=2)
        assert _same(resumed, reference), (path.stem, kind)


def test_the_default_is_cma_es_and_specs_are_canonical():
    assert StrategySpec.from_config(None) == StrategySpec() == StrategySpec("CMA_ES", ())
    a = StrategySpec.from_config({"name": "CMA_ES", "params": {"c_std": 0.3, "d_std": 2.0}})
    b = StrategySpec("CMA_ES", (("d_std", 2.0), ("c_std", 0.3)))
    assert a == b and hash(a) == hash(b) and a.to_dict() == {"name": "CMA_ES", "params": {"c_std": 0.3, "d_std": 2.0}}
    # a stage spec without a strategy is the CMA-ES one, and its checkpoint fingerprint is the one of before
    plain = StageSpec("q", GenomeLayout("beta", 4, -1.5, 1.5), X0, 0.3, 8, 5)
    assert plain == _spec(StrategySpec()) and "strategy" not in spec_fingerprint(plain)
    assert spec_fingerprint(_spec(a))["strategy"] == a.to_dict()


def test_params_override_the_defaults():
    """SNES with a tiny std learning rate: the step size barely moves from sigma0, unlike the default's."""
    slow = StrategySpec.from_config({"name": "SNES", "params": {"lr_std_init": 1e-4}})
    default = run_stage(_spec(StrategySpec("SNES")), _host, init_stage(_spec(StrategySpec("SNES")), jax.random.key(0)),
                        progress=False)
    tuned = run_stage(_spec(slow), _host, init_stage(_spec(slow), jax.random.key(0)), progress=False)
    assert abs(tuned.history[-1, 3] - 0.3) < 1e-3 < abs(default.history[-1, 3] - 0.3)


def test_a_per_dimension_std_is_recorded_as_its_mean():
    spec = _spec(StrategySpec("SimpleES"), generations=2)
    state = init_stage(spec, jax.random.key(1))
    assert np.shape(state.es_state.std) == (4,)  # per dimension: the history stored it as one number before
    seen: list = []
    result = run_stage(spec, _host, state, progress=False, on_generation=lambda s, st: seen.append(st))
    assert result.history[-1, 3] == np.float32(np.mean(np.asarray(seen[-1].es_state.std)))
    assert float(step_size(seen[-1].es_state)) == result.history[-1, 3]


@pytest.mark.parametrize("name", ["Open_ES", "DifferentialEvolution"])
def test_any_evosax_algorithm_by_class_name(name):
    """Open-ES takes sigma0 as its constant std schedule; differential evolution (population-based) starts
    from x0 and sigma0-noise around it, and has no step size (NaN in the history)."""
    spec = _spec(StrategySpec.from_config({"name": name}), generations=3)
    result = run_stage(spec, _host, init_stage(spec, jax.random.key(2), _host), progress=False)
    assert result.best_fitness < float(_host(np.asarray([X0], np.float32), 0)[0])
    if name == "Open_ES":
        np.testing.assert_allclose(result.history[:, 3], 0.3, rtol=1e-6)
    else:
        assert np.isnan(result.history[:, 3]).all() and np.isfinite(result.history[:, :3]).all()


def test_unknown_names_and_params_are_one_line_errors():
    cases = [
        ({"name": "CMA-ES"},
         r"^strategy\.name: 'CMA-ES' is not an evosax algorithm a stage can run \(known: .*CMA_ES.*Sep_CMA_ES"),
        ({"name": "CMA_ES", "params": {"lr": 0.1}},
         r"^strategy\.params\.lr: unknown parameter of CMA_ES \(known: .*c_std"),
        ({"name": "SNES", "params": {"std_init": 0.1}}, r"^strategy\.params\.std_init: .*sigma0"),
        ({"name": "CMA_ES", "params": {"weights": 0.1}}, r"^strategy\.params\.weights: .* not a scalar"),
        ({"name": "CMA_ES", "params": {"c_std": "fast"}}, r"^strategy\.params\.c_std: 'fast' is not a number"),
        ({"name": "CMA_ES", "sigma": 0.1}, r"^strategy\.sigma: unknown key \(known: name, params\)"),
        ({"name": "RandomSearch"}, r"^strategy\.name: RandomSearch needs constructor arguments .*sampling_fn"),
    ]
    for cfg, message in cases:
        with pytest.raises(EvoMergeInputError, match=message) as err:
            StrategySpec.from_config(cfg)
        assert "\n" not in str(err.value)
        assert cfg.get("name") != "CMA-ES" or "RandomSearch" not in str(err.value)  # only what a stage can run


SEARCHES = ["evo_merging", "evo_no_denoise", "evo_no_scale", "evo_no_sign_flip", "evo_neither", "evo_prune_B",
            "evo_prune_both", "lorahub", "lorahub_original", "sakana_ps", "sakana_ps_acc", "sakana_dfs",
            "sakana_dfs_acc", "sakana_ps_dfs"]


def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    from evojax_merge.world.registry import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _strategies(method) -> list[StrategySpec]:
    if hasattr(method, "ps"):  # PS + DFS
        return [method.ps.strategy, method.dfs.strategy]
    return [method.strategy if hasattr(method, "strategy") else method.config.strategy]


def test_every_black_box_method_config_takes_the_strategy_group():
    from evojax_merge.runner.build import build_methods

    for stem in SEARCHES:
        cfg = _compose(f"method={stem}", "strategy=sep_cma_es")
        assert cfg.strategy == {"name": "Sep_CMA_ES", "params": {}}
        (method,) = build_methods(cfg).values()
        assert _strategies(method) and set(_strategies(method)) == {StrategySpec("Sep_CMA_ES")}, stem
        (method,) = build_methods(_compose(f"method={stem}")).values()  # the root default: CMA-ES
        assert set(_strategies(method)) == {StrategySpec()}, stem


def test_a_changed_strategy_refuses_to_resume(tmp_path):
    """The strategy is part of the resolved config, so of the checkpoint fingerprint."""
    from evojax_merge.runner.run_dir import fingerprint

    cma, sep = (OmegaConf.to_container(_compose("method=evo_merging", f"strategy={s}"), resolve=True)
                for s in ("cma_es", "sep_cma_es"))
    assert sep["method"]["evo_merging"]["strategy"] == {"name": "Sep_CMA_ES", "params": {}}
    spec = _spec(StrategySpec())
    state = init_stage(spec, jax.random.key(0))
    with CheckpointRunner(tmp_path, fingerprint=fingerprint(cma, "t/evo_merging"), progress=False,
                          async_save=False) as runner:
        runner._save(1, spec, state.replace(generation=state.generation + 1))
    with pytest.raises(EvoMergeInputError, match="Sep_CMA_ES"):  # the message names what changed
        CheckpointRunner(tmp_path, fingerprint=fingerprint(sep, "t/evo_merging"))
    with CheckpointRunner(tmp_path, fingerprint=fingerprint(cma, "t/evo_merging"), progress=False) as runner:
        assert runner.resumed_from == 1


# -- the methods take the strategy ---------------------------------------------------------------------


@pytest.mark.slow  # compiles a merge of real (tiny) models: tens of seconds on a busy CPU
def test_evo_merging_runs_both_stages_with_the_strategy():
    from flax import nnx
    from search_driver import CFG, random_examples, random_stack

    from evojax_merge.methods.base import MergeTask
    from evojax_merge.methods.evo_merging import EvoMerging
    from evojax_merge.models import LlamaForCausalLM
    from evojax_merge.search.fitness import MergeEvaluator, ValidationConfig

    stack = random_stack(3)
    evaluator = MergeEvaluator(LlamaForCausalLM(CFG, rngs=nnx.Rngs(0)), stack, random_examples(8),
                               ValidationConfig(batch_size=4, num_batches=2))
    seen: list[StageSpec] = []
    inner = default_stage_runner(progress=False)

    def runner(spec, fitness, key):
        seen.append(spec)
        return inner(spec, fitness, key)

    method = EvoMerging(population_size=4, stage1_generations=2, stage2_generations=2,
                        strategy={"name": "Sep_CMA_ES", "params": {}})
    out = method.run(MergeTask("t", ["a", "b", "c"], lambda prune: evaluator, stack=stack, runner=runner,
                               progress=False))
    assert [s.strategy.name for s in seen] == ["Sep_CMA_ES", "Sep_CMA_ES"]
    assert method.describe()["strategy"] == {"name": "Sep_CMA_ES", "params": {}}
    stage2 = out.search.stages[1]
    assert np.isfinite(stage2.history).all() and out.val_fitness == stage2.best_fitness
    assert out.adapter is not None and len(out.genome[1]) == 3


@pytest.mark.slow  # compiles a merge of real (tiny) models: tens of seconds on a busy CPU
def test_sakana_ps_takes_the_strategy_and_resumes_through_the_task_runner(tmp_path):
    """SakanaPS with Sep-CMA-ES, run through the engine's CheckpointRunner, preempted after one generation
    and resumed: the same result as an uninterrupted run without checkpoints."""
    from flax import nnx

    from evojax_merge.methods.base import MergeTask, SourcesCell
    from evojax_merge.methods.sakana_ps import SakanaPS
    from evojax_merge.methods.sakana_ps_dfs import SakanaPSDFS
    from evojax_merge.models import ModelConfig, model_weights
    from evojax_merge.models.llama import LlamaForCausalLM
    from evojax_merge.models.sources import stack_models

    cfg = ModelConfig(vocab_size=24, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    stack = stack_models([LlamaForCausalLM(cfg, rngs=nnx.Rngs(s)) for s in (1, 2)], ["a", "b"])
    base = {k: jnp.asarray(v) for k, v in model_weights(LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))).items()}
    rng = np.random.default_rng(0)
    batch = {"input_ids": jnp.asarray(rng.integers(4, 24, (4, 8)), jnp.int32),
             "attention_mask": jnp.ones((4, 8), jnp.int32), "answer_pos": jnp.full((4, 1), 6, jnp.int32),
             "answer_tgt": jnp.asarray(rng.integers(4, 24, (4, 1)), jnp.int32), "answer_mask": jnp.ones((4, 1), bool)}
    cell = SourcesCell(stack, base, batch, ("a", "b"))

    def no_evaluator(prune: str):
        raise AssertionError("Sakana methods score full fine-tunes, not LoRA pools")

    def task(runner=None):
        return MergeTask("t", ["a", "b"], no_evaluator, sources=cell, runner=runner, seed=0, progress=False)

    method = SakanaPS(population_size=4, generations=3, strategy={"name": "Sep_CMA_ES"})
    assert method.config().strategy == StrategySpec("Sep_CMA_ES")
    reference = method.run(task())
    assert reference.search.history.shape == (3, 4) and np.isfinite(reference.search.history).all()

    guard = PreemptionGuard()
    runner = CheckpointRunner(tmp_path, preemption=guard, progress=False,
                              on_generation=lambda spec, state, step: guard.request(signal.SIGTERM))
    with pytest.raises(Preempted), runner:
        method.run(task(runner))
    with CheckpointRunner(tmp_path, progress=False) as runner:
        assert runner.resumed_from == 1
        resumed = method.run(task(runner))
    assert _same(resumed.search, reference.search) and resumed.details["genome"] == reference.details["genome"]
    # PS + DFS: the strategy reaches both searches unless one names its own
    both = SakanaPSDFS(strategy={"name": "SNES"}, dfs={"strategy": {"name": "Sep_CMA_ES"}})
    assert both.ps.config().strategy.name == "SNES" and both.dfs.config().strategy.name == "Sep_CMA_ES"
