"""The white-box task-vector baselines (docs/methods.md §1), each given its best chance: a
pre-selection of the adapters with the lowest validation loss, then a grid scored by validation CE.

    task arithmetic:  ΔW = λ · Σ_i τ_i                          λ ∈ lambdas
    TIES:             ΔW = λ · disjoint_mean(trim_d(τ), elect_sign)  λ × density
    DARE:             ΔW = λ · Σ_i m_i ⊙ τ_i / d,  m_i ~ Bernoulli(d)
    DARE-TIES:        TIES with DARE's random drop in place of the trim

τ_i = s_i B_i A_i is adapter i's dense update. They need the pool's weights, so they never run
against a black-box service.
"""

from __future__ import annotations

from typing import ClassVar

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.methods.base import LORA_POOL, POOL_WEIGHTS, MergeMethod, MergeTask, Outcome
from evojax_merge.search.grid import BaselineGridConfig, grid_search


class TaskVectorMerge(MergeMethod):
    """One grid baseline; subclasses name the merge (``kind``) and whether it has a density."""

    requires = frozenset({LORA_POOL, POOL_WEIGHTS})

    kind: ClassVar[str]
    has_density: ClassVar[bool] = True

    def __init__(self, lambdas: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 1.0),
                 densities: tuple[float, ...] = (0.5, 0.7, 0.9, 1.0), preselect_top_k: int = 9, seed: int = 0):
        if not lambdas or (self.has_density and not densities):
            raise EvoMergeInputError("lambdas and densities must not be empty")
        if any(not 0.0 < d <= 1.0 for d in densities):
            raise EvoMergeInputError(f"densities must lie in (0, 1], got {list(densities)}")
        self.config = BaselineGridConfig(tuple(float(x) for x in lambdas),
                                         tuple(float(x) for x in densities) if self.has_density else (1.0,),
                                         int(preselect_top_k), int(seed))

    def describe(self) -> dict:
        return {"lambdas": list(self.config.lambdas), "densities": list(self.config.densities),
                "preselect_top_k": self.config.preselect_top_k, "seed": self.config.seed}

    def run(self, task: MergeTask) -> Outcome:
        if task.stack is None:
            raise EvoMergeInputError(f"{self.kind}: needs the pool's weights, which a remote run does not have")
        res = grid_search(task.evaluator_for("A"), task.stack, self.kind, self.config, task.single_adapter_losses(),
                          task.cache.setdefault("task_vectors", {}))
        return Outcome(self.kind, delta=res.delta, val_ce=res.val_ce, val_fitness=res.val_ce,
                       details={"params": res.params, "selected": [task.pool_names[i] for i in res.selected],
                                "grid": res.table})


class TaskArithmetic(TaskVectorMerge):
    kind = "task_arithmetic"
    has_density = False


class Ties(TaskVectorMerge):
    kind = "ties"


class Dare(TaskVectorMerge):
    kind = "dare"


class DareTies(TaskVectorMerge):
    kind = "dare_ties"
