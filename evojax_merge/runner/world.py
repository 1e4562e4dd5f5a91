"""The world a run merges in: a base model, its tokenizer, an adapter pool and the tasks' records.

Two sources: the built-in zoo (built or reused from the cache), or user paths (an HF model
directory, a glob of PEFT adapters, and alpaca-style record files per task).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from evojax_merge.data.records import load_records
from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.pool import LoraPool, load_pool
from evojax_merge.models.io import load_model
from evojax_merge.models.llama import LlamaForCausalLM


@dataclasses.dataclass
class World:
    model: LlamaForCausalLM
    tokenizer: object
    pool: LoraPool
    records: dict[str, dict[str, list[dict]]]  # task -> split -> records
    adapter_task: dict[str, str]  # adapter name -> the task it was trained on
    base_dir: Path
    info: dict  # e.g. the zoo manifest
    # adapter name -> task | anti | noisy | distractor (zoo adapters; "task" when absent)
    adapter_kind: dict[str, str] = dataclasses.field(default_factory=dict)

    def task_type(self, task: str) -> str:
        return task.split("_", 1)[0]

    def own_adapter(self, task: str) -> str | None:
        """The adapter trained on ``task`` itself (not an anti-adapter or noisy duplicate of it)."""
        return next((a for a, t in self.adapter_task.items()
                     if t == task and self.adapter_kind.get(a, "task") == "task"), None)


def load_zoo_world(zoo_cfg, cache_dir: str | None, dtype: str = "float32", progress: bool = True) -> World:
    from transformers import AutoTokenizer

    from evojax_merge.zoo.build import build_zoo

    zoo = build_zoo(zoo_cfg, cache_dir=cache_dir, progress=progress)
    model = load_model(zoo.base_dir, dtype=dtype)
    # the same sorted glob a merge service uses, so local and remote genomes line up
    pool = load_pool(str(zoo.root / "adapters" / "*"), model.config)
    records = {t: zoo.records(t) for t in zoo.task_names}
    adapters = zoo.adapters
    return World(model, AutoTokenizer.from_pretrained(zoo.base_dir), pool, records,
                 {n: a["task"] for n, a in adapters.items()}, zoo.base_dir,
                 {"zoo_root": str(zoo.root), **zoo.manifest}, {n: a["kind"] for n, a in adapters.items()})


def load_user_world(model_dir: str, tokenizer_dir: str | None, adapters: str | list[str], data: dict,
                    dtype: str = "float32") -> World:
    """User data: ``data`` maps task -> {split: path to .json/.jsonl}; adapters map to tasks by
    their directory name (or an ``evojax_merge.json`` with a ``task`` key beside the weights)."""
    from transformers import AutoTokenizer

    model = load_model(model_dir, dtype=dtype)
    pool = load_pool(adapters, model.config)
    records = {task: {split: load_records(path) for split, path in splits.items()} for task, splits in data.items()}
    adapter_task = {}
    for name, path in zip(pool.names, pool.paths, strict=True):
        meta = Path(path) / "evojax_merge.json"
        adapter_task[name] = json.loads(meta.read_text()).get("task", name) if meta.is_file() else name
    tok_dir = tokenizer_dir or model_dir
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    except (OSError, ValueError) as e:
        raise EvoMergeInputError(f"{tok_dir}: cannot load a tokenizer ({e})") from None
    return World(model, tokenizer, pool, records, adapter_task, Path(model_dir), {})
