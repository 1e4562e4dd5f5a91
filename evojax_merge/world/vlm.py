"""The VLM world (``world=vlm``, issue 25) as a world spec and the backend the engine drives.

    VlmWorldSpec   the recipe (``conf/world/vlm.yaml``): builds or reuses :mod:`evojax_merge.zoo.vlm_build`'s
                   world, checks its pilot gate (:mod:`evojax_merge.zoo.vlm_gate`), opens a :class:`VlmBackend`
    VlmBackend     one cell per run: the sources' language models stacked, their base, the target's
                   validation batch with the kept vision tower's image rows; answers are greedy decodes on
                   the test images; the score is exact match (``f1``, what the report's intervals use) and
                   ROUGE-L (:mod:`evojax_merge.eval.rouge`)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.methods.base import SourcesCell
from evojax_merge.methods.vlm import VLM_SOURCES
from evojax_merge.world.specs import OpenContext, WorldSpec, _sections, _unknown_key

log = logging.getLogger(__name__)


class VlmWorldSpec(WorldSpec):
    """``build``: :class:`~evojax_merge.zoo.vlm_build.VlmBuildConfig` overrides (``model`` nested);
    ``val_examples``: target validation records every candidate is scored on (null: all);
    ``allow_failed_gate``: run a realization whose gate failed (else a one-line stop)."""

    provides = frozenset({VLM_SOURCES})
    kind = "vlm"

    def __init__(self, build: Mapping | None = None, val_examples: int | None = None, allow_failed_gate: bool = False):
        from evojax_merge.zoo.vlm_build import VlmBuildConfig, VlmModelSpec

        if isinstance(build, VlmBuildConfig):
            self.config = build
        else:
            b = _sections(build)
            try:
                model = VlmModelSpec(**b.pop("model", {}))
            except TypeError as err:
                raise EvoMergeInputError(_unknown_key("world.build.model", err)) from None
            try:
                self.config = VlmBuildConfig(model=model, **b)
            except TypeError as err:
                raise EvoMergeInputError(_unknown_key("world.build", err)) from None
        if val_examples is not None and int(val_examples) < 2:
            raise EvoMergeInputError(f"world.val_examples: {val_examples} (at least 2, or null for all)")
        self.val_examples, self.allow_failed_gate = val_examples, bool(allow_failed_gate)
        self.gate: dict | None = None

    @property
    def seed(self) -> int:
        return int(self.config.seed)

    def with_seed(self, seed: int) -> VlmWorldSpec:
        return VlmWorldSpec(dataclasses.replace(self.config, seed=int(seed)), self.val_examples, self.allow_failed_gate)

    def default_targets(self) -> tuple[str, ...]:
        from evojax_merge.zoo.vlm_build import TARGET

        return (TARGET,)

    def open(self, ctx: OpenContext) -> VlmBackend:
        from evojax_merge.zoo.vlm_build import build_vlm_merge_world
        from evojax_merge.zoo.vlm_gate import format_gate

        world = build_vlm_merge_world(self.config, ctx.cache_dir, progress=ctx.progress)
        self.gate = world.manifest["gate"]
        log.info("vlm world seed %d: %s", self.seed, format_gate(self.gate))
        if not self.gate["passed"]:
            if not self.allow_failed_gate:
                raise EvoMergeInputError(f"world: vlm realization seed {self.seed} failed its pilot gate "
                                         f"({format_gate(self.gate)}); world.allow_failed_gate=true runs it")
            log.warning("vlm world seed %d failed its pilot gate; run anyway (world.allow_failed_gate=true)", self.seed)
        return VlmBackend(world, self.val_examples, progress=ctx.progress)

    def describe(self) -> dict:
        return {**super().describe(), "digest": self.config.digest(), "build": dataclasses.asdict(self.config),
                "gate": self.gate, "report": "evojax_merge.zoo.vlm_report:sections"}


class VlmBackend:
    """The engine's view of a built VLM world (see the module docstring)."""

    remote = False
    metric = "exact match"  # what ``f1`` holds; ROUGE-L is kept beside it (``rouge_l``)

    def __init__(self, world, val_examples: int | None = None, progress: bool = False):
        self.world, self.val_examples, self.progress = world, val_examples, progress
        self.names = list(world.source_dirs)
        self.records = {t: world.records(t) for t in (world.target, *world.own_task.values())}
        self.adapter_kinds: dict[str, str] = {}
        self.default_targets = (world.target,)
        self._cell: SourcesCell | None = None

    def own_adapter(self, task: str) -> str | None:
        return next((s for s, t in self.world.own_task.items() if t == task), None)

    def task_type(self, task: str) -> str:
        return "exact"

    def check(self, targets, max_len: int | None, test_examples: int | None) -> None:
        for t in targets:
            if t not in self.records or not self.records[t].get("validation") or not self.records[t].get("test"):
                raise EvoMergeInputError(f"setting.targets: {t!r} has no validation and test records in this world")

    def prompt_stats(self, target: str, task: str | None = None) -> dict:
        return {}

    def sources_cell(self) -> SourcesCell:
        """The stacked language models, their base and the target's validation batch with image rows."""
        if self._cell is None:
            import jax.numpy as jnp

            from evojax_merge.models.io import model_from_weights
            from evojax_merge.models.llava import image_rows
            from evojax_merge.models.sources import stack_models
            from evojax_merge.search.sakana import validation_batch

            w = self.world
            cfg = w.llava_config.text
            stack = stack_models([model_from_weights(cfg, w.lm_params(s), where=s) for s in self.names], self.names)
            val = w.records(w.target)["validation"][: self.val_examples]
            enc = w.encode(val)
            rows, is_image = image_rows(w.features("validation"), enc["input_ids"], enc["image"],
                                        w.llava_config.image_token_id)
            batch = {**validation_batch(enc), "rows": jnp.asarray(rows), "is_image": jnp.asarray(is_image)}
            self._cell = SourcesCell(stack, w.lm_params("base"), batch, tuple(self.names), (), enc)
        return self._cell

    def open_cell(self, target: str, pool_idx: Sequence[int], val_records, validation, max_len: int | None):
        from evojax_merge.world.backends import Cell

        def no_evaluator(prune: str):
            raise EvoMergeInputError("this world holds a VLM and a Llama: it has no LoRA evaluator")

        return Cell(target, list(pool_idx), [self.names[i] for i in pool_idx], no_evaluator,
                    sources=self.sources_cell())

    def answers(self, cell, outcomes, records: list[dict], max_len: int | None, task: str | None = None
                ) -> list[list[str]]:
        """Each outcome's greedy answers on the test images (its language model, the kept vision tower)."""
        from evojax_merge.zoo.vlm_gate import vlm_answers

        out = []
        for o in outcomes:
            if o.model is None or not hasattr(o.model, "params"):
                raise EvoMergeInputError(f"method {o.method}: its result is not a language model for the VLM")
            out.append(vlm_answers(self.world, o.model.params, records, "test"))
        return out

    def score(self, task: str, answers: list[str], records: list[dict]) -> dict:
        from evojax_merge.eval.rouge import rouge_l_scores
        from evojax_merge.zoo.vlm_gate import exact_match

        em = exact_match(answers, records)
        rouge = rouge_l_scores(answers, [r["answer"] for r in records])
        return {"precision": em, "recall": em, "f1": em, "accuracy": em, "exact_match": em, "rouge_l": rouge["f"],
                "rouge_l_precision": rouge["p"], "rouge_l_recall": rouge["r"]}


__all__ = ["OpenContext", "VlmBackend", "VlmWorldSpec"]
