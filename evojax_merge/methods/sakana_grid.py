"""Task-vector baselines on full fine-tunes, by a grid on the validation CE (docs/methods.md §3, §4).

    TA         θ = θ_base + λ Σ_s τ_s
    TIES       θ = θ_base + ties(τ; density, λ)          (task_vectors.ties per tensor)
    DARE-TIES  θ = θ_base + dare_ties(τ; density, λ)     (the PS merge with one density and one
                                                           weight for every group and source)

Every grid point of a method is scored on the validation batch in one vmapped call; the best by
CE is returned.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.merge.sakana_ps import PSLayout, task_vectors_of
from evojax_merge.merge.task_vectors import task_arithmetic, ties
from evojax_merge.methods.base import FULL_FINETUNES, MergeMethod, MergeTask, Outcome
from evojax_merge.methods.sakana_ps import sources_cell
from evojax_merge.models.functional import ParamsModel
from evojax_merge.search.sakana import PSFitness, _ce


class SakanaGrid(MergeMethod):
    """``kind``: ``task_arithmetic``, ``ties`` or ``dare_ties``; the grid is lambdas x densities.
    ``soup`` is the uniform average of the sources, θ_base + (1/S) Σ_s τ_s (TA at λ = 1/S, no grid)."""

    requires = frozenset({FULL_FINETUNES})

    def __init__(self, kind: str = "task_arithmetic", lambdas=(0.5, 0.75, 1.0), densities=(0.3, 0.6, 1.0)):
        if kind not in ("task_arithmetic", "ties", "dare_ties", "soup"):
            raise EvoMergeInputError(f"method.kind: {kind!r} is not task_arithmetic, ties, dare_ties or soup")
        if not lambdas or not densities:
            raise EvoMergeInputError("method.lambdas and method.densities must not be empty")
        self.kind, self.lambdas, self.densities = kind, tuple(map(float, lambdas)), tuple(map(float, densities))

    def grid(self, num_sources: int = 1) -> list[tuple[float, float]]:
        if self.kind == "soup":
            return [(1.0 / num_sources, 1.0)]
        dens = (1.0,) if self.kind == "task_arithmetic" else self.densities
        return list(itertools.product(self.lambdas, dens))

    def run(self, task: MergeTask) -> Outcome:
        cell = sources_cell(task)
        cfg, base = cell.stack.config, cell.base
        tv = task_vectors_of(cell.stack, base)
        grid = self.grid(cell.stack.num_sources)
        if self.kind == "dare_ties":
            layout = PSLayout(cell.stack.num_sources, cfg.num_hidden_layers)
            fit = PSFitness(layout, cfg)
            args = {"base": base, "tv": tv, "key": jax.random.key_data(jax.random.key(task.seed)), "batch": cell.batch}
            pop = jnp.asarray(np.stack([layout.encode(d, lam) for lam, d in grid]))
            ces = np.asarray(jax.jit(fit)(args, pop, jnp.int32(0)))
            best = int(np.nanargmin(ces))
            params = fit.params(args, pop[best])
        else:
            kind = "task_arithmetic" if self.kind == "soup" else self.kind

            def merged(base, tv, lam, d):
                delta = task_arithmetic(tv, lam) if kind == "task_arithmetic" else ties(tv, d, lam)
                return {k: base[k] + delta[k] for k in base}

            @functools.partial(jax.jit, static_argnums=4)  # density is static: TIES' keep count
            def ce(base, tv, batch, lam, d):
                p = merged(base, tv, lam, d)
                return _ce(lambda i, m, a: ParamsModel(cfg, p).logits(i, m, a), batch)

            ces = np.asarray([float(ce(base, tv, cell.batch, jnp.float32(lam), float(d))) for lam, d in grid])
            best = int(np.nanargmin(ces))
            params = merged(base, tv, grid[best][0], grid[best][1])
        lam, d = grid[best]
        return Outcome(method=self.kind, model=ParamsModel(cfg, params), val_ce=float(ces[best]),
                       val_fitness=float(ces[best]),
                       details={"lambda": lam, "density": d,
                                "grid": [[*g, float(c)] for g, c in zip(grid, ces, strict=True)],
                                "forward_examples": len(grid) * int(cell.batch["input_ids"].shape[0])})
