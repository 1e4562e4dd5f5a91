"""Per-record counts for the test-set bootstrap, read from a run's ``predictions/<task>/<method>.jsonl``.

Each row (evojax_merge/eval/predictions.py) holds the record's ``gold`` answer and the generated
``prediction``. A task's type is the prefix of its name (``ner_news`` -> ``ner``, as the zoo names its
tasks) when that is a declared type (evojax_merge/eval/metrics.py); an IE row's counts are
``ie_counts`` on that one record, ``(tp, predicted items, gold items)``. A task whose name carries no
type is read from the rows: parsed items (``gold_items``, ``predicted_items``) when the writer stored
them, else exact match ``(canonical(prediction) == canonical(gold), 1, 1)``.

The counts must give back the F1 results.json recorded for the cell (to 1e-6): else, or when a file is
missing or unreadable, that method of that run is left out of the bootstrap with a note saying why.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from evojax_merge.eval.metrics import IE_TYPES, TASK_TYPES, canonical, ie_counts
from evojax_merge.eval.predictions import safe_name
from evojax_merge.report.bootstrap import micro_f1

PREDICTIONS = "predictions"
F1_TOLERANCE = 1e-6  # F1 as a fraction


def task_type_of(target: str) -> str | None:
    """The declared type in the task's name (``ner_news`` -> ``ner``), or ``None``."""
    prefix = target.split("_", 1)[0].lower()
    return prefix if prefix in TASK_TYPES else None


def record_counts(rows: Sequence[Mapping], task_type: str | None) -> np.ndarray:
    """``[records, 3]``: ``(tp, predicted, gold)`` per row (see the module docstring)."""
    out = np.zeros((len(rows), 3), np.float64)
    for i, row in enumerate(rows):
        pred, gold = str(row.get("prediction", "")), str(row.get("gold", ""))
        if task_type in IE_TYPES:
            out[i] = ie_counts([pred], [gold], task_type)
        elif task_type is None and "gold_items" in row and "predicted_items" in row:
            p = {tuple(x) for x in row["predicted_items"]}
            g = {tuple(x) for x in row["gold_items"]}
            out[i] = (len(p & g), len(p), len(g))
        else:
            out[i] = (float(canonical(pred) == canonical(gold)), 1.0, 1.0)
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_counts(run_dir: Path, methods: Mapping[str, Mapping], name: str | None = None
               ) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """``({label: {task: counts [R, 3]}}, notes)`` for one run directory's methods (results.json's table);
    ``name`` says which run in the notes (default: the directory's name)."""
    run_dir = Path(run_dir)
    root = run_dir / PREDICTIONS
    who = name or f"`{run_dir.name}`"
    if not root.is_dir():
        return {}, [f"{who}: no {PREDICTIONS}/ directory, so no test-set bootstrap for its methods"]
    out: dict[str, dict[str, np.ndarray]] = {}
    notes: list[str] = []
    for label, res in methods.items():
        tasks: dict[str, np.ndarray] = {}
        for target, cell in res.get("per_task", {}).items():
            path = root / safe_name(target) / f"{safe_name(label)}.jsonl"
            try:
                counts = record_counts(_rows(path), task_type_of(target))
            except (OSError, ValueError, TypeError, AttributeError) as e:
                reason = "missing" if isinstance(e, FileNotFoundError) else f"unreadable ({type(e).__name__})"
                notes.append(f"{who}: `{path.relative_to(run_dir)}` {reason}; `{label}` is left out "
                             "of the bootstrap")
                break
            except Exception as e:  # a gold answer the metric rejects (EvoMergeInputError) and the like
                notes.append(f"{who}: `{path.relative_to(run_dir)}`: {e}; `{label}` is left out "
                             "of the bootstrap")
                break
            recorded = float(cell.get("f1", math.nan))
            got = float(micro_f1(counts.sum(0))) if len(counts) else math.nan
            if not (math.isfinite(got) and abs(got - recorded) <= F1_TOLERANCE):
                notes.append(f"{who}: `{path.relative_to(run_dir)}` gives F1 {100 * got:.2f}, not the "
                             f"recorded {100 * recorded:.2f}; `{label}` is left out of the bootstrap")
                break
            tasks[target] = counts
        else:
            out[label] = tasks
    return out, notes
