"""``result.json``: the answer of a search, written atomically.

Floats are written by Python's ``repr`` (shortest round-trip), so a float32 genome read back and cast
to float32 is bit-identical to the one searched. Histories keep unfinished rows as ``null``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from evojax_merge.fileio import write_text_atomic
from evojax_merge.search.cmaes import HISTORY_COLUMNS, StageResult


def _floats(x) -> Any:
    """Arrays -> nested lists of Python floats, NaN/inf -> None (JSON has no NaN)."""
    arr = np.asarray(x, np.float64)
    if arr.ndim == 0:
        v = float(arr)
        return v if math.isfinite(v) else None
    return [_floats(row) for row in arr]


def generations_done(stage: StageResult) -> int:
    """Rows of the history that were filled in (a row is written after each generation)."""
    history = np.asarray(stage.history)
    return int((~np.isnan(history).all(axis=1)).sum()) if history.size else 0


def stage_record(stage: StageResult) -> dict:
    return {"name": stage.name, "best_genome": _floats(stage.best_genome), "best_fitness": _floats(stage.best_fitness),
            "generations_done": generations_done(stage), "history_columns": list(HISTORY_COLUMNS),
            "history": _floats(stage.history)}


def search_result_record(result: Any, **extra: Any) -> dict:
    """The JSON record of a ``MergeSearchResult`` (anything with method, alpha, beta, best_genome,
    best_fitness and stages). ``extra`` (seed, config, timings, ...) is merged in at the top level."""
    record = {
        "method": result.method,
        "best_genome": _floats(result.best_genome),
        "best_fitness": _floats(result.best_fitness),
        "generations_done": sum(generations_done(s) for s in result.stages),
        "alpha": _floats(result.alpha),
        "beta": _floats(result.beta),
        "stages": [stage_record(s) for s in result.stages],
    }
    record.update(extra)
    return record


def write_json_atomic(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as JSON atomically (see :func:`evojax_merge.fileio.write_text_atomic`), then make
    the rename itself durable."""
    path = write_text_atomic(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def write_result(path: str | Path, result: Any, **extra: Any) -> Path:
    """``result.json`` for a search result; only JAX process 0 writes in a multi-host job."""
    import jax

    if jax.process_index() != 0:
        return Path(path)
    return write_json_atomic(path, search_result_record(result, **extra))


def read_result(path: str | Path) -> dict:
    """The record, with ``best_genome`` as a float32 array (bit-identical to what was searched)."""
    record = json.loads(Path(path).read_text())
    record["best_genome"] = np.asarray(record["best_genome"], np.float32)
    return record
