"""Sakana's parameter-space merge as a registry method (docs/methods.md §4).

``task.sources`` is a :class:`evojax_merge.methods.base.SourcesCell` (the stacked full fine-tunes,
their base and the target's validation batch); the outcome carries the merged model in
``Outcome.model`` (a :class:`~evojax_merge.models.functional.ParamsModel`). The search runs the
configured ``strategy`` (CMA-ES by default) through ``task.runner`` when the engine gives one
(checkpoints, resume after preemption).
"""

from __future__ import annotations

from collections.abc import Mapping

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.merge.sakana_ps import PSLayout
from evojax_merge.methods.base import FULL_FINETUNES, MergeMethod, MergeTask, Outcome, SourcesCell
from evojax_merge.models.functional import ParamsModel
from evojax_merge.search.evo_merging import StageRunner
from evojax_merge.search.fitness import resolve_population_chunk
from evojax_merge.search.sakana import PSConfig, check_objective, model_ce, ps_search
from evojax_merge.search.strategy import StrategySpec


def sources_cell(task: MergeTask) -> SourcesCell:
    if task.sources is None:
        raise EvoMergeInputError(f"method for {task.target!r}: Sakana merges need full fine-tunes "
                                 "(a world that provides them, e.g. world=sakana)")
    return task.sources


def run_ps(cell, cfg: PSConfig, seed: int, progress: bool, runner: StageRunner | None = None) -> Outcome:
    """The PS search (through ``runner``, else the default one) and its merged model."""
    genome, result, fitness, args = ps_search(cell.stack, cell.base, cell.batch, cfg, seed, progress, runner)
    params = fitness.params(args, genome)
    density, weight = PSLayout(cell.stack.num_sources, cell.stack.config.num_hidden_layers).decode(genome)
    model = ParamsModel(cell.stack.config, params)
    return Outcome(method="sakana_ps", model=model, val_ce=validation_ce(model, cell.batch, cfg, result),
                   val_fitness=result.best_fitness, search=result,
                   details={"genome": genome.tolist(), "density": density.tolist(), "weight": weight.tolist(),
                            "history": result.history_rows(),
                            "forward_examples": searched_examples(cfg.population_size, result, cell.batch)})


def validation_ce(model, batch: dict, cfg, result) -> float:
    """The found model's validation CE: the best fitness itself when the search minimised the CE."""
    if cfg.fitness == "ce":
        return float(result.best_fitness)
    return float(model_ce(model, batch))


def searched_examples(population_size: int, result, batch: dict) -> int:
    """Examples forwarded by a CMA-ES stage: x0, then the population every generation."""
    return (1 + population_size * len(result.history)) * int(batch["input_ids"].shape[0])


class SakanaPS(MergeMethod):
    """CMA-ES (or ``strategy``) over a density and a weight per (layer group, source) of a DARE-TIES merge."""

    requires = frozenset({FULL_FINETUNES})

    searches = True

    def __init__(self, population_size: int = 16, generations: int = 60, x0: float = 0.5, sigma0: float = 1 / 6,
                 fitness: str = "ce", population_chunk: int | str | None = "auto", strategy: Mapping | None = None):
        if population_size < 2 or generations < 1:
            raise EvoMergeInputError("method.population_size must be >= 2 and method.generations >= 1")
        self.population_size, self.generations, self.x0, self.sigma0 = population_size, generations, x0, sigma0
        self.fitness = check_objective(fitness)
        self.population_chunk = population_chunk
        resolve_population_chunk(population_chunk)  # a bad value is a one-line error now
        self.strategy = StrategySpec.from_config(strategy)

    def describe(self) -> dict:
        return {**super().describe(), "strategy": self.strategy.to_dict()}

    def config(self) -> PSConfig:
        return PSConfig(self.population_size, self.generations, self.x0, self.sigma0, fitness=self.fitness,
                        population_chunk=self.population_chunk, strategy=self.strategy)

    def run(self, task: MergeTask) -> Outcome:
        return run_ps(sources_cell(task), self.config(), task.seed, task.progress, task.runner)
