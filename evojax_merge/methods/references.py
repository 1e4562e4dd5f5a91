"""The reference rows of every table: the base model, one source, the best single one, the uniform average.

    base         W                                   (beta = 0)
    best_single  W + ΔW_j,  j = argmin_i CE(W + ΔW_i)  (alpha = 1, beta = e_j)
    uniform      A = Σ A_i / N,  B = Σ B_i / N        (alpha = 1, beta = 1/N, factor-wise)
    source       one named adapter, or one full fine-tune

On a world of full fine-tunes (``task.sources``) base, best_single and source are whole models: the
base, and the source with the lowest validation CE or the named one.
"""

from __future__ import annotations

import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.methods.base import FULL_FINETUNES, LORA_POOL, MergeMethod, MergeTask, Outcome
from evojax_merge.methods.evo_merging import uniform_genome
from evojax_merge.search.evo_merging import merged_adapter


def _genome_outcome(method: str, task: MergeTask, alpha: np.ndarray, beta: np.ndarray, prune: str,
                    ce: float | None = None, **details) -> Outcome:
    if ce is None:
        ce = float(task.evaluator_for(prune).evaluate(alpha[None], beta[None])[0])
    adapter = merged_adapter(task.stack, alpha, beta, prune) if task.stack is not None and beta.any() else None
    return Outcome(method, adapter=adapter, genome=(alpha, beta), prune=prune, val_ce=ce, val_fitness=ce,
                   details=details)


def _either_world(provided: frozenset[str]) -> frozenset[str]:
    """A reference row runs on a LoRA pool or on full fine-tunes."""
    return frozenset() if (LORA_POOL in provided or FULL_FINETUNES in provided) else frozenset({LORA_POOL})


def _source_outcome(method: str, task: MergeTask, index: int | None, **details) -> Outcome:
    """Source ``index`` of a full-fine-tune cell as a model (None: the base), with its validation CE."""
    from evojax_merge.models.functional import ParamsModel
    from evojax_merge.search.sakana import model_ce

    cell = task.sources
    params = cell.base if index is None else cell.stack.source_params(index)
    model = ParamsModel(cell.stack.config, params)
    ce = float(model_ce(model, cell.batch))
    return Outcome(method, model=model, val_ce=ce, val_fitness=ce, details=details)


class BaseModel(MergeMethod):
    remote = True
    prune = "none"
    missing = staticmethod(_either_world)

    def run(self, task: MergeTask) -> Outcome:
        if task.sources is not None:
            return _source_outcome("base", task, None)
        n = task.num_adapters
        return _genome_outcome("base", task, np.ones(n, np.float32), np.zeros(n, np.float32), self.prune)


class BestSingle(MergeMethod):
    remote = True
    missing = staticmethod(_either_world)

    def run(self, task: MergeTask) -> Outcome:
        if task.sources is not None:
            rows = [_source_outcome("best_single", task, i) for i in range(len(task.sources.labels))]
            best = int(np.argmin([r.val_ce for r in rows]))
            rows[best].details["source"] = task.sources.labels[best]
            return rows[best]
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


class Source(MergeMethod):
    """One named source alone: an adapter of the pool (``alpha = 1, beta = e_j``) or a full fine-tune."""

    remote = True
    missing = staticmethod(_either_world)

    def __init__(self, source: str):
        self.source = source

    def run(self, task: MergeTask) -> Outcome:
        names = list(task.sources.labels) if task.sources is not None else list(task.pool_names)
        if self.source not in names:
            raise EvoMergeInputError(f"source: {self.source!r} is not in this cell's pool ({', '.join(names)})")
        j = names.index(self.source)
        if task.sources is not None:
            return _source_outcome(f"source_{self.source}", task, j, source=self.source)
        n = task.num_adapters
        return _genome_outcome(f"source_{self.source}", task, np.ones(n, np.float32),
                               np.eye(n, dtype=np.float32)[j], "A", adapter=self.source)
