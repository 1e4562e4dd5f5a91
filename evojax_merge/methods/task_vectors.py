"""Generalized task arithmetic over a LoRA pool (docs/methods.md §3), given its best chance: a
pre-selection of the adapters with the lowest validation loss, then a grid scored by validation CE.

    ΔW = λ · consensus(sparsify(τ_1 .. τ_N))        τ_i = s_i B_i A_i, adapter i's dense update

One class; the papers' merges are its configurations (conf/method/<name>.yaml):

    task_arithmetic  sparsifier: none (keep_all)   consensus: none (Sum)     grid: λ
    ties             magnitude_prune               SignElection              grid: λ × density
    dare             random_drop                   Sum                       grid: λ × density
    dare_ties        random_drop                   SignElection              grid: λ × density
    breadcrumbs      magnitude_band (γ = 0.01)     Sum                       grid: λ × density
    della            ranked_drop (ε = 0.1)         SignElection              grid: λ × density

A part is configured as ``{_target_: <dotted path>, <option>: <value>, ...}`` (or the bare dotted
path, or null for none): the sparsifier a ``@sparsifier`` function of ``merge/sparsifiers.py``
(with ``_partial_: true``, so that Hydra's recursive ``instantiate`` binds its options instead of
calling it), the consensus a ``Consensus`` class of ``merge/consensus.py``. The constructor
takes the raw mapping or what Hydra made of it (a ``functools.partial``, a ``Consensus``).

The grid has a density axis only when the sparsifier reads a density. The merge is streamed module
by module (``merge_module``): the pool's dense task vectors are never built whole. A rank-based
sparsifier (TIES's magnitude trim, Breadcrumbs' band) cuts each task vector once per cell at every
density of the grid (``module_cuts``: a radix select of the k-th largest magnitude, no sort); each grid
point then merges from those cuts (``merge_module_cuts``): one compile per module shape for every density. These methods
need the pool's weights, so they never run against a black-box service.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import LoraStack
from evojax_merge.merge.consensus import Consensus, Sum
from evojax_merge.merge.sparsifiers import Sparsifier, keep_all
from evojax_merge.merge.task_vectors import (
    merge_module,
    merge_module_cuts,
    merge_module_factors,
    module_cuts,
    module_key,
)
from evojax_merge.methods.base import LORA_POOL, POOL_WEIGHTS, MergeMethod, MergeTask, Outcome
from evojax_merge.search.grid import ModuleDelta, grid_search, preselect, streamed_ce, streamed_delta

PartSpec = str | Mapping | None


# --------------------------------------------------------------------------- parts from config


def _target(spec: str | Mapping, what: str) -> tuple[object, dict]:
    if isinstance(spec, str):
        path, options = spec, {}
    elif isinstance(spec, Mapping) and "_target_" in spec:
        # Hydra's own keys (_target_, _partial_, _recursive_, _convert_) are not options
        path = spec["_target_"]
        options = {k: v for k, v in spec.items() if not (k.startswith("_") and k.endswith("_"))}
    else:
        raise EvoMergeInputError(f"{what}: {spec!r} is neither null, a dotted path nor a mapping with _target_")
    if not isinstance(path, str) or "." not in path:
        raise EvoMergeInputError(f"{what}._target_: {path!r} is not a dotted path")
    module, _, attr = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise EvoMergeInputError(f"{what}._target_: {path} does not import ({e})") from None
    return obj, {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def build_sparsifier(spec: PartSpec | Sparsifier) -> Sparsifier:
    """A ``Sparsifier`` from its config: null (no sparsification), a dotted path, ``{_target_, **options}``,
    or that mapping instantiated by Hydra (``functools.partial``)."""
    if spec is None:
        return Sparsifier(keep_all)
    if isinstance(spec, Sparsifier):
        return spec
    if isinstance(spec, functools.partial) and not spec.args:  # Hydra's instantiate with _partial_: true
        fn, options = spec.func, dict(spec.keywords)
    else:
        fn, options = _target(spec, "sparsifier")
    if not getattr(fn, "is_sparsifier", False):
        raise EvoMergeInputError(f"sparsifier._target_: {fn!r} is not a @sparsifier function")
    return Sparsifier.of(fn, **options)


def build_consensus(spec: PartSpec | Consensus) -> Consensus:
    """A ``Consensus`` from its config: null (a plain sum), a dotted path, or ``{_target_, **options}``."""
    if spec is None:
        return Sum()
    if isinstance(spec, Consensus):
        return spec
    cls, options = _target(spec, "consensus")
    if not (inspect.isclass(cls) and issubclass(cls, Consensus)):
        raise EvoMergeInputError(f"consensus._target_: {cls!r} is not a Consensus class")
    try:
        return cls(**options)
    except TypeError as e:
        raise EvoMergeInputError(f"consensus: {e}") from None


def preselected(task: MergeTask, top_k: int) -> tuple[LoraStack, list[int]]:
    """The pool's ``top_k`` adapters with the lowest single-adapter validation CE (all when top_k <= 0),
    gathered once per cell (the factors, not dense task vectors: those are never built whole)."""
    if task.stack is None:
        raise EvoMergeInputError("needs the pool's weights, which a remote run does not have")
    selected = preselect(task.single_adapter_losses(), top_k)
    cache = task.cache.setdefault("preselected", {})
    if tuple(selected) not in cache:
        cache[tuple(selected)] = task.stack.take(selected)
    return cache[tuple(selected)], selected


def check_lambdas(lambdas) -> tuple[float, ...]:
    if not lambdas:
        raise EvoMergeInputError("lambdas must not be empty")
    return tuple(float(x) for x in lambdas)


# --------------------------------------------------------------------------- the method


class TaskVectorMerge(MergeMethod):
    """``λ · consensus(sparsifier(τ))`` with λ (and density, if the sparsifier has one) by validation CE."""

    requires = frozenset({LORA_POOL, POOL_WEIGHTS})

    def __init__(self, sparsifier: PartSpec = None, consensus: PartSpec = None,
                 lambdas: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 1.0),
                 densities: tuple[float, ...] = (0.5, 0.7, 0.9, 1.0), preselect_top_k: int = 9, seed: int = 0):
        self.sparsifier = build_sparsifier(sparsifier)
        self.consensus = build_consensus(consensus)
        self.lambdas = check_lambdas(lambdas)
        if self.sparsifier.uses_density:
            if not densities:
                raise EvoMergeInputError("densities must not be empty")
            if any(not 0.0 < d <= 1.0 for d in densities):
                raise EvoMergeInputError(f"densities must lie in (0, 1], got {list(densities)}")
        self.densities = tuple(float(x) for x in densities) if self.sparsifier.uses_density else (1.0,)
        self.preselect_top_k, self.seed = int(preselect_top_k), int(seed)

    @property
    def name(self) -> str:
        return f"{self.sparsifier.name}+{type(self.consensus).__name__}"

    def axes(self) -> dict[str, tuple[float, ...]]:
        """The grid: λ, and density when the sparsifier reads one."""
        return {"lambda": self.lambdas} | ({"density": self.densities} if self.sparsifier.uses_density else {})

    def describe(self) -> dict:
        return {"sparsifier": self.sparsifier.describe(), "consensus": self.consensus.describe(),
                "lambdas": list(self.lambdas), "densities": list(self.densities),
                "preselect_top_k": self.preselect_top_k, "seed": self.seed}

    def module_delta(self, point: Mapping[str, float]) -> ModuleDelta:
        """Module m's streamed update at one grid point; draws from ``module_key(key(seed), m)``."""
        lam, density, key = jnp.float32(point["lambda"]), float(point.get("density", 1.0)), jax.random.key(self.seed)
        return lambda m, a, b, scale, dtype: merge_module(a, b, scale, self.sparsifier, self.consensus, lam,
                                                          density, module_key(key, m), dtype)

    def module_programs(self) -> dict[str, Callable]:
        """The per-module functions of ``(a, b, scale)`` a run executes (for evojax_merge/bench/stream_memory.py)."""
        density = min(self.densities)
        key = jax.random.key(self.seed)
        return {"merge": lambda a, b, scale: merge_module_factors(a, b, scale, self.sparsifier, self.consensus,
                                                                  jnp.float32(self.lambdas[0]), density, key)}

    def cut_delta(self, stack: LoraStack) -> Callable[[Mapping[str, float]], ModuleDelta]:
        """``point -> ModuleDelta`` of a rank-based sparsifier: every module's cuts at every density of the
        grid, from one radix select per task vector and rank (computed here, once), then each point merged
        from its cuts. The same merge as :meth:`module_delta`."""
        ranks = {m: {d: self.sparsifier.rank_counts(d, stack.B[m].shape[1] * stack.A[m].shape[2])
                     for d in self.densities} for m in stack.A}
        cuts = {}
        for m in stack.A:
            ks = jnp.asarray([k for d in self.densities for k in ranks[m][d]], jnp.int32)
            cuts[m] = module_cuts(stack.A[m], stack.B[m], stack.scale, ks)

        def at(point: Mapping[str, float]) -> ModuleDelta:
            j = self.densities.index(float(point.get("density", 1.0)))
            lam = jnp.float32(point["lambda"])

            def delta(m, a, b, scale, dtype):
                width = len(ranks[m][self.densities[j]])
                sl = slice(j * width, (j + 1) * width)
                ks = jnp.asarray(ranks[m][self.densities[j]], jnp.int32)
                return merge_module_cuts(a, b, scale, self.sparsifier, self.consensus, lam, ks, cuts[m][0][sl],
                                         cuts[m][1][sl], dtype)

            return delta

        return at

    def run(self, task: MergeTask) -> Outcome:
        sub, selected = preselected(task, self.preselect_top_k)
        evaluator = task.evaluator_for("A")
        point_delta = self.cut_delta(sub) if self.sparsifier.rank_based else self.module_delta
        res = grid_search(self.axes(), lambda p: streamed_ce(evaluator, sub, point_delta(p)), "val_ce")
        delta = streamed_delta(evaluator, sub, point_delta(res.params))
        return Outcome(self.name, delta=delta, val_ce=res.score, val_fitness=res.score,
                       details={"params": res.params, "selected": [task.pool_names[i] for i in selected],
                                "grid": res.table})
