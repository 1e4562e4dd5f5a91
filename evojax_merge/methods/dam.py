"""DAM as a registry method (``conf/method/dam*.yaml``): a white-box gradient baseline on a LoRA pool.

On a LoRA pool every adapter is a source: its KL term is taken on the records of the task it was
trained on (``source_split`` of that task), so DAM with ``objective="kl"`` never sees the target;
``objective="ce"`` (the "w/o KL" variant) trains on the target's validation records instead. The
result is one adapter of rank N·r (docs/methods.md §5), scored on the target's validation set.

For full fine-tunes (a :class:`~evojax_merge.search.dam.FullDamModel`) call :meth:`DAM.run_full`
with each source's data; it returns an Outcome whose ``model`` is the merged model.

The training is checkpointed: with ``searches = True`` the engine hands the method a
:class:`~evojax_merge.search.checkpoint.CheckpointRunner` (``task.runner``), and the training loop runs
as its ``loop("dam", ...)``, so a stop signal saves and a rerun resumes bit-identically.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

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
from evojax_merge.search.dam import DamConfig, DamResult, FullDamModel, LoraDamModel, train_dam


def coefficient_summary(coeffs: Mapping[str, np.ndarray]) -> dict[str, list[float]]:
    """Per key, the mean coefficient of each source (what the heatmap shows)."""
    return {k: np.asarray(v).mean(axis=-1).round(6).tolist() for k, v in coeffs.items()}


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
                 source_split: str = "train", max_len: int | None = None):
        self.name = name
        self.objective, self.temperature, self.lambda_cos = objective, temperature, lambda_cos
        self.lambda_l1, self.lambda_l2, self.lr, self.epochs = lambda_l1, lambda_l2, lr, epochs
        self.batch_size, self.top_k, self.positions = batch_size, top_k, positions
        self.examples_per_source, self.embeddings, self.norms = examples_per_source, embeddings, norms
        self.source_split, self.max_len = source_split, max_len
        self.config(0).check()

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
        t0 = time.perf_counter()
        world = task.world
        model = LoraDamModel(world.model, task.stack, task.pool_names)
        cfg = self.config(task.seed)
        if cfg.objective == "kl":
            res = train_dam(model, cfg, source_data=self.source_examples(world, task.pool_names), runner=task.runner)
        else:
            val = task.val_records if task.val_records is not None else world.records[task.target]["validation"]
            enc = encode_records(val, world.tokenizer, self.max_len, **world.encoding(task.target, "validation"))
            res = train_dam(model, cfg, target_data=enc.arrays, runner=task.runner)
        adapter = model.merged_adapter({k: jnp.asarray(v) for k, v in res.coefficients.items()})
        evaluator = task.evaluator_for("A")
        val_ce = float(evaluator.evaluate_adapter(adapter))
        val_examples = int(getattr(evaluator, "num_batches", 0) * getattr(evaluator, "batch_size", 0))
        details = dam_details(res, val_examples)
        details["wall_s"] = time.perf_counter() - t0
        details["sources"] = list(task.pool_names)
        return Outcome(self.name, adapter=adapter, val_ce=val_ce, val_fitness=val_ce, details=details)

    # -- full fine-tunes ---------------------------------------------------------------------------
    def run_sources(self, cell, seed: int, runner=None) -> Outcome:
        """DAM over a :class:`~evojax_merge.methods.base.SourcesCell` (``+experiment=dam``): the KL term
        takes each source on its own task's records, the "w/o KL" variant the target's validation set."""
        from evojax_merge.merge.dam import DamParts
        from evojax_merge.models.functional import ParamsModel
        from evojax_merge.search.sakana import model_ce

        model = FullDamModel(cell.stack.model(0), cell.stack.params, cell.labels,
                             DamParts(embeddings=self.embeddings, norms=self.norms))
        if self.objective == "kl":
            missing = [n for n, d in zip(cell.labels, cell.source_data, strict=True) if d is None]
            if missing:
                raise EvoMergeInputError(f"dam: source {missing[0]!r} has no records of its own task for the KL term")
            outcome, res = self.run_full(model, source_data=cell.source_data, seed=seed, runner=runner)
        else:
            outcome, res = self.run_full(model, target_data=cell.val_data, seed=seed, runner=runner)
        merged = ParamsModel(cell.stack.config, model.merged_weights({k: jnp.asarray(v) for k, v in
                                                                       res.coefficients.items()}))
        val_ce = float(model_ce(merged, cell.batch))
        details = {**outcome.details, "forward_examples": outcome.details["forward_examples"]
                   + int(cell.batch["input_ids"].shape[0]), "sources": list(cell.labels)}
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
