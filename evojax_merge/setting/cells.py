"""Settings: which cells (target, pool, validation records, scored test sets) an experiment runs, as the
``setting/`` config group creates them (``_target_``). The engine loops over a setting's cells.

    OOD           for each target: the whole pool minus the target's own adapter (``pool_sizes``: random
                  pools of N; ``val_sizes``: V validation records, nested; ``leave_one_out``: every task of
                  the world is a target in turn, the paper's protocol)
    CrossDomain   OOD on a world whose target no source was trained on (Sakana's): every source is the pool
    InDomain      a few experts (<= 10) and, for ``distractors``, unrelated adapters: one multi-task merge
                  on the experts' pooled validation records, scored on each expert's test set
                  (``multitask: false``: one merge per expert on its own validation records)

A catalog is what a backend knows without weights: ``names`` (adapters or sources), ``records``
(task -> split -> records), ``own_adapter(task)``, ``adapter_kinds`` and ``default_targets``.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence

import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.search.fitness import ValidationConfig


@dataclasses.dataclass
class CellPlan:
    """One cell: a target, its pool (indices into the catalog's names), its validation size. ``suffix``
    tells cells of one target apart (``@N=3``); a multi-task cell names its ``tasks`` (their validation
    records are pooled, each one's test set scored) and ``target`` is then the setting's name."""

    target: str
    pool_idx: list[int]
    num_val: int | None = None
    suffix: str = ""
    tasks: tuple[str, ...] = ()

    @property
    def scored_tasks(self) -> tuple[str, ...]:
        return self.tasks or (self.target,)


class Setting(abc.ABC):
    name: str = "setting"

    @abc.abstractmethod
    def cells(self, catalog, seed: int) -> list[CellPlan]:
        """The cells over ``catalog``; ``seed`` draws any random pool."""

    def validation(self, catalog, cell: CellPlan, val: ValidationConfig) -> tuple[list[dict], ValidationConfig]:
        """The cell's validation records and sampling: a multi-task cell splits the budget evenly over its tasks."""
        if cell.tasks:
            return pooled_records([catalog.records[t]["validation"] for t in cell.tasks],
                                  val.batch_size * val.num_batches), val
        records = catalog.records[cell.target]["validation"]
        if cell.num_val is not None:
            if cell.num_val > len(records):
                raise EvoMergeInputError(f"setting.val_sizes: {cell.num_val} > {len(records)} validation records "
                                         f"of {cell.target}")
            records, val = nested_subset(records, cell.num_val, val)
        return records, val

    def describe(self) -> dict:
        return {"name": self.name, **{k: v for k, v in vars(self).items() if not k.startswith("_")}}


def nested_subset(records: list[dict], size: int, val: ValidationConfig) -> tuple[list[dict], ValidationConfig]:
    """The first ``size`` records of one seeded permutation of ``records`` (``val.seed``), all of them scored.

    Nested: every size's records hold every smaller size's, so a curve over sizes varies the size alone and
    not which records are used. The batches are the largest ``b <= val.batch_size`` dividing ``size``, so
    the fitness sees exactly ``size`` records and a cell labelled ``@V=size`` uses that many.
    """
    order = np.random.default_rng(val.seed).permutation(len(records))[:size]
    batch = max(d for d in range(1, min(val.batch_size, size) + 1) if size % d == 0)
    return [records[i] for i in order], dataclasses.replace(val, batch_size=batch, num_batches=size // batch)


def pooled_records(per_task: list[list[dict]], limit: int | None = None) -> list[dict]:
    """The tasks' records interleaved (first of each task, then the second of each, ...), up to ``limit``:
    any prefix holds every task in equal shares, as far as each has records."""
    longest = max((len(r) for r in per_task), default=0)
    pooled = [records[i] for i in range(longest) for records in per_task if i < len(records)]
    return pooled[:limit] if limit is not None else pooled


def pick_targets(catalog, targets: Sequence[str], num_targets: int) -> list[str]:
    """Named targets, else the world's own (an IE world's gate targets), else ``num_targets`` tasks spread
    over task types (the name's prefix)."""
    tasks = sorted(catalog.records)
    if targets:
        unknown = [t for t in targets if t not in tasks]
        if unknown:
            raise EvoMergeInputError(f"setting.targets: unknown task {unknown[0]!r}")
        return list(targets)
    if getattr(catalog, "default_targets", ()):
        return list(catalog.default_targets)
    by_type: dict[str, list[str]] = {}
    for t in tasks:
        by_type.setdefault(t.split("_", 1)[0], []).append(t)
    types = sorted(by_type)
    picked = []
    for i in range(min(num_targets, len(tasks))):
        candidates = by_type[types[i % len(types)]]
        picked.append(candidates[(i // len(types) + 3 * i) % len(candidates)])
    return list(dict.fromkeys(picked))


class OOD(Setting):
    """Each target merges the pool without its own adapter (its siblings stay)."""

    name = "ood"

    def __init__(self, targets: Sequence[str] = (), num_targets: int = 6,
                 pool_sizes: Sequence[int | None] = (), val_sizes: Sequence[int | None] = (),
                 leave_one_out: bool = False):
        self.targets, self.num_targets, self.leave_one_out = tuple(targets), int(num_targets), bool(leave_one_out)
        if self.leave_one_out and self.targets:
            raise EvoMergeInputError("setting.leave_one_out: every task is a target in turn; drop setting.targets")
        self.pool_sizes, self.val_sizes = tuple(pool_sizes), tuple(val_sizes)
        for n in self.pool_sizes:
            if n is not None and n < 1:
                raise EvoMergeInputError(f"setting.pool_sizes: {n} < 1")

    def cells(self, catalog, seed: int) -> list[CellPlan]:
        names, rng, cells = catalog.names, np.random.default_rng(seed), []
        targets = sorted(catalog.records) if self.leave_one_out else pick_targets(catalog, self.targets,
                                                                                   self.num_targets)
        for target in targets:
            own = catalog.own_adapter(target)
            ood_idx = [i for i, n in enumerate(names) if n != own]
            sizes = [len(ood_idx) if n is None else n for n in self.pool_sizes] or [len(ood_idx)]
            for size in dict.fromkeys(sizes):
                if size > len(ood_idx):
                    raise EvoMergeInputError(f"setting.pool_sizes: {size} > the {len(ood_idx)} OOD adapters")
                idx = sorted(rng.choice(ood_idx, size, replace=False).tolist()) if size < len(ood_idx) else ood_idx
                num_val = len(catalog.records[target]["validation"])
                for v in dict.fromkeys(num_val if v is None else v for v in self.val_sizes) or (None,):
                    suffix = (f"@N={size}" if self.pool_sizes else "") + (f"@V={v}" if v is not None else "")
                    cells.append(CellPlan(target, idx, v, suffix))
        return cells


class CrossDomain(OOD):
    """One target that no source was fine-tuned on (Sakana's skill in the other language): the pool is
    every source. The same cells as :class:`OOD`, named for the table's title."""

    name = "cross_domain"


class InDomain(Setting):
    """A pool of experts (and distractors): one multi-task merge, scored on each expert's test set."""

    name = "id"

    def __init__(self, experts: Sequence[str] = (), multitask: bool = True, num_distractors: int = 0,
                 distractor_kinds: Sequence[str] = (), name: str = "id"):
        self.experts, self.multitask = tuple(experts), bool(multitask)
        self.num_distractors, self.distractor_kinds = int(num_distractors), tuple(distractor_kinds)
        self.name = name
        if not self.experts or len(self.experts) > 10:
            raise EvoMergeInputError(f"setting.experts: the {name} setting needs 1 to 10 experts")

    def cells(self, catalog, seed: int) -> list[CellPlan]:
        names, rng = catalog.names, np.random.default_rng(seed)
        missing = [t for t in self.experts if (catalog.own_adapter(t) or t) not in names]
        if missing:
            raise EvoMergeInputError(f"setting.experts: no adapter for task {missing[0]!r}")
        idx = [names.index(catalog.own_adapter(t) or t) for t in self.experts]
        others = [i for i in range(len(names)) if i not in idx]
        if self.distractor_kinds:
            idx += self._of_kinds(names, getattr(catalog, "adapter_kinds", {}), others, rng)
        elif self.num_distractors:
            if self.num_distractors > len(others):
                raise EvoMergeInputError(f"setting.num_distractors: {self.num_distractors} > the {len(others)} "
                                         "adapters outside the experts")
            idx += sorted(rng.choice(others, self.num_distractors, replace=False).tolist())
        if self.multitask:
            return [CellPlan(self.name, idx, tasks=self.experts)]
        return [CellPlan(target, idx) for target in self.experts]

    def _of_kinds(self, names, kinds: dict[str, str], candidates: list[int], rng: np.random.Generator) -> list[int]:
        """The interference adapters of ``distractor_kinds``: all of them, or ``num_distractors`` at random."""
        if not kinds:
            raise EvoMergeInputError("setting.distractor_kinds: the pool's adapters have no kinds (an IE world has "
                                     "them; a merge service's come from world.service.adapter_kinds)")
        picked = [i for i in candidates if kinds.get(names[i]) in self.distractor_kinds]
        if not picked:
            raise EvoMergeInputError(f"setting.distractor_kinds: no adapter of kind {', '.join(self.distractor_kinds)} "
                                     f"outside the experts (kinds: {', '.join(sorted(set(kinds.values())))})")
        if self.num_distractors > len(picked):
            raise EvoMergeInputError(f"setting.num_distractors: {self.num_distractors} > the {len(picked)} adapters "
                                     f"of kind {', '.join(self.distractor_kinds)}")
        if self.num_distractors:
            return sorted(rng.choice(picked, self.num_distractors, replace=False).tolist())
        return picked
