"""Evo-Merging's two-stage CMA-ES search and the LoraHub search (docs/methods.md §1, §2).

    F(x) = CE(base + merge(pool, alpha, beta)) + λ · mean_i |x_i|

    stage 1: x = alpha, x0 = 1,   bounds [0, 1],      beta = 1/N
    stage 2: x = beta,  x0 = 1/N, bounds [-1.5, 1.5], alpha = stage 1's best

Both stages (and LoraHub's one) run the configured black-box strategy (``strategy``, CMA-ES by
default; ``conf/strategy/``).

The best of each stage is kept on its own (the reference code shares one best-loss value across
stages, so its stage 2 can end with uniform weights); the answer is stage 2's best.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.lora.adapter import LoraAdapter, LoraStack
from evojax_merge.merge import evo_merge, stack_magnitudes
from evojax_merge.search.cmaes import StageResult, StageSpec, TracedFitness, init_stage, run_stage
from evojax_merge.search.fitness import Evaluator, PopulationCE
from evojax_merge.search.genome import GenomeLayout, decode, l1_penalty
from evojax_merge.search.strategy import StrategySpec


@dataclasses.dataclass(frozen=True)
class EvoMergingConfig:
    """The paper's settings are the defaults; the switches are the §1 ablations."""

    population_size: int = 20
    sigma0: float = 0.05
    stage1_generations: int = 20  # 400 evaluations
    stage2_generations: int = 40  # 800 evaluations
    l1_weight: float = 0.05
    alpha_bounds: tuple[float, float] = (0.0, 1.0)
    beta_bounds: tuple[float, float] = (-1.5, 1.5)
    denoise: bool = True  # False: no stage 1, alpha = 1 ("without denoising")
    scale: bool = True  # False: no stage 2, beta = 1/N ("without scaling")
    sign_flip: bool = True  # False: beta restricted to [0, upper] ("without sign flip")
    strategy: StrategySpec = StrategySpec()  # the black-box search of both stages (CMA-ES, the paper's)


@dataclasses.dataclass(frozen=True)
class LoraHubConfig:
    """LoraHub's settings: w ∈ [-1.5, 1.5]^N from w = 0, a budget of 40 evaluations."""

    population_size: int = 10
    generations: int = 4
    sigma0: float = 1.0  # nevergrad's default step for a bounded Array
    l1_weight: float = 0.05
    bounds: tuple[float, float] = (-1.5, 1.5)
    strategy: StrategySpec = StrategySpec()  # the black-box search (default CMA-ES)


@dataclasses.dataclass
class MergeSearchResult:
    """The searched control vectors, each stage's record, and the merged rank-r adapter."""

    method: str
    alpha: np.ndarray
    beta: np.ndarray
    stages: list[StageResult]
    adapter: LoraAdapter | None  # None when the pool's weights are not ours (a remote search)
    best_fitness: float

    @property
    def best_genome(self) -> np.ndarray:
        return np.concatenate([self.alpha, self.beta])


# A stage runner runs one stage from a key: the default below, or a checkpointing one.
StageRunner = Callable[[StageSpec, Callable, jax.Array], StageResult]


def default_stage_runner(progress: bool = True, visit_every: int = 1) -> StageRunner:
    def run(spec: StageSpec, fitness, key: jax.Array) -> StageResult:
        return run_stage(spec, fitness, init_stage(spec, key, fitness), progress=progress, visit_every=visit_every)

    return run


@dataclasses.dataclass(frozen=True)
class StageCE:
    """``F(x) = CE(merge(pool, decode(x, fixed))) + λ · mean|x|`` inside jit (static part).

    ``args``: ``{"eval": the evaluator's arrays, "fixed": [N], "index": [G, batches, batch size]}``;
    generation g scores on ``index[g]`` (all equal unless the validation batches are resampled).
    """

    ce: PopulationCE
    searched: str
    l1_weight: float

    def __call__(self, args, population, generation):
        layout = GenomeLayout(self.searched, population.shape[1], 0.0, 0.0)
        alpha, beta = decode(layout, population, args["fixed"])
        index = jax.tree.map(lambda t: t[jnp.minimum(generation, t.shape[0] - 1)], args["index"])
        return self.ce(args["eval"], alpha, beta, index) + l1_penalty(population, self.l1_weight)


