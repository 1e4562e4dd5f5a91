"""TSV-Merge (Gargiulo et al. 2025) over a LoRA pool: per module, each task's top singular
components, concatenated and whitened (formulas in ``merge/singular.py``), scaled by α:

    ΔW = α · U⊥ Σ V⊥ᵀ,   U⊥ = polar([U_1,k | ... | U_N,k]),  V⊥ likewise,  k = min(d_out, d_in) / N (≤ r)

over the pre-selected adapters (the ``preselect_top_k`` best alone on the target's validation set),
α on the λ grid by validation CE (the paper uses α = 1.0, which the default grid contains). The
SVD of each ``s_i B_i A_i`` comes from its factors, so no dense task vector is built; each module's
update is streamed into the base weights.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from evojax_merge.merge.singular import singular_merge_factors, singular_merge_module
from evojax_merge.methods.base import LORA_POOL, POOL_WEIGHTS, MergeMethod, MergeTask, Outcome
from evojax_merge.methods.task_vectors import check_lambdas, preselected
from evojax_merge.search.grid import ModuleDelta, grid_search, streamed_ce, streamed_delta


class TSVMerge(MergeMethod):
    """Whitened task singular vectors, α by validation CE."""

    requires = frozenset({LORA_POOL, POOL_WEIGHTS})

    def __init__(self, lambdas: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 1.0), preselect_top_k: int = 9):
        self.lambdas = check_lambdas(lambdas)
        self.preselect_top_k = int(preselect_top_k)

    def describe(self) -> dict:
        return {"lambdas": list(self.lambdas), "preselect_top_k": self.preselect_top_k}

    @staticmethod
    def module_delta(alpha: float) -> ModuleDelta:
        a_ = jnp.float32(alpha)
        return lambda m, a, b, scale, dtype: singular_merge_module(a, b, scale, a_, dtype)

    def module_programs(self) -> dict[str, Callable]:
        """The per-module functions of ``(a, b, scale)`` a run executes (for evojax_merge/bench/stream_memory.py)."""
        return {"merge": singular_merge_factors}

    def run(self, task: MergeTask) -> Outcome:
        sub, selected = preselected(task, self.preselect_top_k)
        evaluator = task.evaluator_for("A")
        res = grid_search({"lambda": self.lambdas},
                          lambda p: streamed_ce(evaluator, sub, self.module_delta(p["lambda"])), "val_ce")
        delta = streamed_delta(evaluator, sub, self.module_delta(res.params["lambda"]))
        return Outcome("tsv_m", delta=delta, val_ce=res.score, val_fitness=res.score,
                       details={"params": res.params, "selected": [task.pool_names[i] for i in selected],
                                "grid": res.table})
