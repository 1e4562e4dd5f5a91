"""The method protocol: given a world, a target and an evaluator, return an outcome.

A method is one class, created from ``conf/method/<name>.yaml`` through Hydra's ``_target_``; its
hyperparameters are the class's constructor arguments. The experiment engine knows no method by
name: it builds a :class:`MergeTask` for each (target, pool, validation set) cell and calls
``method.run(task)``.

What a method yields decides how its test answers are generated:

- ``Outcome.adapter``: one rank-r adapter (Evo-Merging, LoraHub, the uniform average, one adapter);
- ``Outcome.genome``: the ``(alpha, beta)`` control vectors behind that adapter, which is all a
  black-box service needs to generate with it;
- ``Outcome.delta``: a dense update folded into the base weights (task arithmetic, TIES, DARE);
- ``Outcome.model``: a whole model of its own (merges of full fine-tunes, data-flow merges);
- none of these: the base model alone.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import numpy as np

from evojax_merge.lora.adapter import LoraAdapter, LoraStack
from evojax_merge.models.sources import SourceStack
from evojax_merge.search.fitness import Evaluator

# What a world can provide and a method can require (checked before anything is built).
LORA_POOL = "lora_pool"  # a pool of LoRA adapters on one base, scored through an evaluator
POOL_WEIGHTS = "pool_weights"  # the pool's weights are in this process (white-box methods)
FULL_FINETUNES = "full_finetunes"  # whole fine-tuned models of one architecture (Sakana, DAM on full models)
SOURCE_DATA = "source_data"  # each source's own training records (DAM's KL term)


@dataclasses.dataclass
class SourcesCell:
    """A cell of a world of full fine-tunes: the stacked sources, their base, the target's validation batch."""

    stack: SourceStack
    base: dict[str, jax.Array]
    batch: dict
    labels: tuple[str, ...]  # short names of the sources ("lang", "skill")
    source_data: tuple[dict | None, ...] = ()  # each source's own-task records, encoded (DAM's KL term)
    val_data: dict | None = None  # the target's validation records, encoded as numpy (DAM w/o KL)


@dataclasses.dataclass
class Outcome:
    """What a method found for one target: the thing to test, its validation scores, its record."""

    method: str
    adapter: LoraAdapter | None = None
    genome: tuple[np.ndarray, np.ndarray] | None = None  # (alpha [N], beta [N])
    prune: str = "A"  # the factor the genome's alpha sparsifies
    delta: dict[str, jax.Array] | None = None
    model: Any = None
    val_ce: float | None = None  # validation cross-entropy of the result
    val_fitness: float | None = None  # what the search minimised (CE plus its penalty)
    details: dict = dataclasses.field(default_factory=dict)
    search: object | None = None  # the MergeSearchResult of a CMA-ES method


@dataclasses.dataclass
class MergeTask:
    """One cell of an experiment, as a method sees it.

    ``evaluator_for(prune)`` scores populations of ``(alpha, beta)`` on the target's validation set
    over this cell's pool, in-process or through a service. ``stack`` is the pool's weights, or None
    when they are not ours (a remote run). ``cache`` is shared by every method of the cell, so work
    such as the single-adapter losses is done once per cell.
    """

    target: str
    pool_names: list[str]
    evaluator_for: Callable[[str], Evaluator]
    stack: LoraStack | None = None
    world: Any = None  # the World when the run is local (methods that need more than the pool)
    sources: SourcesCell | None = None  # a world of full fine-tunes: what its methods merge
    runner: Callable | None = None  # a checkpointing runner: CMA-ES stages, or CheckpointRunner.loop
    seed: int = 0
    progress: bool = True
    val_records: list[dict] | None = None  # the cell's validation records (pooled over a multi-task cell's tasks)
    cache: dict = dataclasses.field(default_factory=dict)

    @property
    def num_adapters(self) -> int:
        return len(self.pool_names)

    def single_adapter_losses(self) -> np.ndarray:
        """Validation CE of each adapter alone (alpha = 1, beta = e_i), computed once per cell."""
        if "single_losses" not in self.cache:
            n = self.num_adapters
            self.cache["single_losses"] = np.asarray(
                self.evaluator_for("A").evaluate(np.ones((n, n), np.float32), np.eye(n, dtype=np.float32)))
        return self.cache["single_losses"]


class MergeMethod(abc.ABC):
    """Base class of every method. Subclasses set the class attributes and implement ``run``.

    ``remote``: the method needs nothing but an evaluator, so it also runs against a black-box
    service. ``searches``: it runs a checkpointed search (CMA-ES stages, or an iterative loop through
    ``CheckpointRunner.loop``), and so gets a checkpointing runner.
    ``prune``: the LoRA factor its evaluator sparsifies. ``requires``: what a world must provide
    (``LORA_POOL``, ``POOL_WEIGHTS``, ``FULL_FINETUNES``, ``SOURCE_DATA``); the engine refuses a
    mismatch with one line before anything is built.
    """

    remote: ClassVar[bool] = False
    searches: ClassVar[bool] = False
    requires: ClassVar[frozenset[str]] = frozenset({LORA_POOL})  # what the world must provide
    prune: str = "A"

    def missing(self, provided: frozenset[str]) -> frozenset[str]:
        """What this method needs that a world providing ``provided`` lacks (empty: it can run there)."""
        return frozenset(self.requires) - frozenset(provided)

    @abc.abstractmethod
    def run(self, task: MergeTask) -> Outcome:
        """Find this method's merge for ``task.target``."""

    def describe(self) -> dict:
        """The method's hyperparameters, for results.json."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}
