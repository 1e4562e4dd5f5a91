"""Task-vector merges of full fine-tunes, by a grid on the validation CE (docs/methods.md §3, §4).

    θ = θ_base + λ · consensus(sparsify(τ_1 .. τ_S)),    τ_s = θ_s - θ_base, per tensor

with the parts of the LoRA methods (``merge/sparsifiers.py``, ``merge/consensus.py``; configured
as in ``methods/task_vectors.py``), every grid point scored on the validation batch:

    sparsifier: null, consensus: null                  task arithmetic, grid λ
    magnitude_prune + SignElection                     TIES, grid λ × density
    random_drop + SignElection                         DARE-TIES: Sakana's PS merge with one density and
                                                       one weight for every group and source (its mask
                                                       draw, all grid points in one vmapped call)
    mean: true                                         the soup θ_base + (1/S) Σ_s τ_s, no grid

``kind`` (``task_arithmetic``, ``ties``, ``dare_ties``, ``soup``) is an alias kept for older configs:
it sets those parts. The best point by CE is returned.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.merge.consensus import SignElection
from evojax_merge.merge.sakana_ps import PSLayout, task_vectors_of
from evojax_merge.merge.sparsifiers import random_drop
from evojax_merge.merge.task_vectors import merge_task_vectors
from evojax_merge.methods.base import FULL_FINETUNES, MergeMethod, MergeTask, Outcome
from evojax_merge.methods.sakana_ps import sources_cell
from evojax_merge.methods.task_vectors import PartSpec, build_consensus, build_sparsifier
from evojax_merge.models.functional import ParamsModel
from evojax_merge.search.sakana import PSFitness, _ce

_SIGN = {"_target_": "evojax_merge.merge.consensus.SignElection"}
KINDS = {  # the alias: kind -> (sparsifier, consensus, mean)
    "task_arithmetic": (None, None, False),
    "ties": ({"_target_": "evojax_merge.merge.sparsifiers.magnitude_prune"}, _SIGN, False),
    "dare_ties": ({"_target_": "evojax_merge.merge.sparsifiers.random_drop"}, _SIGN, False),
    "soup": (None, None, True),
}


class SakanaGrid(MergeMethod):
    """``sparsifier`` + ``consensus`` on full fine-tunes; the grid is lambdas (x densities when the
    sparsifier reads one). ``mean``: the uniform average of the sources, no grid. ``kind``: an alias."""

    requires = frozenset({FULL_FINETUNES})

    def __init__(self, kind: str | None = None, lambdas=(0.5, 0.75, 1.0), densities=(0.3, 0.6, 1.0),
                 sparsifier: PartSpec = None, consensus: PartSpec = None, mean: bool = False):
        if kind is not None:
            if kind not in KINDS:
                raise EvoMergeInputError(f"method.kind: {kind!r} is not {', '.join(KINDS)}")
            if sparsifier is not None or consensus is not None or mean:
                raise EvoMergeInputError("method.kind: an alias of sparsifier/consensus/mean; give one or the other")
            sparsifier, consensus, mean = KINDS[kind]
        if not lambdas or not densities:
            raise EvoMergeInputError("method.lambdas and method.densities must not be empty")
        self.sparsifier, self.consensus = build_sparsifier(sparsifier), build_consensus(consensus)
        self.mean = bool(mean)
        self.kind = kind or ("soup" if self.mean else f"{self.sparsifier.name}+{type(self.consensus).__name__}")
        self.lambdas, self.densities = tuple(map(float, lambdas)), tuple(map(float, densities))

    def describe(self) -> dict:
        return {"sparsifier": self.sparsifier.describe(), "consensus": self.consensus.describe(), "mean": self.mean,
                "lambdas": list(self.lambdas), "densities": list(self.densities)}

    def grid(self, num_sources: int = 1) -> list[tuple[float, float]]:
        if self.mean:
            return [(1.0 / num_sources, 1.0)]
        dens = self.densities if self.sparsifier.uses_density else (1.0,)
        return list(itertools.product(self.lambdas, dens))

    def _ps_merge(self) -> bool:
        """Random drop + sign election is the PS merge: scored through Sakana's PS fitness (its mask draw)."""
        return not self.mean and self.sparsifier.fn is random_drop and isinstance(self.consensus, SignElection) \
            and self.consensus.mass == "total"

    def run(self, task: MergeTask) -> Outcome:
        cell = sources_cell(task)
        cfg, base = cell.stack.config, cell.base
        tv = task_vectors_of(cell.stack, base)
        grid = self.grid(cell.stack.num_sources)
        if self._ps_merge():
            layout = PSLayout(cell.stack.num_sources, cfg.num_hidden_layers)
            fit = PSFitness(layout, cfg)
            args = {"base": base, "tv": tv, "key": jax.random.key_data(jax.random.key(task.seed)), "batch": cell.batch}
            pop = jnp.asarray(np.stack([layout.encode(d, lam) for lam, d in grid]))
            ces = np.asarray(jax.jit(fit)(args, pop, jnp.int32(0)))
            best = int(np.nanargmin(ces))
            params = fit.params(args, pop[best])
        else:
            key = jax.random.key(task.seed) if self.sparsifier.random else None

            def merged(base, tv, lam, d):
                delta = merge_task_vectors(tv, self.sparsifier, self.consensus, lam, d, key)
                return {k: base[k] + delta[k] for k in base}

            @functools.partial(jax.jit, static_argnums=4)  # density is static: a trim count in float64
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
