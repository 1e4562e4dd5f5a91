"""Worlds: what a run merges in, as the ``world/`` config group creates them (``_target_``).

A world spec is cheap to make: it checks its config and says what it ``provides``; ``open`` builds
(or reuses from the cache) and loads it, and returns the backend the engine drives. A method's
``requires`` (``evojax_merge.methods.base``) against a world's ``provides`` is checked before
anything is built.

    IEWorld       the built-in compositional IE world (conf/zoo/ie*.yaml), a LoRA pool on a tiny Llama
    SakanaWorld   Sakana's cross-domain world: full fine-tunes of one base (language, skill)
    FilesWorld    your own HF or GGUF base model, a PEFT pool and task files
    RemoteWorld   a merge service: only control vectors leave, losses and texts come back; its
                  catalog (task records, adapter tasks) is another world's, read on the user's side

``with_seed(s)`` is the same design realized from world seed ``s`` (the engine's world-seed loop).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from evojax_merge.data.prompt import PromptSettings
from evojax_merge.errors import EvoMergeInputError
from evojax_merge.methods.base import FULL_FINETUNES, LORA_POOL, POOL_WEIGHTS, SOURCE_DATA


@dataclasses.dataclass(frozen=True)
class OpenContext:
    """How to open a world for one run: the cache, the dtype, prompts, the evaluator's chunking."""

    cache_dir: str | None = None
    prompt: PromptSettings = PromptSettings()
    population_chunk: int | str | None = "auto"
    max_new_tokens: int = 48
    progress: bool = True


class WorldSpec(abc.ABC):
    """A world's recipe. ``provides``: what its methods may require (``methods/base.py``)."""

    provides: ClassVar[frozenset[str]] = frozenset()
    kind: ClassVar[str] = "world"

    @property
    def seed(self) -> int | None:
        """The world seed of this realization (None: the world has none)."""
        return None

    def with_seed(self, seed: int) -> WorldSpec:
        """The same design realized from world seed ``seed``."""
        raise EvoMergeInputError(f"experiment.world_seeds: the {self.kind} world has no seed to vary")

    def default_targets(self) -> tuple[str, ...]:
        """The targets a setting takes when none are named."""
        return ()

    def describe(self) -> dict:
        """What results.json records of the world."""
        return {"kind": self.kind, "seed": self.seed}

    @abc.abstractmethod
    def open(self, ctx: OpenContext):
        """Build or reuse, load, and return the backend (``world/backends.py``)."""


def _sections(cfg: Mapping | None) -> dict:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg or {})


def _unknown_key(key: str, err: TypeError) -> str:
    """A config dataclass's ``TypeError`` as one line naming the key: ``world.build.bogus: unknown key``."""
    import re

    bad = re.search(r"unexpected keyword argument '([^']+)'", str(err))
    return f"{key}.{bad.group(1)}: unknown key" if bad else f"{key}: {err}"


