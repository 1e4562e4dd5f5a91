"""User task declarations (``world.tasks`` of a files world): each task names its IE type and its record files.

    world:
      tasks:
        conll04: {type: re, validation: val.jsonl, test: test.jsonl}

``type`` is one of ``ner, es, et, re, ep, epr, ee, eet, eea, exact`` (see
:mod:`evojax_merge.eval.metrics`); the scorer is never guessed from the task's name. Every
task needs a ``validation`` and a ``test`` file; ``train`` is optional. All of it is checked,
and every gold answer is parsed under its declared type, before a model is loaded.

:func:`evojax_merge.world.registry.register_configs` gives ``world.tasks`` an open (non-struct) node, so
the plain override ``world=files world.tasks.NAME.validation=...`` adds a task without Hydra's ``+``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from evojax_merge.data.records import load_records
from evojax_merge.errors import EvoMergeInputError
from evojax_merge.eval.metrics import TASK_TYPES, check_gold

REQUIRED_SPLITS = ("validation", "test")
OPTIONAL_SPLITS = ("train",)
TASK_KEYS = ("type", *REQUIRED_SPLITS, *OPTIONAL_SPLITS)


@dataclasses.dataclass(frozen=True)
class TaskDeclaration:
    name: str
    type: str
    files: dict[str, str]  # split -> path


def declared_tasks(tasks: Mapping[str, object] | None, key: str = "data.tasks") -> dict[str, TaskDeclaration]:
    """Check ``data.tasks``; one-line errors name the task and the key."""
    if not tasks:
        raise EvoMergeInputError(f"{key}: no task declared (e.g. {key}.my_task.type=ner "
                                 f"{key}.my_task.validation=val.jsonl {key}.my_task.test=test.jsonl)")
    out: dict[str, TaskDeclaration] = {}
    for name, spec in tasks.items():
        where = f"{key}.{name}"
        if not isinstance(spec, Mapping):
            raise EvoMergeInputError(f"{where}: expected {{type: ..., validation: ..., test: ...}}, got {spec!r}")
        unknown = [k for k in spec if k not in TASK_KEYS]
        if unknown:
            raise EvoMergeInputError(f"{where}.{unknown[0]}: unknown key; a task has {', '.join(TASK_KEYS)}")
        task_type = spec.get("type")
        if task_type is None:
            raise EvoMergeInputError(f"{where}.type: missing; declare the task's type, one of {', '.join(TASK_TYPES)}")
        if str(task_type).lower() not in TASK_TYPES:
            raise EvoMergeInputError(f"{where}.type: {task_type!r} is not one of {', '.join(TASK_TYPES)}")
        for split in REQUIRED_SPLITS:
            if not spec.get(split):
                raise EvoMergeInputError(f"{where}.{split}: missing; every task needs a validation and a test file")
        files = {s: str(spec[s]) for s in (*REQUIRED_SPLITS, *OPTIONAL_SPLITS) if spec.get(s)}
        out[str(name)] = TaskDeclaration(str(name), str(task_type).lower(), files)
    return out


def load_task_records(tasks: Mapping[str, TaskDeclaration]) -> dict[str, dict[str, list[dict]]]:
    """``task -> split -> records``, each gold answer checked against the declared type."""
    out: dict[str, dict[str, list[dict]]] = {}
    for name, decl in tasks.items():
        out[name] = {}
        for split, path in decl.files.items():
            records = load_records(path)
            check_gold([r["output"] for r in records], decl.type, path)
            out[name][split] = records
    return out
