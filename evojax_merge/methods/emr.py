"""EMR-Merging (Huang et al. 2024) over a LoRA pool: a unified task vector with per-task masks and
rescalers (formulas in ``merge/unified.py``), tuning-free.

    τ_uni = σ · max_i |τ_i| [τ_i σ > 0],  σ = sign(Σ_i τ_i)       M_i = [τ_i ⊙ τ_uni > 0]
    λ_i = Σ|τ_i| / Σ|M_i ⊙ τ_uni|                                 ΔW_i = λ_i M_i ⊙ τ_uni

over the pre-selected adapters (as the task-vector baselines: the ``preselect_top_k`` adapters best
alone on the target's validation set). The paper applies task i's modulator to task i's inputs; an
OOD target has no task of its own in the pool, so ``modulator`` decides what is applied:

- ``val_ce``: every pre-selected adapter's ``ΔW_i`` and the unified vector alone (``"<unified>"``)
  are scored by validation CE, the lowest wins (N + 1 streamed evaluations);
- ``best_single``: the modulator of the pre-selected adapter with the lowest single-adapter
  validation CE (no search: the adapter closest to the target picks its own modulator);
- ``unified``: ``τ_uni`` alone, no mask and no rescale.

Streamed module by module: one pass over the modules sums each task's rescaler terms, then each
candidate is streamed like any dense update (``τ_uni^m`` recomputed per module from the factors,
one task vector alive at a time).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.merge.unified import modulated_module, modulated_module_jit, module_sums, module_sums_jit
from evojax_merge.methods.base import LORA_POOL, POOL_WEIGHTS, MergeMethod, MergeTask, Outcome
from evojax_merge.methods.task_vectors import preselected
from evojax_merge.search.grid import ModuleDelta, grid_search, streamed_ce, streamed_delta

MODULATORS = ("val_ce", "best_single", "unified")
UNIFIED = "<unified>"


class EMRMerge(MergeMethod):
    """Elect, mask, rescale; the applied modulator chosen by ``modulator`` (see the module docstring)."""

    requires = frozenset({LORA_POOL, POOL_WEIGHTS})

    def __init__(self, modulator: str = "val_ce", preselect_top_k: int = 9):
        if modulator not in MODULATORS:
            raise EvoMergeInputError(f"modulator: {modulator!r}, expected one of {', '.join(MODULATORS)}")
        self.modulator, self.preselect_top_k = modulator, int(preselect_top_k)

    @staticmethod
    def module_delta(index: int, rescale: float) -> ModuleDelta:
        """Task ``index``'s update ``rescale · M_index ⊙ τ_uni`` per module; ``index < 0``: ``τ_uni``."""
        i, lam = jnp.int32(index), jnp.float32(rescale)
        return lambda m, a, b, scale, dtype: modulated_module_jit(a, b, scale, i, lam, dtype)

    def module_programs(self) -> dict[str, Callable]:
        """The per-module functions of ``(a, b, scale)`` a run executes (for evojax_merge/bench/stream_memory.py)."""
        return {"rescaler_sums": module_sums,
                "modulated": lambda a, b, scale: modulated_module(a, b, scale, jnp.int32(0), jnp.float32(1.0))}

    def run(self, task: MergeTask) -> Outcome:
        sub, selected = preselected(task, self.preselect_top_k)
        names = [task.pool_names[i] for i in selected]
        num = np.zeros(len(selected))
        den = np.zeros(len(selected))
        for m in sub.A:  # the rescalers need every module: one streamed pass of sums
            n_m, d_m = module_sums_jit(sub.A[m], sub.B[m], sub.scale)
            num += np.asarray(n_m, np.float64)
            den += np.asarray(d_m, np.float64)
        lam = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
        if self.modulator == "val_ce":
            candidates = list(range(len(selected))) + [-1]
        elif self.modulator == "best_single":
            candidates = [int(np.argmin(task.single_adapter_losses()[selected]))]
        else:
            candidates = [-1]
        index = {(names[i] if i >= 0 else UNIFIED): i for i in candidates}
        evaluator = task.evaluator_for("A")

        def delta_of(label: str) -> ModuleDelta:
            i = index[label]
            return self.module_delta(i, float(lam[i]) if i >= 0 else 1.0)

        res = grid_search({"modulator": list(index)}, lambda p: streamed_ce(evaluator, sub, delta_of(p["modulator"])),
                          "val_ce")
        delta = streamed_delta(evaluator, sub, delta_of(res.params["modulator"]))
        return Outcome("emr", delta=delta, val_ce=res.score, val_fitness=res.score,
                       details={"modulator": res.params["modulator"], "params": res.params,
                                "rescalers": dict(zip(names, lam.tolist(), strict=True)), "selected": names,
                                "grid": res.table})
