"""Sakana's data-flow-space merge as a registry method (docs/methods.md §4).

``Outcome.model`` is a :class:`~evojax_merge.merge.sakana_dfs.DFSModel`; ``details["path"]`` lists
the layers on the found path (slot, source, layer, scale). The search runs the configured ``strategy``
(CMA-ES by default) through ``task.runner`` when the engine gives one (checkpoints, resume).
"""

from __future__ import annotations

from collections.abc import Mapping

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.merge.sakana_dfs import dfs_model
from evojax_merge.methods.base import FULL_FINETUNES, MergeMethod, MergeTask, Outcome
from evojax_merge.methods.sakana_ps import searched_examples, sources_cell, validation_ce
from evojax_merge.models.sources import SourceStack
from evojax_merge.search.evo_merging import StageRunner
from evojax_merge.search.fitness import resolve_population_chunk
from evojax_merge.search.sakana import DFSConfig, check_objective, dfs_search
from evojax_merge.search.strategy import StrategySpec


def run_dfs(stack: SourceStack, batch: dict, cfg: DFSConfig, seed: int, progress: bool, name: str = "sakana_dfs",
            runner: StageRunner | None = None) -> Outcome:
    """The DFS search (through ``runner``, else the default one) and its path model."""
    for key, value in (("start_source", cfg.start_source), ("embed_source", cfg.embed_source)):
        if not 0 <= value < stack.num_sources:
            raise EvoMergeInputError(f"method.{key}: {value} is not a source index (0..{stack.num_sources - 1})")
    genome, result, layout, _ = dfs_search(stack, batch, cfg, seed, progress, runner)
    model = dfs_model(layout, stack, cfg.embed_source, genome)
    return Outcome(method=name, model=model, val_ce=validation_ce(model, batch, cfg, result),
                   val_fitness=result.best_fitness,
                   search=result, details={"path": list(model.path), "num_slots": layout.num_slots,
                                           "sources": list(stack.names), "genome": genome.tolist(),
                                           "history": result.history_rows(),
                                           "forward_examples": searched_examples(cfg.population_size, result,
                                                                                 batch)})


class SakanaDFS(MergeMethod):
    """CMA-ES (or ``strategy``) over the layer path (indicator I, scales W) through the stacked sources' layers."""

    requires = frozenset({FULL_FINETUNES})

    searches = True

    def __init__(self, population_size: int = 128, generations: int = 100, repeats: int = 3,
                 max_path: int | None = None, start_source: int = 0, embed_source: int = 0, sigma0: float = 0.5,
                 fitness: str = "ce", population_chunk: int | str | None = None, strategy: Mapping | None = None):
        if population_size < 2 or generations < 1 or repeats < 1:
            raise EvoMergeInputError("method: population_size >= 2, generations >= 1 and repeats >= 1 required")
        if max_path is not None and max_path < 1:
            raise EvoMergeInputError(f"method.max_path: {max_path} (a positive number of layers or null)")
        self.population_size, self.generations, self.repeats = population_size, generations, repeats
        self.max_path, self.start_source, self.embed_source, self.sigma0 = max_path, start_source, embed_source, sigma0
        self.fitness = check_objective(fitness)
        self.population_chunk = population_chunk
        resolve_population_chunk(population_chunk)  # a bad value is a one-line error now
        self.strategy = StrategySpec.from_config(strategy)

    def describe(self) -> dict:
        return {**super().describe(), "strategy": self.strategy.to_dict()}

    def config(self) -> DFSConfig:
        return DFSConfig(self.population_size, self.generations, self.repeats, self.max_path, self.start_source,
                         self.embed_source, self.sigma0, fitness=self.fitness, population_chunk=self.population_chunk,
                         strategy=self.strategy)

    def run(self, task: MergeTask) -> Outcome:
        cell = sources_cell(task)
        return run_dfs(cell.stack, cell.batch, self.config(), task.seed, task.progress, runner=task.runner)
