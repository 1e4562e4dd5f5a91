"""PS + DFS (docs/methods.md §4): PS first, then DFS over [the PS result, one source model].

Both stages run ``strategy`` (unless ``ps``/``dfs`` name their own), one after the other through
``task.runner`` when the engine gives one, so a preempted PS + DFS resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.methods.base import FULL_FINETUNES, MergeMethod, MergeTask, Outcome
from evojax_merge.methods.sakana_dfs import SakanaDFS, run_dfs
from evojax_merge.methods.sakana_ps import SakanaPS, run_ps, sources_cell
from evojax_merge.models.sources import SourceStack


class SakanaPSDFS(MergeMethod):
    """``ps`` and ``dfs`` are the two methods' constructor arguments; ``partner`` the source index
    that joins the PS model in the DFS (source 0 of the DFS is the PS model, source 1 the partner);
    ``strategy`` the search of both, unless ``ps`` or ``dfs`` sets its own."""

    requires = frozenset({FULL_FINETUNES})

    searches = True

    def __init__(self, ps: Mapping | None = None, dfs: Mapping | None = None, partner: int = 0,
                 strategy: Mapping | None = None):
        self.ps = SakanaPS(**{"strategy": strategy, **(ps or {})})
        self.dfs = SakanaDFS(**{"strategy": strategy, **(dfs or {})})
        self.partner = partner

    def describe(self) -> dict:
        return {"ps": self.ps.describe(), "dfs": self.dfs.describe(), "partner": self.partner}

    def run(self, task: MergeTask) -> Outcome:
        cell = sources_cell(task)
        if not 0 <= self.partner < cell.stack.num_sources:
            raise EvoMergeInputError(f"method.partner: {self.partner} is not a source index "
                                     f"(0..{cell.stack.num_sources - 1})")
        ps = run_ps(cell, self.ps.config(), task.seed, task.progress, task.runner)
        partner = cell.stack.source_params(self.partner)
        params = {k: jnp.stack([ps.model.params[k], partner[k]]) for k in cell.stack.params}
        stack = SourceStack(cell.stack.config, ("ps", cell.stack.names[self.partner]), params)
        out = run_dfs(stack, cell.batch, self.dfs.config(), task.seed, task.progress, name="sakana_ps_dfs",
                      runner=task.runner)
        out.details["ps"] = {k: ps.details[k] for k in ("density", "weight")}
        out.details["ps_val_ce"] = ps.val_ce
        out.details["ps_history"] = ps.details["history"]
        out.details["forward_examples"] += ps.details["forward_examples"]
        return out
