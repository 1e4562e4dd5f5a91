"""LoraHub as its authors ran it (Huang et al. 2023; docs/methods.md §2): gradient-free weights over a
random sample of the pool.

    w* = argmin_w  CE(base + Σ_i w_i ΔW_i) + λ · mean_i |w_i|,   w ∈ [-1.5, 1.5]^k,  w0 = 0

k modules are sampled from the pool (20 in the paper), CMA-ES (or the configured ``strategy``) starts
at w = 0 (the base model) with step 1.0 and a budget of 40 evaluations. (The Evo-Merging paper's
"LoraHub" row is instead Evo's stage 2 alone with Evo's budget: ``conf/method/lorahub.yaml``.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.methods.base import MergeMethod, MergeTask, Outcome
from evojax_merge.methods.evo_merging import search_record
from evojax_merge.search.evo_merging import LoraHubConfig, lorahub_search
from evojax_merge.search.strategy import StrategySpec


class SampledPool:
    """An evaluator over k of the pool's N adapters: the others get beta = 0 (and alpha = 1)."""

    def __init__(self, evaluator, indices: np.ndarray):
        self.inner = evaluator
        self.indices = np.asarray(indices)
        self.num_adapters = len(self.indices)

    def expand(self, alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p, n = alpha.shape[0], self.inner.num_adapters
        full_a, full_b = np.ones((p, n), np.float32), np.zeros((p, n), np.float32)
        full_a[:, self.indices], full_b[:, self.indices] = alpha, beta
        return full_a, full_b

    def evaluate(self, alpha, beta, generation: int = 0) -> np.ndarray:
        a, b = self.expand(np.atleast_2d(np.asarray(alpha, np.float32)), np.atleast_2d(np.asarray(beta, np.float32)))
        return self.inner.evaluate(a, b, generation)


class LoraHubOriginal(MergeMethod):
    remote = True
    searches = True
    prune = "none"

    def __init__(self, num_modules: int = 20, population_size: int = 10, generations: int = 4,
                 sigma0: float = 1.0, l1_weight: float = 0.05, bounds: tuple[float, float] = (-1.5, 1.5),
                 strategy: Mapping | None = None):
        if num_modules < 1:
            raise EvoMergeInputError("num_modules must be >= 1")
        if population_size < 2 or generations < 1 or sigma0 <= 0 or bounds[0] >= bounds[1]:
            raise EvoMergeInputError("population_size >= 2, generations >= 1, sigma0 > 0 and bounds [low, high]")
        self.num_modules = int(num_modules)
        self.config = LoraHubConfig(int(population_size), int(generations), float(sigma0), float(l1_weight),
                                    tuple(bounds), StrategySpec.from_config(strategy))

    def describe(self) -> dict:
        return {"num_modules": self.num_modules, **dataclasses.asdict(self.config),
                "strategy": self.config.strategy.to_dict()}

    def run(self, task: MergeTask) -> Outcome:
        n = task.num_adapters
        rng = np.random.default_rng(task.seed)
        picked = np.sort(rng.choice(n, min(self.num_modules, n), replace=False))
        sampled = SampledPool(task.evaluator_for(self.prune), picked)
        stack = None if task.stack is None else task.stack.take(picked)
        result = lorahub_search(sampled, stack, self.config, seed=task.seed, runner=task.runner)
        alpha, beta = sampled.expand(result.alpha[None], result.beta[None])
        ce = float(sampled.inner.evaluate(alpha, beta)[0])
        details = {**search_record(result), "modules": [task.pool_names[i] for i in picked]}
        return Outcome("lorahub_original", adapter=result.adapter, genome=(alpha[0], beta[0]), prune=self.prune,
                       val_ce=ce, val_fitness=result.best_fitness, details=details, search=result)
