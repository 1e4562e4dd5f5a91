"""The search engine: batched population losses, input checks, and CMA-ES finding known optima."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora import LoraStack, module_path
from evojax_merge.models import LlamaForCausalLM, ModelConfig
from evojax_merge.search.cmaes import StageSpec, init_stage, run_stage
from evojax_merge.search.evo_merging import EvoMergingConfig, LoraHubConfig, evo_merging_search, lorahub_search
from evojax_merge.search.fitness import MergeEvaluator, ValidationConfig
from evojax_merge.search.genome import GenomeLayout

CFG = ModelConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8)


def _stack(n: int, seed: int, b_scale: float = 0.5) -> LoraStack:
    rng = np.random.default_rng(seed)
    A, B = {}, {}
    for layer in range(CFG.num_hidden_layers):
        for proj, (d_out, d_in) in CFG.module_shapes().items():
            A[module_path(layer, proj)] = jnp.asarray(rng.normal(0, 0.5, (n, 4, d_in)), jnp.float32)
            B[module_path(layer, proj)] = jnp.asarray(rng.normal(0, b_scale, (n, d_out, 4)), jnp.float32)
    return LoraStack(A=A, B=B, scale=jnp.full((n,), 2.0))


def _examples(model, adapter, n: int, seq: int = 10, seed: int = 0):
    """Prompts with answers written by ``model`` + ``adapter`` (greedy): that adapter is the best."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, CFG.vocab_size, (n, seq)).astype(np.int32)
    for t in range(seq // 2, seq):
        logits, _ = model(jnp.asarray(ids), lora=adapter)
        ids[:, t] = np.asarray(jnp.argmax(logits[:, t - 1], -1))
    labels = ids.copy()
    labels[:, : seq // 2] = -100
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels}


@pytest.fixture(scope="module")
def setup():
    model = LlamaForCausalLM(CFG, rngs=nnx.Rngs(0))
    stack = _stack(4, seed=1)
    examples = _examples(model, stack.adapter(2), 24)
    evaluator = MergeEvaluator(model, stack, examples, ValidationConfig(batch_size=8, num_batches=3))
    return model, stack, evaluator


def test_batched_population_equals_per_candidate_loop(setup):
    _, _, evaluator = setup
    rng = np.random.default_rng(3)
    alpha = rng.uniform(0, 1, (7, 4)).astype(np.float32)
    beta = rng.uniform(-1.5, 1.5, (7, 4)).astype(np.float32)
    batched = evaluator.evaluate(alpha, beta)
    loop = np.array([evaluator.evaluate(alpha[i : i + 1], beta[i : i + 1])[0] for i in range(7)])
    assert batched.shape == (7,)
    np.testing.assert_allclose(batched, loop, atol=1e-5, rtol=0)
    assert np.ptp(batched) > 1e-2  # the candidates really differ


def test_bad_genomes_are_refused_before_any_compute(setup):
    _, _, evaluator = setup
    ok = np.ones((3, 4), np.float32)
    with pytest.raises(EvoMergeInputError, match=r"alpha: genome length 5 .* the layout needs 4"):
        evaluator.evaluate(np.ones((3, 5)), ok)
    nan = ok.copy()
    nan[1, 2] = np.nan
    with pytest.raises(EvoMergeInputError, match=r"beta: candidate 1 has a non-finite value"):
        evaluator.evaluate(ok, nan)
    with pytest.raises(EvoMergeInputError, match="population sizes differ"):
        evaluator.evaluate(ok, ok[:2])


def test_fixed_subset_by_default_and_resampling_as_an_option(setup):
    model, stack, evaluator = setup
    assert np.array_equal(evaluator.batch_index(0), evaluator.batch_index(5))
    examples = _examples(model, stack.adapter(2), 24)
    resampling = MergeEvaluator(model, stack, examples, ValidationConfig(batch_size=8, num_batches=2, resample=True))
    assert not np.array_equal(resampling.batch_index(0), resampling.batch_index(1))
    assert np.array_equal(resampling.batch_index(1), resampling.batch_index(1))


def test_cmaes_stage_recovers_a_known_optimum():
    optimum = np.array([0.3, -0.7, 1.1, 0.0, -1.2], np.float32)
    spec = StageSpec("sphere", GenomeLayout("beta", 5, -1.5, 1.5), (0.0,) * 5, sigma0=0.5, population_size=12,
                     generations=60)

    def fitness(pop, _g):
        return np.sum((pop - optimum) ** 2, axis=1)

    result = run_stage(spec, fitness, init_stage(spec, jax.random.key(0)), progress=False)
    np.testing.assert_allclose(result.best_genome, optimum, atol=2e-2)
    assert np.all(np.diff(result.history[:, 0]) <= 0)  # best-so-far never gets worse


def test_clipping_keeps_candidates_inside_the_bounds():
    spec = StageSpec("edge", GenomeLayout("alpha", 3, 0.0, 1.0), (1.0,) * 3, sigma0=0.5, population_size=8,
                     generations=5)
    seen = []

    def fitness(pop, _g):
        seen.append(pop)
        return -pop.sum(1)  # wants to leave the box upwards

    result = run_stage(spec, fitness, init_stage(spec, jax.random.key(1)), progress=False)
    pops = np.concatenate(seen)
    assert pops.min() >= 0.0 and pops.max() <= 1.0
    np.testing.assert_allclose(result.best_genome, 1.0)


@pytest.mark.slow
def test_searches_find_the_adapter_that_wrote_the_answers(setup):
    _, stack, evaluator = setup
    cfg = EvoMergingConfig(population_size=10, sigma0=0.3, stage1_generations=3, stage2_generations=25,
                           l1_weight=0.0)
    result = evo_merging_search(evaluator, stack, cfg, seed=0)
    uniform = evaluator.evaluate(np.ones((1, 4)), np.full((1, 4), 0.25))[0]
    assert result.best_fitness < uniform
    assert int(np.argmax(np.abs(result.beta))) == 2
    assert [s.name for s in result.stages] == ["stage1_denoise", "stage2_scale"]
    assert result.stages[0].history.shape == (3, 4) and result.stages[1].history.shape == (25, 4)
    hub = lorahub_search(evaluator, stack, LoraHubConfig(population_size=10, generations=6, sigma0=0.5,
                                                         l1_weight=0.0), seed=0)
    assert hub.best_fitness < uniform and np.all(hub.alpha == 1.0)


def test_a_nan_candidate_never_hides_the_generations_best():
    """argmin([0.5, nan, 0.1]) is 1 in jax: without the NaN -> inf rule, 0.1 would be lost."""
    spec = StageSpec("nan", GenomeLayout("beta", 2, -1.5, 1.5), (0.0, 0.0), sigma0=0.5, population_size=3,
                     generations=1)

    def fitness(pop, _g):
        values = np.sum((pop - 1.0) ** 2, axis=1)
        values[np.argsort(values)[1]] = np.nan  # the median candidate is NaN: not the best, not the worst
        return values

    state = init_stage(spec, jax.random.key(0))
    result = run_stage(spec, fitness, state, progress=False)
    assert np.isfinite(result.best_fitness)
    np.testing.assert_allclose(result.best_fitness, np.sum((result.best_genome - 1.0) ** 2), rtol=1e-6)
    row = result.history[0]
    assert np.isfinite(row).all()  # mean and std over the finite fitnesses


def test_a_stage_evaluates_x0_first_and_keeps_it_when_nothing_beats_it():
    spec = StageSpec("x0", GenomeLayout("beta", 3, -1.5, 1.5), (0.2, -0.1, 0.4), sigma0=1.0, population_size=4,
                     generations=3)
    x0 = np.asarray(spec.x0, np.float32)

    def fitness(pop, _g):  # x0 is the unique optimum; random candidates at sigma 1 never reach it exactly
        return np.sum((pop - x0) ** 2, axis=1)

    state = init_stage(spec, jax.random.key(0), fitness)
    assert float(state.best_fitness) == 0.0
    result = run_stage(spec, fitness, state, progress=False)
    assert result.best_fitness == 0.0 and np.array_equal(result.best_genome, x0)


@pytest.mark.slow
def test_traced_stage_equals_host_stage(setup):
    """The jitted, scanned generation and the host loop see the same populations and losses."""
    from evojax_merge.search.evo_merging import stage_fitness

    _, _, evaluator = setup
    layout = GenomeLayout("alpha", 4, 0.0, 1.0)
    spec = StageSpec("s", layout, (1.0,) * 4, sigma0=0.2, population_size=5, generations=4)
    fixed = np.full(4, 0.25, np.float32)
    traced = stage_fitness(evaluator, layout, fixed, 0.05, spec.generations)

    def host(pop, g):
        return evaluator.evaluate(pop, np.broadcast_to(fixed, pop.shape), g) + 0.05 * np.abs(pop).mean(1)

    a = run_stage(spec, traced, init_stage(spec, jax.random.key(4), traced), progress=False, visit_every=4)
    b = run_stage(spec, host, init_stage(spec, jax.random.key(4), host), progress=False)
    np.testing.assert_allclose(a.history, b.history, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.best_genome, b.best_genome, rtol=1e-5, atol=1e-6)
