"""The reference rows of every table: the base model, the best single adapter, the uniform average.

    base         W                                   (beta = 0)
    best_single  W + ΔW_j,  j = argmin_i CE(W + ΔW_i)  (alpha = 1, beta = e_j)
    uniform      A = Σ A_i / N,  B = Σ B_i / N        (alpha = 1, beta = 1/N, factor-wise)
"""

from __future__ import annotations

import numpy as np

from evojax_merge.methods.base import MergeMethod, MergeTask, Outcome
from evojax_merge.methods.evo_merging import uniform_genome
from evojax_merge.search.evo_merging import merged_adapter


def _genome_outcome(method: str, task: MergeTask, alpha: np.ndarray, beta: np.ndarray, prune: str,
                    ce: float | None = None, **details) -> Outcome:
    if ce is None:
        ce = float(task.evaluator_for(prune).evaluate(alpha[None], beta[None])[0])
    adapter = merged_adapter(task.stack, alpha, beta, prune) if task.stack is not None and beta.any() else None
    return Outcome(method, adapter=adapter, genome=(alpha, beta), prune=prune, val_ce=ce, val_fitness=ce,
                   details=details)


class BaseModel(MergeMethod):
    remote = True
    prune = "none"

    def run(self, task: MergeTask) -> Outcome:
        n = task.num_adapters
        return _genome_outcome("base", task, np.ones(n, np.float32), np.zeros(n, np.float32), self.prune)


class BestSingle(MergeMethod):
    remote = True

    def run(self, task: MergeTask) -> Outcome:
        losses = task.single_adapter_losses()
        best = int(np.argmin(losses))
        n = task.num_adapters
        return _genome_outcome("best_single", task, np.ones(n, np.float32), np.eye(n, dtype=np.float32)[best],
                               "A", float(losses[best]), adapter=task.pool_names[best])


class Uniform(MergeMethod):
    remote = True
    prune = "none"

    def run(self, task: MergeTask) -> Outcome:
        return _genome_outcome("uniform", task, *uniform_genome(task.num_adapters), self.prune)
