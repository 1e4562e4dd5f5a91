"""Merges of a VLM's language model with a language-B Llama, the vision tower and projector kept (issue 25).

Sakana's EvoVLM-JP recipe: the language model inside the VLM (``vlm_a``) and a Llama of the same shape
(``lang_b``), both fine-tuned from one base, are merged in parameter space; the vision tower and the
projector are ``vlm_a``'s, untouched. Since those are fixed, the image rows they put at the image-token
positions of the target's validation records are computed once (the cell's ``batch["rows"]``,
``batch["is_image"]``; :func:`evojax_merge.models.llava.image_rows`) and every candidate is a language
model read through :func:`evojax_merge.models.llava.spliced_logits`:

    source       θ_s                                                  (rows ``source_vlm_a``, ``source_lang_b``)
    grid         θ_base + λ · consensus(sparsify(τ_A, τ_B))           (TA, TIES: ``methods/sakana_grid.py``'s parts)
    PS           θ_base + DARE-TIES(τ; d[g, s], w[g, s])              (``merge/sakana_ps.py``: a density and a weight
                                                                       per layer group and source, by the strategy)

with ``τ_s = θ_s − θ_base`` over the language model's tensors only. The fitness is the target's
validation answer-only CE (``fitness: ce``) or 1 − exact match (``fitness: accuracy``), as in the Sakana
experiment. ``Outcome.model`` is a :class:`~evojax_merge.models.llava.SplicedLM` (its ``params`` the merged
language model); the world's backend generates with it on the test images.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.merge.sakana_ps import PSLayout, task_vectors_of
from evojax_merge.merge.task_vectors import merge_task_vectors
from evojax_merge.methods.base import MergeMethod, MergeTask, Outcome, SourcesCell
from evojax_merge.methods.sakana_grid import SakanaGrid
from evojax_merge.methods.sakana_ps import SakanaPS, searched_examples
from evojax_merge.models.llava import SplicedLM, spliced_logits
from evojax_merge.search.cmaes import StageSpec, TracedFitness
from evojax_merge.search.evo_merging import StageRunner
from evojax_merge.search.fitness import resolve_population_chunk
from evojax_merge.search.genome import GenomeLayout
from evojax_merge.search.sakana import (
    PSConfig,
    PSFitness,
    _run,
    check_objective,
    model_ce,
    objective_value,
    over_population,
)

VLM_SOURCES = "vlm_sources"  # a VLM's language model and Llamas of its shape, from one base (world=vlm)


def vlm_cell(task: MergeTask) -> SourcesCell:
    """The cell's sources, which must carry the kept vision tower's image rows (a VLM world's cell)."""
    if task.sources is None or "rows" not in task.sources.batch:
        raise EvoMergeInputError(f"method for {task.target!r}: a VLM merge needs a VLM world (world=vlm)")
    return task.sources


def spliced_model(cell: SourcesCell, params: dict) -> SplicedLM:
    return SplicedLM(cell.stack.config, params, cell.batch["rows"], cell.batch["is_image"])


def _outcome(method: str, cell: SourcesCell, params: dict, **details) -> Outcome:
    model = spliced_model(cell, params)
    ce = float(model_ce(model, cell.batch))
    return Outcome(method, model=model, val_ce=ce, val_fitness=ce, details=details)


class VlmSource(MergeMethod):
    """One source's language model alone, in the VLM (vision tower and projector kept)."""

    requires = frozenset({VLM_SOURCES})

    def __init__(self, source: str):
        self.source = source

    def run(self, task: MergeTask) -> Outcome:
        cell = vlm_cell(task)
        if self.source not in cell.labels:
            raise EvoMergeInputError(f"method.source: {self.source!r} is not a source ({', '.join(cell.labels)})")
        j = cell.labels.index(self.source)
        return _outcome(f"source_{self.source}", cell, cell.stack.source_params(j), source=self.source,
                        forward_examples=int(cell.batch["input_ids"].shape[0]))


class VlmGrid(SakanaGrid):
    """TA / TIES (``kind`` or ``sparsifier`` + ``consensus``) over the language model; the point of the
    grid (λ × density) with the lowest validation CE."""

    requires = frozenset({VLM_SOURCES})

    def run(self, task: MergeTask) -> Outcome:
        cell = vlm_cell(task)
        base = cell.base
        tv = task_vectors_of(cell.stack, base)
        key = jax.random.key(task.seed) if self.sparsifier.random else None
        grid = self.grid(cell.stack.num_sources)

        def merged(lam: float, d: float) -> dict:
            delta = merge_task_vectors(tv, self.sparsifier, self.consensus, lam, d, key)
            return {k: base[k] + delta[k] for k in base}

        ces = np.asarray([float(model_ce(spliced_model(cell, merged(lam, d)), cell.batch)) for lam, d in grid])
        best = int(np.nanargmin(ces))
        lam, d = grid[best]
        out = _outcome(self.kind, cell, merged(lam, d), **{"lambda": lam, "density": d})
        out.details["grid"] = [[*g, float(c)] for g, c in zip(grid, ces, strict=True)]
        out.details["forward_examples"] = (len(grid) + 1) * int(cell.batch["input_ids"].shape[0])
        return out


@dataclasses.dataclass(frozen=True)
class VlmPSFitness(PSFitness):
    """:class:`~evojax_merge.search.sakana.PSFitness` read through the VLM: ``args`` also holds the image
    ``rows`` and ``is_image`` of the validation batch."""

    def __call__(self, args, population, generation):
        def one(g):
            p = self.params(args, g)
            return objective_value(self.objective, lambda i, m, a: spliced_logits(self.config, p, i, m, a, args["rows"],
                                                                                  args["is_image"]), args["batch"])

        return over_population(one, population, self.chunk)


def vlm_ps_search(cell: SourcesCell, cfg: PSConfig, seed: int, progress: bool, runner: StageRunner | None
                  ) -> tuple[np.ndarray, object, VlmPSFitness, dict]:
    """The strategy over the PS genome of the language models (``search.sakana.ps_search`` with the VLM's
    fitness); returns (best genome, stage result, fitness, args)."""
    stack = cell.stack
    layout = PSLayout(stack.num_sources, stack.config.num_hidden_layers)
    x0 = layout.check(np.full(layout.length, cfg.x0), "method.x0")
    batch = {k: v for k, v in cell.batch.items() if k not in ("rows", "is_image")}
    args = {"base": {k: jnp.asarray(v) for k, v in cell.base.items()}, "tv": task_vectors_of(stack, cell.base),
            "key": jax.random.key_data(jax.random.key(seed)), "batch": batch, "rows": cell.batch["rows"],
            "is_image": cell.batch["is_image"]}
    fitness = VlmPSFitness(layout, stack.config, resolve_population_chunk(cfg.population_chunk),
                           check_objective(cfg.fitness))
    spec = StageSpec("sakana_ps", GenomeLayout("ps", layout.length, *cfg.bounds), tuple(map(float, x0)),
                     cfg.sigma0, cfg.population_size, cfg.generations, cfg.strategy)
    result = _run(spec, TracedFitness(fitness, args), seed, progress, runner)
    return result.best_genome, result, fitness, args


class VlmPS(SakanaPS):
    """Sakana's PS merge of the language models: the configured strategy (CMA-ES by default) over a density
    and a weight per (layer group, source); ``details`` keeps them (``density``/``weight`` ``[G, S]``)."""

    requires = frozenset({VLM_SOURCES})

    def run(self, task: MergeTask) -> Outcome:
        cell, cfg = vlm_cell(task), self.config()
        genome, result, fitness, args = vlm_ps_search(cell, cfg, task.seed, task.progress, task.runner)
        density, weight = PSLayout(cell.stack.num_sources, cell.stack.config.num_hidden_layers).decode(genome)
        out = _outcome("sakana_ps", cell, fitness.params(args, genome), genome=np.asarray(genome).tolist(),
                       density=np.asarray(density).tolist(), weight=np.asarray(weight).tolist(),
                       sources=list(cell.labels), history=result.history_rows(),
                       forward_examples=searched_examples(cfg.population_size, result, cell.batch))
        out.val_fitness, out.search = float(result.best_fitness), result
        return out
