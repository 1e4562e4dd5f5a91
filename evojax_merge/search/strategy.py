"""Black-box search strategies: any evosax algorithm, by its class name, as a hashable stage setting.

    conf/strategy/<file>.yaml:   name: <class in evosax.algorithms>   params: {<default_params field>: value}

A :class:`StrategySpec` is static (frozen, hashable): it is part of a ``StageSpec``, so the stage's
jitted generation is compiled per strategy. The stage's ``sigma0`` sets the step size: the
strategy's ``std_init`` param where it has one, its ``std_schedule`` (a constant σ0) where its
constructor takes one, and, for a population-based strategy, the spread of its first population
(x0 plus σ0-noise). ``params`` override any other scalar of the strategy's ``default_params``
(learning rates, damping, elite ratios), checked by name when the spec is read.

The history and the progress bar record one step size per generation: :func:`step_size`, the
mean over dimensions of a per-dimension ``std`` (SNES, Sep-style diagonal strategies, SimpleES)
and the scalar ``std`` itself for CMA-ES.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import numbers
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from evosax.algorithms import algorithms as _evosax_algorithms
from evosax.algorithms.population_based.base import PopulationBasedAlgorithm

from evojax_merge.errors import EvoMergeInputError

ParamValue = float | int | bool

# every algorithm evosax exports, by class name (its registry also has short aliases: DES, LES, LGA)
ALGORITHMS: dict[str, type] = {cls.__name__: cls for cls in _evosax_algorithms.values()}
_GIVEN = ("self", "population_size", "solution")  # what a stage passes every constructor
STEP_SIZE_FIELDS = ("std", "sigma")  # the state field that holds the step size, first match


@dataclasses.dataclass(frozen=True)
class StrategySpec:
    """An evosax algorithm (``name``, its class) and overrides of its ``default_params`` (sorted by key)."""

    name: str = "CMA_ES"
    params: tuple[tuple[str, ParamValue], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(sorted((str(k), v) for k, v in self.params)))

    @classmethod
    def from_config(cls, cfg: Mapping | StrategySpec | None) -> StrategySpec:
        """``{name, params}`` (a ``conf/strategy`` file) -> a checked spec; None is CMA-ES."""
        if cfg is None:
            return cls()
        if isinstance(cfg, StrategySpec):
            return cfg.checked()
        if not isinstance(cfg, Mapping):
            raise EvoMergeInputError(f"strategy: expected {{name, params}}, got {cfg!r}")
        unknown = [str(k) for k in cfg if k not in ("name", "params")]
        if unknown:
            raise EvoMergeInputError(f"strategy.{unknown[0]}: unknown key (known: name, params)")
        name = cfg.get("name", cls.name)
        if not isinstance(name, str):
            raise EvoMergeInputError(f"strategy.name: {name!r} is not a class name")
        params = cfg.get("params") or {}
        if not isinstance(params, Mapping):
            raise EvoMergeInputError(f"strategy.params: expected a mapping of default_params overrides, got {params!r}")
        for key, value in params.items():
            if not isinstance(value, bool | numbers.Real):
                raise EvoMergeInputError(f"strategy.params.{key}: {value!r} is not a number or a bool")
        return cls(name, tuple((str(k), v) for k, v in params.items())).checked()

    def to_dict(self) -> dict:
        """JSON-able ``{name, params}``: the config form (results.json, checkpoint fingerprints)."""
        return {"name": self.name, "params": dict(self.params)}

    def algorithm_class(self) -> type:
        cls = ALGORITHMS.get(self.name)
        if cls is None:
            usable = sorted(name for name, c in ALGORITHMS.items() if not _required_arguments(c))
            raise EvoMergeInputError(f"strategy.name: {self.name!r} is not an evosax algorithm a stage can run "
                                     f"(known: {', '.join(usable)})")
        return cls

    def checked(self) -> StrategySpec:
        """This spec, once its class builds from (population, solution) alone and every param is known."""
        required = _required_arguments(self.algorithm_class())
        if required:
            raise EvoMergeInputError(f"strategy.name: {self.name} needs constructor arguments a stage does not give "
                                     f"({', '.join(required)}); pick another algorithm")
        defaults = build_algorithm(StrategySpec(self.name), 8, 2, 1.0).default_params  # names only: any shape
        fields = [f.name for f in dataclasses.fields(defaults)]
        for key, value in self.params:
            if key == "std_init":
                raise EvoMergeInputError("strategy.params.std_init: the initial step size is the stage's sigma0 "
                                         "(method.sigma0)")
            if key not in fields:
                raise EvoMergeInputError(f"strategy.params.{key}: unknown parameter of {self.name} "
                                         f"(known: {', '.join(fields) or 'none'})")
            default = getattr(defaults, key)
            if np.ndim(default) != 0:
                raise EvoMergeInputError(f"strategy.params.{key}: {self.name}'s {key} is an array of shape "
                                         f"{list(np.shape(default))}, not a scalar to override")
            kind = np.asarray(default).dtype.kind  # b, i or f
            if isinstance(value, bool) != (kind == "b") or (kind in "iu" and not float(value).is_integer()):
                raise EvoMergeInputError(f"strategy.params.{key}: {value!r} where {self.name} has "
                                         f"a {np.asarray(default).dtype.name} ({default!r})")
        return self


def _required_arguments(cls: type) -> list[str]:
    """Constructor arguments without a default beyond what a stage gives (population size, solution)."""
    return [p.name for p in inspect.signature(cls.__init__).parameters.values()
            if p.default is inspect.Parameter.empty and p.name not in _GIVEN
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]


def _takes_std_schedule(cls: type) -> bool:
    return "std_schedule" in inspect.signature(cls.__init__).parameters


def build_algorithm(spec: StrategySpec, population_size: int, num_dims: int, sigma0: float):
    """The evosax instance for a stage's shape; one per (strategy, population, dims), so compiles are shared.

    ``sigma0`` is part of the instance only where the constructor takes a ``std_schedule`` (else the
    step size travels in the params and stages of any σ0 share the instance).
    """
    schedule_sigma = float(sigma0) if _takes_std_schedule(spec.algorithm_class()) else None
    return _build(spec, int(population_size), int(num_dims), schedule_sigma)


@functools.lru_cache(maxsize=64)
def _build(spec: StrategySpec, population_size: int, num_dims: int, schedule_sigma: float | None):
    # evosax jits ask/tell with the instance static: the same instance means the same compiles
    cls = spec.algorithm_class()
    kwargs = {} if schedule_sigma is None else {"std_schedule": optax.constant_schedule(schedule_sigma)}
    try:
        return cls(population_size=population_size, solution=jnp.zeros(num_dims), **kwargs)
    except AssertionError as e:  # evosax checks shapes with asserts (e.g. Open_ES: an even population)
        raise EvoMergeInputError(f"strategy.name: {spec.name} with population {population_size} and "
                                 f"{num_dims} dimensions: {e}") from None


def algorithm_params(algorithm, spec: StrategySpec, sigma0: float):
    """``default_params`` with ``std_init = σ0`` (where it exists) and the spec's overrides.

    Inside a trace they are traced like the rest of the generation (so CMA-ES's numbers stay what they
    were), except for an algorithm that derives Python ints from them (LM-MA-ES's memory size ``m``):
    those are evaluated eagerly, as a trace cannot give an int.
    """
    if _traceable_params(algorithm):
        return _params(algorithm, spec, sigma0)
    with jax.ensure_compile_time_eval():
        return _params(algorithm, spec, sigma0)


@functools.lru_cache(maxsize=64)
def _traceable_params(algorithm) -> bool:
    try:
        jax.eval_shape(lambda: algorithm.default_params)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError,
            jax.errors.TracerBoolConversionError):
        return False
    return True


def _params(algorithm, spec: StrategySpec, sigma0: float):
    params = algorithm.default_params
    if "std_init" in {f.name for f in dataclasses.fields(params)}:
        params = params.replace(std_init=jnp.asarray(sigma0, jnp.float32))
    for key, value in spec.params:
        default = getattr(params, key)
        if isinstance(default, jax.Array | np.ndarray):
            value = jnp.asarray(value, default.dtype)
        else:  # a Python scalar default stays a Python scalar of its type
            value = type(default)(value)
        params = params.replace(**{key: value})
    return params


def is_population_based(algorithm) -> bool:
    """Population-based algorithms start from a population (``init(key, population, fitness, params)``)."""
    return isinstance(algorithm, PopulationBasedAlgorithm)


def step_size(es_state) -> jax.Array:
    """The scalar step size σ of a state: its ``std`` (the mean over dimensions when it is per-dimension),
    NaN for an algorithm without one (differential evolution, PSO)."""
    for name in STEP_SIZE_FIELDS:
        value = getattr(es_state, name, None)
        if value is not None:
            value = jnp.asarray(value, jnp.float32)
            return value if value.ndim == 0 else jnp.mean(value)
    return jnp.asarray(jnp.nan, jnp.float32)