def stage_fitness(evaluator: Evaluator, layout: GenomeLayout, fixed: np.ndarray, l1_weight: float,
                  generations: int = 1):
    """``population -> CE + λ·mean|x|``, with the unsearched vector fixed.

    An in-process evaluator gives a :class:`TracedFitness` (the whole generation is then one jitted
    step); any other evaluator (a remote service) a host function.
    """
    fixed = np.asarray(fixed, np.float32)
    if isinstance(getattr(evaluator, "ce_fn", None), PopulationCE):
        args = {"eval": evaluator.ce_args, "fixed": jnp.asarray(fixed),
                "index": jax.tree.map(jnp.asarray, evaluator.index_table(generations))}
        return TracedFitness(StageCE(evaluator.ce_fn, layout.searched, float(l1_weight)), args)

    def fitness(population: np.ndarray, generation: int) -> np.ndarray:
        alpha, beta = decode(layout, np.asarray(population), fixed)
        ce = evaluator.evaluate(np.asarray(alpha), np.asarray(beta), generation)
        return ce + np.asarray(l1_penalty(population, l1_weight))

    return fitness


def merged_adapter(stack: LoraStack | None, alpha: np.ndarray, beta: np.ndarray, prune: str = "A"
                   ) -> LoraAdapter | None:
    """The rank-r adapter a genome stands for (host side, e.g. for export); None without a stack."""
    if stack is None:
        return None
    which = {"A": ("A",), "B": ("B",), "both": ("A", "B"), "none": ()}[prune]
    return evo_merge(stack, stack_magnitudes(stack, which=which), alpha, beta, prune=prune)


def _stage_key(seed: int, stage: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), stage)


def evo_merging_search(
    evaluator: Evaluator,
    stack: LoraStack | None,
    cfg: EvoMergingConfig = EvoMergingConfig(),
    seed: int = 0,
    prune: str = "A",
    runner: StageRunner | None = None,
) -> MergeSearchResult:
    """Stage 1 (denoising) then stage 2 (sign-aware scaling), each switchable for ablations."""
    runner = runner or default_stage_runner()
    n = evaluator.num_adapters
    alpha = np.ones(n, np.float32)
    beta = np.full(n, 1.0 / n, np.float32)
    stages: list[StageResult] = []
    best_fitness = float("nan")
    if cfg.denoise:
        layout = GenomeLayout("alpha", n, *cfg.alpha_bounds)
        spec = StageSpec("stage1_denoise", layout, tuple(alpha), cfg.sigma0, cfg.population_size,
                         cfg.stage1_generations, cfg.strategy)
        result = runner(spec, stage_fitness(evaluator, layout, beta, cfg.l1_weight, spec.generations),
                        _stage_key(seed, 1))
        alpha, best_fitness = result.best_genome.astype(np.float32), result.best_fitness
        stages.append(result)
    if cfg.scale:
        lower, upper = cfg.beta_bounds
        layout = GenomeLayout("beta", n, lower if cfg.sign_flip else max(0.0, lower), upper)
        spec = StageSpec("stage2_scale", layout, tuple(beta), cfg.sigma0, cfg.population_size,
                         cfg.stage2_generations, cfg.strategy)
        result = runner(spec, stage_fitness(evaluator, layout, alpha, cfg.l1_weight, spec.generations),
                        _stage_key(seed, 2))
        beta, best_fitness = result.best_genome.astype(np.float32), result.best_fitness
        stages.append(result)
    if not stages:  # neither: the plain uniform average, scored with the same fitness
        best_fitness = float(evaluator.evaluate(alpha[None], beta[None])[0] + cfg.l1_weight * float(np.mean(beta)))
    return MergeSearchResult("evo_merging", alpha, beta, stages, merged_adapter(stack, alpha, beta, prune),
                             best_fitness)


def lorahub_search(
    evaluator: Evaluator,
    stack: LoraStack | None,
    cfg: LoraHubConfig = LoraHubConfig(),
    seed: int = 0,
    runner: StageRunner | None = None,
) -> MergeSearchResult:
    """LoraHub: the strategy (CMA-ES) over w with alpha = 1, from w = 0 (the bare base model)."""
    runner = runner or default_stage_runner()
    n = evaluator.num_adapters
    alpha = np.ones(n, np.float32)
    layout = GenomeLayout("beta", n, *cfg.bounds)
    spec = StageSpec("lorahub", layout, (0.0,) * n, cfg.sigma0, cfg.population_size, cfg.generations, cfg.strategy)
    result = runner(spec, stage_fitness(evaluator, layout, alpha, cfg.l1_weight, spec.generations),
                    _stage_key(seed, 3))
    beta = result.best_genome.astype(np.float32)
    return MergeSearchResult("lorahub", alpha, beta, [result], merged_adapter(stack, alpha, beta, "none"),
                             result.best_fitness)