class IEWorld(WorldSpec):
    """The compositional IE world (``evojax_merge.zoo.ie_build``); ``build`` is a ``conf/zoo/ie*.yaml``.

    ``canonical``: a recipe that equals a shipped realization's is loaded from the package
    (``evojax_merge.zoo.realization``), else built on this machine. ``allow_failed_gate``: a realization
    whose pilot gate failed (``evojax_merge.zoo.gate``) stops the run unless this is set (a replicated
    design runs every realization and reports the gated ones apart).
    """

    provides = frozenset({LORA_POOL, POOL_WEIGHTS, SOURCE_DATA})
    kind = "ie"

    def __init__(self, build: Mapping, dtype: str = "float32", canonical: bool = True,
                 allow_failed_gate: bool = False):
        from evojax_merge.zoo.ie_build import ZooBuildConfig

        try:
            self.config = build if isinstance(build, ZooBuildConfig) else ZooBuildConfig.from_dict(_sections(build))
        except EvoMergeInputError as e:
            raise EvoMergeInputError(f"world.build: {e}".replace("world.build: zoo.", "world.build.")) from None
        if dtype not in ("float32", "bfloat16"):
            raise EvoMergeInputError(f"world.dtype: {dtype!r} is not float32 or bfloat16")
        self.dtype, self.canonical, self.allow_failed_gate = dtype, bool(canonical), bool(allow_failed_gate)

    @property
    def seed(self) -> int:
        return int(self.config.seed)

    def with_seed(self, seed: int) -> IEWorld:
        # a world seed draws both the records and the training (zoo.ie_build ... tasks.seed=s seed=s)
        tasks = dataclasses.replace(self.config.tasks, seed=int(seed))
        cfg = dataclasses.replace(self.config, seed=int(seed), tasks=tasks)
        return IEWorld(cfg, self.dtype, self.canonical, self.allow_failed_gate)

    def default_targets(self) -> tuple[str, ...]:
        return tuple(self.config.gate.targets)

    def task_names(self) -> list[str]:
        from evojax_merge.zoo.ie_world import task_names

        return list(task_names(self.config.tasks))

    def catalog(self) -> tuple[dict, dict[str, str], dict[str, str], dict[str, str]]:
        """``(records, task_types, adapter_tasks, adapter_kinds)`` from the config alone (no weights):
        what a remote run needs on the user's side."""
        from evojax_merge.world.local import ie_adapter_tasks, ie_task_types
        from evojax_merge.zoo.ie_world import adapter_datasets, generate_world

        records = generate_world(self.config.tasks)
        adapters = adapter_datasets(self.config.tasks, records)
        return (records, ie_task_types(self.task_names()), ie_adapter_tasks(adapters),
                {n: a["kind"] for n, a in adapters.items()})

    def open(self, ctx: OpenContext):
        from evojax_merge.world.backends import LocalBackend
        from evojax_merge.world.local import load_ie_world

        world = load_ie_world(self.config, ctx.cache_dir, self.dtype, progress=ctx.progress, prompt=ctx.prompt,
                              canonical=self.canonical)
        self._check_gate(world.info.get("gate"))
        return LocalBackend(world, ctx.max_new_tokens, ctx.population_chunk, progress=ctx.progress,
                            default_targets=self.default_targets())

    def _check_gate(self, gate: Mapping | None) -> None:
        import logging

        if gate is None or gate.get("passed", True):
            return
        from evojax_merge.zoo.gate import format_gate

        failed = ", ".join(f"{t} (gap {100 * c['gap']:+.1f} F1)" for t, c in gate["targets"].items() if not c["passed"])
        if not self.allow_failed_gate:
            raise EvoMergeInputError(f"world: realization seed {self.seed} failed its pilot gate on {failed}; "
                                     "no method result on it means anything (world.allow_failed_gate=true runs it)")
        logging.getLogger(__name__).warning("world seed %d failed its pilot gate (%s); run anyway "
                                            "(world.allow_failed_gate=true)\n%s", self.seed, failed, format_gate(gate))

    def describe(self) -> dict:
        import hashlib

        from evojax_merge.zoo.realization import canonical_dir, config_blob

        recipe = dataclasses.asdict(self.config)
        shipped = canonical_dir(self.kind, recipe) if self.canonical else None
        return {**super().describe(), "digest": self.config.digest(),
                "recipe_sha256": hashlib.sha256(config_blob(recipe).encode()).hexdigest()[:12],
                "canonical": shipped.name if shipped else None}


class SakanaWorld(WorldSpec):
    """Sakana's world (``evojax_merge.zoo.sakana_world``): a base, a language and a skill fine-tune, and
    the skill in the language as the target no source was trained on."""

    provides = frozenset({FULL_FINETUNES, SOURCE_DATA})
    kind = "sakana"

    def __init__(self, build: Mapping | None = None, sources: tuple[str, ...] | list[str] = ("lang", "skill"),
                 val_examples: int | None = None):
        from evojax_merge.zoo.sakana_world import SakanaModelSpec, SakanaWorldConfig

        if isinstance(build, SakanaWorldConfig):
            self.config = build
        else:
            b = _sections(build)
            try:
                model = SakanaModelSpec(**b.pop("model", {}))
            except TypeError as err:
                raise EvoMergeInputError(_unknown_key("world.build.model", err)) from None
            try:
                self.config = SakanaWorldConfig(model=model, **b)
            except TypeError as err:
                raise EvoMergeInputError(_unknown_key("world.build", err)) from None
        self.sources, self.val_examples = tuple(sources), val_examples
        if not self.sources:
            raise EvoMergeInputError("world.sources: at least one source")

    @property
    def seed(self) -> int:
        return int(self.config.seed)

    def with_seed(self, seed: int) -> SakanaWorld:
        return SakanaWorld(dataclasses.replace(self.config, seed=int(seed)), self.sources, self.val_examples)

    def default_targets(self) -> tuple[str, ...]:
        from evojax_merge.zoo.sakana_world import TARGET

        return (TARGET,)

    def open(self, ctx: OpenContext):
        from evojax_merge.world.backends import SourcesBackend
        from evojax_merge.zoo.sakana_world import build_sakana_world

        world = build_sakana_world(self.config, ctx.cache_dir, progress=ctx.progress)
        return SourcesBackend(world, self.sources, self.val_examples, progress=ctx.progress)

    def describe(self) -> dict:
        return {**super().describe(), "digest": self.config.digest(), "sources": list(self.sources)}


