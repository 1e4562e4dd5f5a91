"""DAM as a registry method (``conf/method/dam*.yaml``): a white-box gradient baseline on a LoRA pool.

On a LoRA pool every adapter is a source: its KL term is taken on the records of the task it was
trained on (``source_split`` of that task), so DAM with ``objective="kl"`` never sees the target;
``objective="ce"`` (the "w/o KL" variant) trains on the target's validation records instead. The
result is one adapter of rank N·r (docs/methods.md §5), scored on the target's validation set.

For full fine-tunes (a :class:`~evojax_merge.search.dam.FullDamModel`) call :meth:`DAM.run_full`
with each source's data; it returns an Outcome whose ``model`` is the merged model.

A learning-rate / epochs grid (``grid_lr``, ``grid_epochs``; both empty by default: one training at ``lr``
and ``epochs``) trains once per grid point and keeps the merge with the best validation score on the
target's validation batch (``select``: ``val_ce``, or ``val_accuracy`` with the CE breaking ties). Every
grid point's validation CE, accuracy, steps and how far its coefficients moved from 1/N are in
``details["grid"]``, the chosen point in ``details["chosen"]``; the cost columns count the whole grid.

The training is checkpointed: with ``searches = True`` the engine hands the method a
:class:`~evojax_merge.search.checkpoint.CheckpointRunner` (``task.runner``), and the training loop runs
as its ``loop("dam", ...)``, so a stop signal saves and a rerun resumes bit-identically.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.data.batching import encode_records
from evojax_merge.errors import EvoMergeInputError
from evojax_merge.methods.base import (
    FULL_FINETUNES,
    LORA_POOL,
    POOL_WEIGHTS,
    SOURCE_DATA,
    MergeMethod,
    MergeTask,
    Outcome,
)
from evojax_merge.search.dam import (
    DamConfig,
    DamResult,
    FullDamModel,
    LoraDamModel,
    prepare_source_data,
    train_dam,
)


def coefficient_summary(coeffs: Mapping[str, np.ndarray]) -> dict[str, list[float]]:
    """Per key, the mean coefficient of each source (what the heatmap shows)."""
    return {k: np.asarray(v).mean(axis=-1).round(6).tolist() for k, v in coeffs.items()}


def coefficient_move(coeffs: Mapping[str, np.ndarray], num_sources: int) -> float:
    """``max |c - 1/N|`` over every coefficient: how far training moved the merge from the uniform soup."""
    return float(max((np.abs(np.asarray(v) - 1.0 / num_sources).max() for v in coeffs.values()), default=0.0))


SELECT = ("val_ce", "val_accuracy")


@jax.jit
def _exact_match_error(model, batch) -> jax.Array:
    """1 - exact-match accuracy of a full model's greedy answers on a validation batch (one forward)."""
    from evojax_merge.search.sakana import objective_value

    return objective_value("accuracy", model.logits, batch)


def select_grid_point(rows: Sequence[Mapping], select: str) -> int:
    """Index of the best grid row: the lowest ``val_ce``, or the highest ``val_accuracy`` (ties: the lower
    ``val_ce``, then the earlier row)."""
    if select == "val_ce":
        return min(range(len(rows)), key=lambda i: (rows[i]["val_ce"], i))
    return min(range(len(rows)), key=lambda i: (-rows[i]["val_accuracy"], rows[i]["val_ce"], i))


def dam_details(res: DamResult, val_examples: int = 0) -> dict:
    return {
        "steps": res.steps,
        "history": res.history,
        "forward_examples": res.forward_examples + val_examples,
        "backward_examples": res.backward_examples,
        "precompute_s": res.precompute_s,
        "train_s": res.train_s,
        "coefficients": coefficient_summary(res.coefficients),
    }


