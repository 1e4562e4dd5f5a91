"""Pure checks of request contents against the server's limits and the genome layout.

Each check raises :class:`FieldError` naming the offending field (``alpha[3]``,
``records[2].instruction``); the route turns it into a 422 before anything is changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from evojax_merge.data.records import validate_record
from evojax_merge.errors import EvoMergeInputError
from evojax_merge.search.genome import check_population


class FieldError(Exception):
    """A request field that breaks a rule: ``field`` names it, ``message`` says how."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status


def check_population_field(rows: Sequence[Sequence[float]], length: int, bounds: tuple[float, float],
                           max_rows: int, name: str) -> np.ndarray:
    """``[P, length]`` float32 candidates: 1 <= P <= max_rows, finite, within ``bounds``."""
    if len(rows) == 0:
        raise FieldError(name, "empty population")
    if len(rows) > max_rows:
        raise FieldError(name, f"population size {len(rows)} exceeds the maximum {max_rows}")
    for i, row in enumerate(rows):
        if len(row) != length:
            raise FieldError(f"{name}[{i}]", f"length {len(row)}, the genome layout needs {length}")
    try:
        return check_population(np.asarray(rows, np.float64), length, *bounds, name=name)
    except EvoMergeInputError as e:
        raise FieldError(name, str(e).removeprefix(f"{name}: ")) from None


def check_vector_field(values: Sequence[float], length: int, bounds: tuple[float, float], name: str) -> np.ndarray:
    """One ``[length]`` float32 control vector, finite and within ``bounds``."""
    if len(values) != length:
        raise FieldError(name, f"length {len(values)}, the genome layout needs {length}")
    return check_population_field([values], length, bounds, 1, name)[0]


def _check_text_lengths(record: Mapping, max_chars: int, where: str) -> None:
    for key in ("instruction", "input", "output"):
        value = record.get(key)
        if isinstance(value, str) and len(value) > max_chars:
            raise FieldError(f"{where}.{key}", f"{len(value)} characters, the limit is {max_chars}")
    for j, turn in enumerate(record.get("history") or []):
        if isinstance(turn, (list, tuple)) and any(isinstance(t, str) and len(t) > max_chars for t in turn):
            raise FieldError(f"{where}.history[{j}]", f"a turn is over the limit of {max_chars} characters")


def check_records(records: Sequence[object], max_records: int, max_chars: int, name: str = "records") -> list[dict]:
    """Validated alpaca records (``data.records.validate_record``) within the count and size limits."""
    if len(records) == 0:
        raise FieldError(name, "no records")
    if len(records) > max_records:
        raise FieldError(name, f"{len(records)} records exceed the limit of {max_records}")
    out = []
    for i, record in enumerate(records):
        where = f"{name}[{i}]"
        try:
            checked = validate_record(record, where)
        except EvoMergeInputError as e:
            raise FieldError(where, str(e).removeprefix(f"{where}: ")) from None
        _check_text_lengths(checked, max_chars, where)
        out.append(checked)
    return out


def check_prompts(prompts: Sequence[str | Mapping], max_prompts: int, max_chars: int) -> list[dict]:
    """Prompt records (a string is an instruction); ``output`` is not needed and is ignored."""
    if len(prompts) == 0:
        raise FieldError("prompts", "no prompts")
    if len(prompts) > max_prompts:
        raise FieldError("prompts", f"{len(prompts)} prompts exceed the limit of {max_prompts}")
    records = []
    for p in prompts:
        if isinstance(p, str):
            records.append({"instruction": p, "output": ""})
        else:
            records.append({"output": "", **p} if isinstance(p, Mapping) else p)
    return check_records(records, max_prompts, max_chars, name="prompts")


def check_max_len(requested: int | None, limit: int, name: str = "max_len") -> int:
    """The session's tokens per example: the request's value, at most ``limit``."""
    if requested is None:
        return limit
    if requested > limit:
        raise FieldError(name, f"{requested} exceeds the server's limit of {limit}")
    return requested


def check_adapter_names(names: Sequence[str] | None, pool_names: Sequence[str], name: str = "adapters") -> list[int]:
    """Indices of the requested adapters in the pool (all of them by default), no repeats."""
    if names is None:
        return list(range(len(pool_names)))
    if not names:
        raise FieldError(name, "empty adapter list")
    index = {n: i for i, n in enumerate(pool_names)}
    out = []
    for j, n in enumerate(names):
        if n not in index:
            raise FieldError(f"{name}[{j}]", f"the pool has no adapter named {n!r}")
        out.append(index[n])
    if len(set(out)) != len(out):
        raise FieldError(name, "an adapter is named twice")
    return out


def finite_or_none(values: np.ndarray) -> list[float | None]:
    """Floats for JSON: a non-finite loss becomes null (JSON has no NaN)."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, np.float64)]