class FilesWorld(WorldSpec):
    """Your own base model (an HF directory, or ``model.source: gguf``), PEFT adapters and task files."""

    provides = frozenset({LORA_POOL, POOL_WEIGHTS, SOURCE_DATA})
    kind = "files"

    def __init__(self, model: Mapping, adapters: str | list[str], tasks: Mapping, dtype: str = "float32"):
        from evojax_merge.data.tasks import declared_tasks

        self.model = _sections(model)
        if self.model.get("source", "hf") not in ("hf", "gguf"):
            raise EvoMergeInputError(f"world.model.source: {self.model.get('source')!r} is not hf or gguf")
        if self.model.get("source", "hf") == "hf" and not self.model.get("path"):
            raise EvoMergeInputError("world.model.path: missing (an HF model directory)")
        self.adapters = adapters if isinstance(adapters, str) else list(adapters or [])
        if not self.adapters:
            raise EvoMergeInputError("world.adapters: missing (a glob or a list of PEFT adapter directories)")
        self.tasks = _sections(tasks)
        declared_tasks(self.tasks, key="world.tasks")  # a bad declaration fails before anything loads
        self.dtype = dtype

    def catalog(self) -> tuple[dict, dict[str, str], dict[str, str], dict[str, str]]:
        from evojax_merge.data.tasks import declared_tasks, load_task_records

        tasks = declared_tasks(self.tasks, key="world.tasks")
        return load_task_records(tasks), {n: t.type for n, t in tasks.items()}, {}, {}

    def open(self, ctx: OpenContext):
        from evojax_merge.world.backends import LocalBackend
        from evojax_merge.world.local import load_user_world

        world = load_user_world(self.model.get("path"), self.model.get("tokenizer"), self.adapters, self.tasks,
                                self.dtype, ctx.prompt, source=self.model.get("source", "hf"))
        return LocalBackend(world, ctx.max_new_tokens, ctx.population_chunk, progress=ctx.progress)


class RemoteWorld(WorldSpec):
    """A merge service's pool (``service``: url, api_key, pool_id, ...); ``catalog`` is the world whose
    records and adapter catalog the user holds (its weights stay with the service)."""

    provides = frozenset({LORA_POOL})
    kind = "remote"

    def __init__(self, service: Mapping, catalog: WorldSpec):
        self.service = _sections(service)
        if not isinstance(catalog, IEWorld | FilesWorld):
            raise EvoMergeInputError("world.catalog: a remote world reads its records from an IE or files world")
        self.catalog_world = catalog

    def default_targets(self) -> tuple[str, ...]:
        return self.catalog_world.default_targets()

    def open(self, ctx: OpenContext):
        from evojax_merge.world.backends import RemoteBackend

        records, task_types, adapter_tasks, adapter_kinds = self.catalog_world.catalog()
        adapter_tasks = self.service.get("adapter_tasks") or adapter_tasks
        adapter_kinds = self.service.get("adapter_kinds") or adapter_kinds
        return RemoteBackend(self.service, records, ctx.max_new_tokens, adapter_tasks, task_types=task_types,
                             adapter_kinds=adapter_kinds, default_targets=self.default_targets())

    def describe(self) -> dict:
        return {"kind": self.kind, "url": self.service.get("url"), "pool_id": self.service.get("pool_id"),
                "catalog": self.catalog_world.describe()}


def world_root(backend: Any) -> Path | None:
    """Where the opened world lives on disk (exports name it as their base), if anywhere."""
    world = getattr(backend, "world", None)
    return getattr(world, "base_dir", None)
