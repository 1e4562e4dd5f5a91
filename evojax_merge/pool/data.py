"""The pool trainer's data: one task (one adapter) per record file, encoded once, batched per step.

- **Tasks.** ``--data`` names record files (``.json``, ``.jsonl``, ``.json.gz``: whatever
  :func:`evojax_merge.data.records.load_records` reads) or directories of them; a task's name is its
  file name without the suffix. Every problem is a one-line :class:`EvoMergeInputError` naming the file.
- **Rows.** Each file is encoded once (:func:`evojax_merge.data.batching.encode_records`: the prompt
  style, answer-only labels, whole few-shot turns dropped to fit ``max_len``) and keeps its rows'
  lengths and answer positions (:func:`evojax_merge.models.loss.answer_targets`).
- **Order.** As transformers' ``Trainer``: every epoch a fresh shuffle (here
  ``default_rng([seed, crc32(task), epoch])``, so a task's order does not depend on which tasks share
  its chunk), batches of ``batch_size`` rows, the last one short; ``ceil(M / B)`` steps an epoch.
- **Batches.** Step i stacks every adapter's batch as ``[N, B, T]``, T the bucket
  (:data:`evojax_merge.data.batching.DEFAULT_BUCKETS`) of the longest row of that step, so at most one
  compile per bucket. Rows that are not there (a short last batch, an adapter whose steps are done) are
  padding with no answer token: they add nothing to the loss ``Σ nll / #answer tokens`` nor to its gradient.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from evojax_merge.data.batching import DEFAULT_BUCKETS, bucket_length, encode_records, special_ids
from evojax_merge.data.records import load_records
from evojax_merge.errors import EvoMergeInputError
from evojax_merge.fileio import file_sha256
from evojax_merge.models.loss import answer_targets

RECORD_SUFFIXES = (".json.gz", ".jsonl", ".json")
STEP_KEYS = ("input_ids", "attention_mask", "answer_pos", "answer_tgt", "answer_mask")


def task_name(path: Path) -> str:
    """``conll04_sample300.json.gz`` -> ``conll04_sample300``."""
    for suffix in RECORD_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def find_task_files(data: Sequence[str | Path]) -> list[Path]:
    """The record files named by ``--data`` (files, or directories of them), sorted by task name."""
    if not data:
        raise EvoMergeInputError("--data: no record files given")
    files: list[Path] = []
    for item in data:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(RECORD_SUFFIXES))
            if not found:
                raise EvoMergeInputError(f"--data: {p}: no record files (.json, .jsonl, .json.gz) in the directory")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise EvoMergeInputError(f"--data: {p}: file not found")
    seen: dict[str, Path] = {}
    for f in files:
        name = task_name(f)
        if name in seen:
            raise EvoMergeInputError(f"--data: {f} and {seen[name]} are both task {name!r}; rename one")
        seen[name] = f
    return [seen[n] for n in sorted(seen)]


@dataclasses.dataclass
class TaskData:
    """One task's encoded rows: ``input_ids``, ``attention_mask``, ``labels`` ``[M, W]`` and their lengths."""

    name: str
    source: Path
    sha256: str
    arrays: dict[str, np.ndarray]
    lengths: np.ndarray  # [M] real tokens of each row
    records_with_dropped_turns: int
    style: str

    @property
    def num_records(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def answer_tokens(self) -> int:
        """The longest answer (scored tokens) of the task."""
        return int((self.arrays["labels"][:, 1:] != -100).sum(1).max(initial=1))


def load_task(path: Path, tokenizer: object, style: str = "auto", max_len: int | None = None,
              loss_on_history: bool = False) -> TaskData:
    """Read, validate and encode one record file (an empty file or list is an error naming it)."""
    records = load_records(path)
    if not records:
        raise EvoMergeInputError(f"{path}: no records")
    enc = encode_records(records, tokenizer, max_len, style=style, loss_on_history=loss_on_history, source=str(path))
    lengths = enc.arrays["attention_mask"].sum(1).astype(np.int32)
    return TaskData(task_name(path), path, file_sha256(path), enc.arrays, lengths, enc.records_with_dropped_turns,
                    enc.style)


def task_seed(seed: int, name: str) -> int:
    """A task's own seed: its data order and (independent init) its LoRA-A draw, whatever its chunk."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


class StepPlan:
    """Which rows each of N adapters reads at each step, and the stacked ``[N, B, T]`` batch of a step.

    Adapter n takes ``total[n] = epochs · ⌈M_n / B⌉`` steps; a chunk runs ``max(total)`` steps and an
    adapter is ``active`` at step i while ``i < total[n]``.
    """

    def __init__(self, tasks: Sequence[TaskData], batch_size: int, epochs: int, seed: int, pad_id: int,
                 answer_width: int | None = None, buckets: Sequence[int] = DEFAULT_BUCKETS):
        self.tasks = list(tasks)
        self.batch_size, self.epochs, self.seed, self.pad_id = int(batch_size), int(epochs), int(seed), int(pad_id)
        self.buckets = tuple(buckets)
        self.per_epoch = np.asarray([math.ceil(t.num_records / self.batch_size) for t in self.tasks], np.int32)
        self.total = self.per_epoch * self.epochs
        self.num_steps = int(self.total.max(initial=0))
        self.answer_width = int(answer_width or max(t.answer_tokens for t in self.tasks))
        self.width = max(int(t.arrays["input_ids"].shape[1]) for t in self.tasks)
        self._answers = [answer_targets(t.arrays["labels"], k=self.answer_width) for t in self.tasks]
        self._orders: dict[tuple[int, int], np.ndarray] = {}

    def _order(self, n: int, epoch: int) -> np.ndarray:
        key = (n, epoch)
        if key not in self._orders:
            rng = np.random.default_rng([task_seed(self.seed, self.tasks[n].name), epoch])
            self._orders[key] = rng.permutation(self.tasks[n].num_records)
        return self._orders[key]

    def rows(self, n: int, step: int) -> np.ndarray:
        """Row indices of adapter n's batch at ``step`` (``-1``: padding)."""
        out = np.full(self.batch_size, -1, np.int64)
        if step >= self.total[n]:
            return out
        epoch, j = divmod(step, int(self.per_epoch[n]))
        picked = self._order(n, epoch)[j * self.batch_size: (j + 1) * self.batch_size]
        out[: len(picked)] = picked
        return out

    def active(self, step: int) -> np.ndarray:
        return step < self.total

    def batch(self, step: int) -> tuple[dict[str, np.ndarray], int]:
        """``(arrays [N, B, ·], real tokens)`` of ``step``; T is the bucket of its longest row."""
        picks = [self.rows(n, step) for n in range(len(self.tasks))]
        longest = max((int(t.lengths[r[r >= 0]].max(initial=1)) for t, r in zip(self.tasks, picks, strict=True)),
                      default=1)
        length = bucket_length(longest, self.buckets, max_len=self.width)
        n, b, k = len(self.tasks), self.batch_size, self.answer_width
        out = {"input_ids": np.full((n, b, length), self.pad_id, np.int32),
               "attention_mask": np.zeros((n, b, length), np.int32),
               "answer_pos": np.zeros((n, b, k), np.int32), "answer_tgt": np.zeros((n, b, k), np.int32),
               "answer_mask": np.zeros((n, b, k), bool)}
        tokens = 0
        for i, (task, rows) in enumerate(zip(self.tasks, picks, strict=True)):
            real = np.flatnonzero(rows >= 0)
            if not len(real):
                continue
            idx = rows[real]
            w = min(length, task.arrays["input_ids"].shape[1])
            out["input_ids"][i, real, :w] = task.arrays["input_ids"][idx, :w]
            out["attention_mask"][i, real, :w] = task.arrays["attention_mask"][idx, :w]
            for key in ("answer_pos", "answer_tgt", "answer_mask"):
                out[key][i, real] = self._answers[i][key][idx]
            tokens += int(task.lengths[idx].sum())
        return out, tokens


def pad_id_of(tokenizer: object) -> int:
    return special_ids(tokenizer)[0]


def describe(tasks: Sequence[TaskData]) -> list[Mapping[str, object]]:
    """Per task: name, file, records, longest row, records that lost few-shot turns."""
    return [{"task": t.name, "file": str(t.source), "records": t.num_records, "longest_row": int(t.lengths.max()),
             "records_with_dropped_turns": t.records_with_dropped_turns} for t in tasks]
