"""One black-box search stage with evosax: ask -> clip to bounds -> evaluate -> tell, generation by generation.

The algorithm is the stage's ``strategy`` (:class:`~evojax_merge.search.strategy.StrategySpec`,
``conf/strategy/``; CMA-ES by default): any evosax algorithm, by class name.

The loop state is one pytree (``StageState``) of fixed shapes, so a checkpoint is a plain save of
it and a resumed run continues bit-identically.

Two kinds of fitness:

- a :class:`TracedFitness` (the in-process evaluator): ask, clip, evaluate, penalty and tell are one
  jitted generation, ``lax.scan``-ned over the generations between two host visits (checkpoints),
  so the host sees the state only there;
- a plain host function ``(population [P, D] numpy, generation) -> [P]`` (a remote service, a
  test's numpy quadratic): the same generation, with the evaluation on the host.

Every stage evaluates its start ``x0`` first, and keeps it as the best unless a candidate beats it.
A NaN fitness counts as +inf everywhere: in the strategy's ranking and in the best-so-far.

The history's ``sigma`` column is the strategy's step size after each generation; for a strategy
with a per-dimension std (SNES, SimpleES, PGPE) it is the mean over dimensions
(:func:`~evojax_merge.search.strategy.step_size`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from evojax_merge.search.genome import GenomeLayout
from evojax_merge.search.strategy import (
    StrategySpec,
    algorithm_params,
    build_algorithm,
    is_population_based,
    step_size,
)

HISTORY_COLUMNS = ("best", "mean", "std", "sigma")


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One search run: what it searches, where it starts, how long it runs, with which strategy."""

    name: str
    layout: GenomeLayout
    x0: tuple[float, ...]
    sigma0: float = 0.05
    population_size: int = 20
    generations: int = 20
    strategy: StrategySpec = StrategySpec()


@dataclasses.dataclass(frozen=True)
class TracedFitness:
    """A fitness that runs inside ``jit``: ``fn(args, population [P, D], generation) -> [P]``.

    ``fn`` is static and hashable (a frozen dataclass of static settings), ``args`` a pytree of
    arrays (the base, the pool, the validation data, the fixed vector). Arrays travel as arguments,
    never as baked-in constants, so stages and targets of equal shapes share one compile.
    """

    fn: Callable[[object, jax.Array, jax.Array], jax.Array]
    args: object

    def __call__(self, population, generation):  # also usable as a host fitness
        return np.asarray(_traced_call(self.fn, self.args, jnp.asarray(population), jnp.asarray(generation, jnp.int32)))


@functools.partial(jax.jit, static_argnums=0)
def _traced_call(fn, args, population, generation):
    return fn(args, population, generation)


HostFitness = Callable[[np.ndarray, int], np.ndarray]


@struct.dataclass
class StageState:
    es_state: object
    key: jax.Array
    generation: jax.Array  # generations done
    best_genome: jax.Array  # [D], best clipped candidate evaluated so far (x0 before any beats it)
    best_fitness: jax.Array  # scalar
    history: jax.Array  # [generations, 4]: best-so-far, mean, std of fitness, step size (mean over dims)


@dataclasses.dataclass
class StageResult:
    name: str
    best_genome: np.ndarray
    best_fitness: float
    history: np.ndarray  # [generations, 4], HISTORY_COLUMNS

    def history_rows(self) -> list[dict]:
        return [dict(zip(HISTORY_COLUMNS, map(float, row), strict=True)) for row in self.history]


def _strategy(spec: StageSpec) -> tuple[object, object]:
    # One instance per (strategy, shape) (lru_cache in build_algorithm): evosax jits ask/tell with the
    # instance static, so stages and runs of the same strategy and shape share their compiles.
    strategy = build_algorithm(spec.strategy, spec.population_size, spec.layout.length, spec.sigma0)
    return strategy, algorithm_params(strategy, spec.strategy, spec.sigma0)


def finite_or_inf(fitness: jax.Array) -> jax.Array:
    """NaN -> +inf: a candidate whose loss is NaN ranks last and is never the best."""
    return jnp.where(jnp.isnan(fitness), jnp.inf, fitness)


def _evaluate_x0(spec: StageSpec, fitness: TracedFitness | HostFitness | None) -> jax.Array:
    if fitness is None:
        return jnp.asarray(jnp.inf, jnp.float32)
    x0 = np.asarray(spec.x0, np.float32)[None]
    value = fitness(x0, 0)
    return finite_or_inf(jnp.asarray(value, jnp.float32).reshape(-1)[0])


def init_stage(spec: StageSpec, key: jax.Array, fitness: TracedFitness | HostFitness | None = None) -> StageState:
    """A fresh stage at ``x0``. With ``fitness``, x0 is evaluated first and is the best to beat."""
    strategy, params = _strategy(spec)
    key, init_key = jax.random.split(key)
    x0 = jnp.asarray(spec.x0, jnp.float32)
    best_fitness = _evaluate_x0(spec, fitness)
    if is_population_based(strategy):
        es_state = _init_population(spec, strategy, params, init_key, x0, best_fitness)
    else:
        es_state = strategy.init(init_key, x0, params)
    return StageState(
        es_state=es_state,
        key=key,
        generation=jnp.asarray(0, jnp.int32),
        best_genome=x0,
        best_fitness=best_fitness,
        history=jnp.full((spec.generations, len(HISTORY_COLUMNS)), jnp.nan, jnp.float32),
    )


