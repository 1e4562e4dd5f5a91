"""One CMA-ES stage with evosax: ask -> clip to bounds -> evaluate -> tell, generation by generation.

The loop state is one pytree (``StageState``) of fixed shapes, so a checkpoint is a plain save of
it and a resumed run continues bit-identically.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from evosax.algorithms import CMA_ES
from flax import struct

from evojax_merge.search.genome import GenomeLayout

HISTORY_COLUMNS = ("best", "mean", "std", "sigma")


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One CMA-ES run: what it searches, where it starts, how long it runs."""

    name: str
    layout: GenomeLayout
    x0: tuple[float, ...]
    sigma0: float = 0.05
    population_size: int = 20
    generations: int = 20


@struct.dataclass
class StageState:
    es_state: object
    key: jax.Array
    generation: jax.Array  # generations done
    best_genome: jax.Array  # [D], best clipped candidate evaluated so far
    best_fitness: jax.Array  # scalar
    history: jax.Array  # [generations, 4]: best-so-far, mean, std of fitness, sigma


@dataclasses.dataclass
class StageResult:
    name: str
    best_genome: np.ndarray
    best_fitness: float
    history: np.ndarray  # [generations, 4], HISTORY_COLUMNS

    def history_rows(self) -> list[dict]:
        return [dict(zip(HISTORY_COLUMNS, map(float, row), strict=True)) for row in self.history]


@functools.lru_cache(maxsize=64)
def _cma_es(population_size: int, num_dims: int) -> CMA_ES:
    # One instance per shape: evosax jits ask/tell with the instance static, so stages and runs of
    # the same shape share their compiles.
    return CMA_ES(population_size=population_size, solution=jnp.zeros(num_dims))


def _strategy(spec: StageSpec) -> tuple[CMA_ES, object]:
    strategy = _cma_es(spec.population_size, spec.layout.length)
    params = strategy.default_params.replace(std_init=jnp.asarray(spec.sigma0, jnp.float32))
    return strategy, params


def init_stage(spec: StageSpec, key: jax.Array) -> StageState:
    strategy, params = _strategy(spec)
    key, init_key = jax.random.split(key)
    x0 = jnp.asarray(spec.x0, jnp.float32)
    return StageState(
        es_state=strategy.init(init_key, x0, params),
        key=key,
        generation=jnp.asarray(0, jnp.int32),
        best_genome=x0,
        best_fitness=jnp.asarray(jnp.inf, jnp.float32),
        history=jnp.full((spec.generations, len(HISTORY_COLUMNS)), jnp.nan, jnp.float32),
    )


def run_stage(
    spec: StageSpec,
    fitness_fn: Callable[[np.ndarray, int], np.ndarray],
    state: StageState,
    on_generation: Callable[[StageSpec, StageState], None] | None = None,
    progress: bool = True,
) -> StageResult:
    """Run ``spec`` from ``state`` (fresh or restored) to its last generation.

    ``fitness_fn(population [P, D], generation) -> [P]`` is minimised. ``on_generation`` sees the
    state after every generation (logging, checkpoints) and may raise to stop the run.
    """
    strategy, params = _strategy(spec)
    bar = None
    start = int(state.generation)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=spec.generations, initial=start, desc=spec.name, leave=False, dynamic_ncols=True)
    for g in range(start, spec.generations):
        key, ask_key, tell_key = jax.random.split(state.key, 3)
        population, es_state = strategy.ask(ask_key, state.es_state, params)
        population = spec.layout.clip(population)  # bounds: clip, then evaluate and tell the clipped
        fitness = jnp.asarray(fitness_fn(np.asarray(population), g), jnp.float32)
        es_state, _ = strategy.tell(tell_key, population, fitness, es_state, params)
        i = jnp.argmin(fitness)
        improved = fitness[i] < state.best_fitness
        best_fitness = jnp.where(improved, fitness[i], state.best_fitness)
        best_genome = jnp.where(improved, population[i], state.best_genome)
        row = jnp.stack([best_fitness, fitness.mean(), fitness.std(), jnp.asarray(es_state.std, jnp.float32)])
        state = StageState(
            es_state=es_state,
            key=key,
            generation=jnp.asarray(g + 1, jnp.int32),
            best_genome=best_genome,
            best_fitness=best_fitness,
            history=state.history.at[g].set(row),
        )
        if bar is not None:
            bar.set_postfix(best=f"{float(best_fitness):.4f}", sigma=f"{float(es_state.std):.4f}")
            bar.update(1)
        if on_generation is not None:
            on_generation(spec, state)
    if bar is not None:
        bar.close()
    return StageResult(
        name=spec.name,
        best_genome=np.asarray(state.best_genome),
        best_fitness=float(state.best_fitness),
        history=np.asarray(state.history),
    )