class DAM(MergeMethod):
    """Differentiable adaptive merging; the hyperparameters are :class:`DamConfig`'s fields."""

    remote = False
    searches = True  # a checkpointed loop: the engine gives it a CheckpointRunner (task.runner)
    requires = frozenset({LORA_POOL, POOL_WEIGHTS, SOURCE_DATA})

    def missing(self, provided: frozenset[str]) -> frozenset[str]:
        """On full fine-tunes or on a LoRA pool whose weights and source data are here."""
        if FULL_FINETUNES in provided:
            return frozenset()
        return self.requires - frozenset(provided)

    def __init__(self, name: str = "dam", objective: str = "kl", temperature: float = 2.0, lambda_cos: float = 0.01,
                 lambda_l1: float = 0.0, lambda_l2: float = 0.0, lr: float = 1e-3, epochs: int = 1,
                 batch_size: int = 4, top_k: int | None = None, positions: str = "answer",
                 examples_per_source: int | None = None, embeddings: bool = False, norms: bool = False,
                 source_split: str = "train", max_len: int | None = None, grid_lr: Sequence[float] | None = None,
                 grid_epochs: Sequence[int] | None = None, select: str = "val_ce"):
        self.name = name
        self.objective, self.temperature, self.lambda_cos = objective, temperature, lambda_cos
        self.lambda_l1, self.lambda_l2, self.lr, self.epochs = lambda_l1, lambda_l2, lr, epochs
        self.batch_size, self.top_k, self.positions = batch_size, top_k, positions
        self.examples_per_source, self.embeddings, self.norms = examples_per_source, embeddings, norms
        self.source_split, self.max_len = source_split, max_len
        self.grid_lr = [float(x) for x in (grid_lr or ())]
        self.grid_epochs = [int(x) for x in (grid_epochs or ())]
        if select not in SELECT:
            raise EvoMergeInputError(f"dam.select: {select!r} is not one of {', '.join(SELECT)}")
        self.select = select
        for lr, epochs in self.grid():
            dataclasses.replace(self.config(0), lr=lr, epochs=epochs).check()

    def grid(self) -> list[tuple[float, int]]:
        """The (lr, epochs) points trained: the grid (an empty axis takes ``lr`` / ``epochs``), or just those."""
        return [(lr, ep) for lr in (self.grid_lr or [self.lr]) for ep in (self.grid_epochs or [self.epochs])]

    @staticmethod
    def loop_name(lr: float, epochs: int, grid: Sequence[tuple[float, int]]) -> str:
        """The checkpoint loop of a grid point (``dam`` alone without a grid, so old checkpoints resume)."""
        return "dam" if len(grid) == 1 else f"dam[lr={lr:g},epochs={epochs}]"

    def config(self, seed: int, full: bool = False) -> DamConfig:
        """``positions: auto`` is the answer tokens on a LoRA pool (records with answers) and every real
        token on full fine-tunes (a source's own data there is plain text, e.g. Sakana's language corpus)."""
        fields = {f.name for f in dataclasses.fields(DamConfig)} - {"seed", "positions"}
        positions = ("all" if full else "answer") if self.positions == "auto" else self.positions
        return DamConfig(**{k: getattr(self, k) for k in fields}, positions=positions, seed=seed)

    # -- LoRA pool ---------------------------------------------------------------------------------
    def source_examples(self, world, names: Sequence[str]) -> list[dict | None]:
        """Each adapter's own data (what it was trained on, or the ``source_split`` records of its task),
        encoded with the world's prompt settings."""
        out: list[dict | None] = []
        for name in names:
            records, task = world.source_records(name, self.source_split)
            if not records:
                raise EvoMergeInputError(
                    f"dam: source {name!r} has no {self.source_split!r} records for its KL term (task {task!r})")
            kw = world.encoding(task, self.source_split) if task in world.records else {"style": world.prompt.style}
            out.append(encode_records(records, world.tokenizer, self.max_len, **kw).arrays)
        return out

    def run(self, task: MergeTask) -> Outcome:
        if task.sources is not None:
            return self.run_sources(task.sources, task.seed, task.runner)
        if task.stack is None or task.world is None:
            raise EvoMergeInputError("method dam: needs the pool's weights and the world (a local run)")
        if self.select != "val_ce":
            raise EvoMergeInputError("dam.select: a LoRA pool selects on val_ce (its validation scores are CE)")
        t0 = time.perf_counter()
        world = task.world
        model = LoraDamModel(world.model, task.stack, task.pool_names)
        if self.objective == "kl":
            data = {"source_data": self.source_examples(world, task.pool_names)}
        else:
            val = task.val_records if task.val_records is not None else world.records[task.target]["validation"]
            enc = encode_records(val, world.tokenizer, self.max_len, **world.encoding(task.target, "validation"))
            data = {"target_data": enc.arrays}
        evaluator = task.evaluator_for("A")
        val_examples = int(getattr(evaluator, "num_batches", 0) * getattr(evaluator, "batch_size", 0))
        grid, points = self.grid(), []
        data, shared = self._shared_data(model, self.config(task.seed), data)
        for lr, epochs in grid:
            cfg = dataclasses.replace(self.config(task.seed), lr=lr, epochs=epochs)
            res = train_dam(model, cfg, runner=task.runner, loop_name=self.loop_name(lr, epochs, grid), **data)
            adapter = model.merged_adapter({k: jnp.asarray(v) for k, v in res.coefficients.items()})
            points.append((res, adapter, float(evaluator.evaluate_adapter(adapter))))
        rows = [self._grid_row(lr, ep, res, ce, None, model.num_sources)
                for (lr, ep), (res, _, ce) in zip(grid, points, strict=True)]
        best = select_grid_point(rows, "val_ce")
        res, adapter, val_ce = points[best]
        details = self._details(res, rows, best, points, val_examples, shared)
        details["wall_s"] = time.perf_counter() - t0
        details["sources"] = list(task.pool_names)
        return Outcome(self.name, adapter=adapter, val_ce=val_ce, val_fitness=val_ce, details=details)

    @staticmethod
    def _grid_row(lr: float, epochs: int, res: DamResult, val_ce: float, val_accuracy: float | None,
                  num_sources: int) -> dict:
        row = {"lr": lr, "epochs": epochs, "steps": res.steps, "val_ce": val_ce}
        if val_accuracy is not None:
            row["val_accuracy"] = val_accuracy
        row["final_loss"] = res.history[-1]["loss"] if res.history else None
        row["max_coef_move"] = coefficient_move(res.coefficients, num_sources)
        return row

    def _shared_data(self, model, cfg: DamConfig, data: dict) -> tuple[dict, int]:
        """With a grid and the KL objective, the sources' data and logits once for every grid point:
        ``(train_dam's data keywords, examples forwarded for them)``; otherwise ``(data, 0)`` unchanged."""
        if len(self.grid()) == 1 or "source_data" not in data:
            return data, 0
        prepared = prepare_source_data(model, data["source_data"], cfg)
        return {"prepared": prepared}, int(prepared["input_ids"].shape[0] * prepared["input_ids"].shape[1])

    def _details(self, res: DamResult, rows: list[dict], best: int, points: Sequence, val_examples: int,
                 shared: int = 0) -> dict:
        """The chosen point's details; with a grid also every point's row and the whole grid's cost
        (``shared``: the examples forwarded once for all points, the sources' logits)."""
        details = dam_details(res, val_examples)
        details["max_coef_move"] = rows[best]["max_coef_move"]
        if len(rows) > 1:
            details["grid"] = rows
            details["chosen"] = {"lr": rows[best]["lr"], "epochs": rows[best]["epochs"], "select": self.select}
            details["forward_examples"] = shared + sum(p[0].forward_examples + val_examples for p in points)
            details["backward_examples"] = sum(p[0].backward_examples for p in points)
            details["train_s"] = sum(p[0].train_s for p in points)
        return details

    # -- full fine-tunes ---------------------------------------------------------------------------
    def run_sources(self, cell, seed: int, runner=None) -> Outcome:
        """DAM over a :class:`~evojax_merge.methods.base.SourcesCell` (``+experiment=dam``): the KL term
        takes each source on its own task's records, the "w/o KL" variant the target's validation set."""
        from evojax_merge.merge.dam import DamParts
        from evojax_merge.models.functional import ParamsModel
        from evojax_merge.search.sakana import model_ce

        t0 = time.perf_counter()
        model = FullDamModel(cell.stack.model(0), cell.stack.params, cell.labels,
                             DamParts(embeddings=self.embeddings, norms=self.norms))
        if self.objective == "kl":
            missing = [n for n, d in zip(cell.labels, cell.source_data, strict=True) if d is None]
            if missing:
                raise EvoMergeInputError(f"dam: source {missing[0]!r} has no records of its own task for the KL term")
            data = {"source_data": cell.source_data}
        else:
            data = {"target_data": cell.val_data}
        val_examples = int(cell.batch["input_ids"].shape[0])
        grid, points, rows = self.grid(), [], []
        data, shared = self._shared_data(model, self.config(seed, full=True), data)
        for lr, epochs in grid:
            cfg = dataclasses.replace(self.config(seed, full=True), lr=lr, epochs=epochs)
            res = train_dam(model, cfg, runner=runner, loop_name=self.loop_name(lr, epochs, grid), **data)
            merged = ParamsModel(cell.stack.config, model.merged_weights({k: jnp.asarray(v) for k, v in
                                                                           res.coefficients.items()}))
            val_ce = float(model_ce(merged, cell.batch))
            val_acc = 1.0 - float(_exact_match_error(merged, cell.batch))
            points.append((res, merged, val_ce))
            rows.append(self._grid_row(lr, epochs, res, val_ce, val_acc, model.num_sources))
        best = select_grid_point(rows, self.select)
        res, merged, val_ce = points[best]
        details = self._details(res, rows, best, points, val_examples, shared)
        details["wall_s"] = time.perf_counter() - t0
        details["sources"] = list(cell.labels)
        return Outcome(self.name, model=merged, val_ce=val_ce, val_fitness=val_ce, details=details)

    def run_full(self, model: FullDamModel, source_data: Sequence[Mapping[str, np.ndarray] | None] | None = None,
                 target_data: Mapping[str, np.ndarray] | None = None, seed: int = 0,
                 runner=None) -> tuple[Outcome, DamResult]:
        """DAM over stacked full models; the Outcome's ``model`` is the merged model. ``runner``: a
        :class:`~evojax_merge.search.checkpoint.CheckpointRunner` that checkpoints the training (None: no saves)."""
        t0 = time.perf_counter()
        res = train_dam(model, self.config(seed, full=True), source_data=source_data, target_data=target_data,
                        runner=runner)
        merged = model.model_for(model.merged_weights({k: jnp.asarray(v) for k, v in res.coefficients.items()}))
        details = dam_details(res)
        details["wall_s"] = time.perf_counter() - t0
        return Outcome(self.name, model=merged, details=details), res
