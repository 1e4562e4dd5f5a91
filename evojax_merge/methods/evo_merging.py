"""Evo-Merging (arXiv 2509.12951; docs/methods.md §1): two CMA-ES stages over a LoRA pool.

    F(x) = CE(base + merge(pool, alpha, beta)) + λ · mean_i |x_i|
    merge: A = Σ_i β_i S_{α_i}(A_i),  B = Σ_i β_i B_i        (S_a keeps the top a·numel |A| entries)

    stage 1 (denoising):          x = alpha ∈ [0, 1]^N,      x0 = 1,   beta = 1/N
    stage 2 (sign-aware scaling): x = beta ∈ [-1.5, 1.5]^N,  x0 = 1/N, alpha = stage 1's best

The switches are the paper's ablations: ``denoise=false`` (stage 2 alone, which is also the paper's
LoraHub row), ``scale=false`` (stage 1 alone), ``sign_flip=false`` (beta ≥ 0), and ``prune`` (which
factor stage 1 sparsifies). ``strategy`` (``conf/strategy/``, CMA-ES by default) is the black-box
search both stages run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.methods.base import MergeMethod, MergeTask, Outcome
from evojax_merge.search.evo_merging import EvoMergingConfig, evo_merging_search
from evojax_merge.search.strategy import StrategySpec

PRUNE_MODES = ("A", "B", "both", "none")


def search_record(result) -> dict:
    """The searched vectors and every stage's history, for results.json."""
    return {
        "alpha": result.alpha.tolist(),
        "beta": result.beta.tolist(),
        "stages": {s.name: {"best_fitness": s.best_fitness, "history": s.history_rows()} for s in result.stages},
    }


class EvoMerging(MergeMethod):
    remote = True
    searches = True

    def __init__(self, population_size: int = 20, sigma0: float = 0.05, stage1_generations: int = 20,
                 stage2_generations: int = 40, l1_weight: float = 0.05,
                 alpha_bounds: tuple[float, float] = (0.0, 1.0), beta_bounds: tuple[float, float] = (-1.5, 1.5),
                 denoise: bool = True, scale: bool = True, sign_flip: bool = True, prune: str = "A",
                 strategy: Mapping | None = None):
        if prune not in PRUNE_MODES:
            raise EvoMergeInputError(f"prune: {prune!r} is not one of {', '.join(PRUNE_MODES)}")
        checks = [(population_size >= 2, "population_size must be >= 2"), (sigma0 > 0, "sigma0 must be > 0"),
                  (alpha_bounds[0] < alpha_bounds[1], "alpha_bounds must be [low, high]"),
                  (beta_bounds[0] < beta_bounds[1], "beta_bounds must be [low, high]"),
                  (stage1_generations >= 1 and stage2_generations >= 1, "generations must be >= 1")]
        for ok, message in checks:
            if not ok:
                raise EvoMergeInputError(message)
        self.config = EvoMergingConfig(int(population_size), float(sigma0), int(stage1_generations),
                                       int(stage2_generations), float(l1_weight), tuple(alpha_bounds),
                                       tuple(beta_bounds), bool(denoise), bool(scale), bool(sign_flip),
                                       StrategySpec.from_config(strategy))
        self.prune = prune

    def describe(self) -> dict:
        return {**dataclasses.asdict(self.config), "strategy": self.config.strategy.to_dict(), "prune": self.prune}

    def run(self, task: MergeTask) -> Outcome:
        evaluator = task.evaluator_for(self.prune)
        result = evo_merging_search(evaluator, task.stack, self.config, seed=task.seed, prune=self.prune,
                                    runner=task.runner)
        ce = float(evaluator.evaluate(result.alpha[None], result.beta[None])[0])
        return Outcome("evo_merging", adapter=result.adapter, genome=(result.alpha, result.beta), prune=self.prune,
                       val_ce=ce, val_fitness=result.best_fitness, details=search_record(result), search=result)


def uniform_genome(n: int) -> tuple[np.ndarray, np.ndarray]:
    """alpha = 1 (nothing pruned), beta = 1/N: the factor-wise average."""
    return np.ones(n, np.float32), np.full(n, 1.0 / n, np.float32)
