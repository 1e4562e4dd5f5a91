"""CMA-ES searches of Sakana's PS and DFS merges on the project's stage machinery (docs/methods.md §4).

The search is the configured black-box strategy (``strategy``, CMA-ES by default, as the paper's), one
stage run by the caller's stage runner (the engine's checkpointing one, so a preempted search resumes)
or by :func:`~evojax_merge.search.evo_merging.default_stage_runner`.

Both fitnesses are :class:`~evojax_merge.search.cmaes.TracedFitness`: a frozen, hashable static
part and a pytree of arrays, so one generation (ask, clip, merge/route the whole population in one
``vmap``, the objective on the validation batch, tell) is one jitted step.

    PS   fitness(x) = L(θ_base + DARE-TIES(τ; d(x), w(x)))           x0 = 0.5, σ0 = 1/6, x ∈ [0, 1]
    DFS  fitness(x) = L(path(I(x), W(x)))                             x0 = a source's own path, W = 1

L is the answer-only CE (``fitness: ce``, smooth and fast) or 1 - the exact-match accuracy of the
greedy answer (``fitness: accuracy``, the paper's task metric), both from one forward.
"""

from __future__ import annotations

import dataclasses
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.merge.sakana_dfs import DFSLayout, dfs_logits, layer_row, top_level
from evojax_merge.merge.sakana_ps import Params, PSLayout, ps_merge_genome, task_vectors_of
from evojax_merge.models.config import ModelConfig
from evojax_merge.models.functional import logits_of
from evojax_merge.models.loss import answer_loss
from evojax_merge.models.sources import SourceStack
from evojax_merge.search.cmaes import StageResult, StageSpec, TracedFitness
from evojax_merge.search.evo_merging import StageRunner, default_stage_runner
from evojax_merge.search.fitness import resolve_population_chunk
from evojax_merge.search.genome import GenomeLayout
from evojax_merge.search.strategy import StrategySpec

BATCH_KEYS = ("input_ids", "attention_mask", "answer_pos", "answer_tgt", "answer_mask")