def _init_population(spec: StageSpec, strategy, params, key: jax.Array, x0: jax.Array, x0_fitness: jax.Array):
    """A population-based strategy starts from ``[x0, clip(x0 + σ0 z_1), ...]``: x0 with its fitness, the
    others unevaluated (+inf), so the first generation's evaluated candidates replace them."""
    init_key, noise_key = jax.random.split(key)
    z = jax.random.normal(noise_key, (spec.population_size, spec.layout.length), jnp.float32)
    population = spec.layout.clip(x0 + spec.sigma0 * z).at[0].set(x0)
    fitness = jnp.full((spec.population_size,), jnp.inf, jnp.float32).at[0].set(x0_fitness)
    return strategy.init(init_key, population, fitness, params)


def _ask(spec: StageSpec, state: StageState):
    strategy, params = _strategy(spec)
    key, ask_key, tell_key = jax.random.split(state.key, 3)
    population, es_state = strategy.ask(ask_key, state.es_state, params)
    return spec.layout.clip(population), es_state, key, tell_key  # bounds: clip, evaluate and tell the clipped


def _tell(spec: StageSpec, state: StageState, population, es_state, key, tell_key, fitness) -> StageState:
    strategy, params = _strategy(spec)
    fitness = finite_or_inf(jnp.asarray(fitness, jnp.float32))
    es_state, _ = strategy.tell(tell_key, population, fitness, es_state, params)
    i = jnp.argmin(fitness)
    improved = fitness[i] < state.best_fitness
    best_fitness = jnp.where(improved, fitness[i], state.best_fitness)
    best_genome = jnp.where(improved, population[i], state.best_genome)
    finite = jnp.isfinite(fitness)
    count = jnp.maximum(finite.sum(), 1)
    mean = jnp.where(finite, fitness, 0.0).sum() / count
    std = jnp.sqrt(jnp.where(finite, (fitness - mean) ** 2, 0.0).sum() / count)
    row = jnp.stack([best_fitness, mean, std, step_size(es_state)])
    return StageState(es_state=es_state, key=key, generation=state.generation + 1, best_genome=best_genome,
                      best_fitness=best_fitness, history=state.history.at[state.generation].set(row))


def _generation(spec: StageSpec, fn, args, state: StageState) -> StageState:
    """One whole generation, traceable: ask, clip, evaluate (NaN -> inf), tell, best-so-far."""
    population, es_state, key, tell_key = _ask(spec, state)
    return _tell(spec, state, population, es_state, key, tell_key, fn(args, population, state.generation))


@functools.partial(jax.jit, static_argnames=("spec", "fn", "steps"))
def advance(spec: StageSpec, fn, args, state: StageState, steps: int) -> StageState:
    """``steps`` generations in one compiled call (``lax.scan``); the host sees only the end state."""
    state, _ = jax.lax.scan(lambda s, _: (_generation(spec, fn, args, s), None), state, None, length=steps)
    return state


_ask_jit = jax.jit(_ask, static_argnums=0)
_tell_jit = jax.jit(_tell, static_argnums=0)


def run_stage(
    spec: StageSpec,
    fitness: TracedFitness | HostFitness,
    state: StageState,
    on_generation: Callable[[StageSpec, StageState], None] | None = None,
    progress: bool = True,
    visit_every: int | Callable[[int], bool] = 1,
) -> StageResult:
    """Run ``spec`` from ``state`` (fresh or restored) to its last generation.

    ``fitness`` is minimised. ``on_generation(spec, state)`` sees every state the host sees (logging,
    checkpoints) and may raise to stop the run. With a :class:`TracedFitness` the host sees the state
    after generation g only when ``visit_every(g)`` is true (an int n means every n-th generation)
    and after the last; a host fitness is visited every generation.
    """
    visit = (lambda g, n=visit_every: g % n == 0) if isinstance(visit_every, int) else visit_every
    bar = None
    start = int(state.generation)
    if progress:
        from evojax_merge.logs import progress_bar

        bar = progress_bar(spec.generations, spec.name, initial=start)
    g = start
    while g < spec.generations:
        if isinstance(fitness, TracedFitness):
            stop = next(n for n in range(g + 1, spec.generations + 1) if visit(n) or n == spec.generations)
            state = advance(spec, fitness.fn, fitness.args, state, stop - g)
        else:
            population, es_state, key, tell_key = _ask_jit(spec, state)
            values = fitness(np.asarray(population), g)
            state = _tell_jit(spec, state, population, es_state, key, tell_key, jnp.asarray(values, jnp.float32))
            stop = g + 1
        if bar is not None:
            bar.set_postfix(best=f"{float(state.best_fitness):.4f}", sigma=f"{float(step_size(state.es_state)):.4f}")
            bar.update(stop - g)
        g = stop
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