def validation_batch(encoded: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """The arrays the fitnesses read (from ``zoo.sakana_world.encode``)."""
    missing = [k for k in BATCH_KEYS if k not in encoded]
    if missing:
        raise EvoMergeInputError(f"validation batch: missing key {missing[0]!r}")
    return {k: jnp.asarray(encoded[k]) for k in BATCH_KEYS}


def _ce(logits_fn, batch) -> jax.Array:
    return objective_value("ce", logits_fn, batch)


@jax.jit
def model_ce(model, batch) -> jax.Array:
    """The validation CE of a model pytree with ``.logits(ids, mask, at)`` (a ``ParamsModel`` or a
    ``DFSModel``): compiled once per model structure, not once per method and seed."""
    return _ce(model.logits, batch)


OBJECTIVES = ("ce", "accuracy")


def exact_match_error(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """``1 - accuracy``: the fraction of examples whose greedy answer is not exactly the gold one.

    With the logits at the answer positions of the gold sequence (teacher forcing), greedy decoding
    reproduces the gold answer and its ``</s>`` exactly when every gold token is the argmax given the
    gold prefix, so one forward gives the exact-match accuracy of generated answers (in tokens).
    """
    hit = (jnp.argmax(logits, axis=-1) == targets) | ~mask
    return 1.0 - jnp.mean(jnp.all(hit, axis=-1).astype(jnp.float32))


def objective_value(objective: str, logits_fn, batch) -> jax.Array:
    """``ce``: the answer-only CE; ``accuracy``: 1 - exact match (the paper's task metric as fitness)."""
    logits = logits_fn(batch["input_ids"], batch["attention_mask"], batch["answer_pos"])
    if objective == "accuracy":
        return exact_match_error(logits, batch["answer_tgt"], batch["answer_mask"])
    return answer_loss(logits, batch["answer_tgt"], batch["answer_mask"])


def check_objective(objective: str) -> str:
    if objective not in OBJECTIVES:
        raise EvoMergeInputError(f"method.fitness: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    return objective


def over_population(one, population: jax.Array, chunk: int | None) -> jax.Array:
    """``one`` on every candidate in one call: vmapped whole, or ``chunk`` at a time (``lax.map``), as
    ``population_chunk`` does for the LoRA fitness: on a CPU a whole population's activations overflow
    the caches, and one candidate at a time is faster."""
    if chunk is None or chunk >= population.shape[0]:
        return jax.vmap(one)(population)
    return jax.lax.map(one, population, batch_size=chunk)


@dataclasses.dataclass(frozen=True)
class PSFitness:
    """``args = {"base", "tv", "key", "batch"}``; one candidate = one merged model."""

    layout: PSLayout
    config: ModelConfig
    chunk: int | None = None  # candidates per vmap inside the call (resolve_population_chunk)
    objective: str = "ce"  # or "accuracy" (1 - exact match)

    def params(self, args, genome: jax.Array) -> Params:
        return ps_merge_genome(self.layout, args["base"], args["tv"], genome, jax.random.wrap_key_data(args["key"]))

    def __call__(self, args, population, generation):
        def one(g):
            p = self.params(args, g)
            return objective_value(self.objective, lambda i, m, a: logits_of(self.config, p, i, m, a), args["batch"])

        return over_population(one, population, self.chunk)


@dataclasses.dataclass(frozen=True)
class DFSFitness:
    """``args = {"top", "layers", "batch"}``; one candidate = one path through the stacked layers."""

    layout: DFSLayout
    config: ModelConfig
    chunk: int | None = None  # candidates per vmap inside the call (resolve_population_chunk)
    objective: str = "ce"  # or "accuracy" (1 - exact match)

    def __call__(self, args, population, generation):
        def one(g):
            return objective_value(self.objective, lambda i, m, a: dfs_logits(self.layout, self.config, args["top"],
                                                                             args["layers"], g, i, m, a),
                                   args["batch"])

        return over_population(one, population, self.chunk)


@dataclasses.dataclass(frozen=True)
class PSConfig:
    """Paper defaults (mergekit-evolve's x0 and σ); ``generations`` is the CPU budget knob."""

    population_size: int = 16
    generations: int = 60  # ~1000 trials at 16 per generation
    x0: float = 0.5
    sigma0: float = 1 / 6
    bounds: tuple[float, float] = (0.0, 1.0)
    fitness: str = "ce"  # ce (fast, smooth) or accuracy (1 - exact match of the greedy answer, as the paper)
    # candidates per vmap inside the population call: auto = 1 on a CPU (measured 1.58x a loop, the
    # whole-population vmap 1.05x: python -m evojax_merge.bench --sakana), the whole population elsewhere
    population_chunk: int | str | None = "auto"
    strategy: StrategySpec = StrategySpec()  # the black-box search (CMA-ES, the paper's)


@dataclasses.dataclass(frozen=True)
class DFSConfig:
    """Paper defaults: population 128, 100 generations, r = 3, start on one model's own path."""

    population_size: int = 128
    generations: int = 100
    repeats: int = 3
    max_path: int | None = None
    start_source: int = 0  # whose own layers the start path runs
    embed_source: int = 0  # whose embeddings, final norm and head the DFS model uses
    sigma0: float = 0.5
    bounds: tuple[float, float] = (-1.0, 2.0)
    fitness: str = "ce"  # ce (fast, smooth) or accuracy (1 - exact match of the greedy answer, as the paper)
    # the whole population in one vmap: on a quiet CPU 1.54x a loop, one candidate at a time 0.98x
    # (python -m evojax_merge.bench --sakana); an int or "auto" chunks it
    population_chunk: int | str | None = None
    strategy: StrategySpec = StrategySpec()  # the black-box search (CMA-ES, the paper's)


@dataclasses.dataclass
class SearchOutcome:
    genome: np.ndarray
    result: StageResult


def _run(spec: StageSpec, fitness: TracedFitness, seed: int, progress: bool, runner: StageRunner | None
         ) -> StageResult:
    """One stage through ``runner`` (one batched population call per generation), keyed by seed and name."""
    key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(spec.name.encode()) & 0x7FFFFFFF)
    return (runner or default_stage_runner(progress=progress))(spec, fitness, key)


def ps_search(stack: SourceStack, base: Params, batch: dict, cfg: PSConfig = PSConfig(), seed: int = 0,
              progress: bool = False, runner: StageRunner | None = None
              ) -> tuple[np.ndarray, StageResult, PSFitness, dict]:
    """The strategy (CMA-ES) over the PS genome; returns (best genome, stage result, fitness, args)."""
    layout = PSLayout(stack.num_sources, stack.config.num_hidden_layers)
    x0 = layout.check(np.full(layout.length, cfg.x0), "method.x0")
    args = {"base": {k: jnp.asarray(v) for k, v in base.items()}, "tv": task_vectors_of(stack, base),
            "key": jax.random.key_data(jax.random.key(seed)), "batch": batch}
    fitness = PSFitness(layout, stack.config, resolve_population_chunk(cfg.population_chunk),
                        check_objective(cfg.fitness))
    spec = StageSpec("sakana_ps", GenomeLayout("ps", layout.length, *cfg.bounds), tuple(map(float, x0)),
                     cfg.sigma0, cfg.population_size, cfg.generations, cfg.strategy)
    result = _run(spec, TracedFitness(fitness, args), seed, progress, runner)
    return result.best_genome, result, fitness, args


def dfs_search(stack: SourceStack, batch: dict, cfg: DFSConfig = DFSConfig(), seed: int = 0,
               progress: bool = False, runner: StageRunner | None = None
               ) -> tuple[np.ndarray, StageResult, DFSLayout, dict]:
    """The strategy (CMA-ES) over the DFS genome from ``start_source``'s own path; returns (best, result,
    layout, args)."""
    layout = DFSLayout(stack.num_sources, stack.config.num_hidden_layers, cfg.repeats, cfg.max_path)
    x0 = layout.check(layout.source_path(cfg.start_source), "method.start_source path")
    args = {"top": top_level(stack, cfg.embed_source), "layers": layer_row(stack), "batch": batch}
    spec = StageSpec("sakana_dfs", GenomeLayout("dfs", layout.length, *cfg.bounds), tuple(map(float, x0)),
                     cfg.sigma0, cfg.population_size, cfg.generations, cfg.strategy)
    fitness = DFSFitness(layout, stack.config, resolve_population_chunk(cfg.population_chunk),
                         check_objective(cfg.fitness))
    result = _run(spec, TracedFitness(fitness, args), seed, progress, runner)
    return result.best_genome, result, layout, args
