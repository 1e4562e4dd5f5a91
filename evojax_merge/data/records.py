"""Alpaca-style records on disk: load with one-line validation errors, save atomically.

A record is ``{"instruction": str, "input": str (optional), "output": str, "history":
[[user, assistant], ...] (optional)}``; other keys are kept as they are. Files are ``.json``
(one list of records) or ``.jsonl`` (one record per line, blank lines skipped), read also
gzip-compressed (``.json.gz``, ``.jsonl.gz``, as the authors' IE sets are distributed); a
corrupt or truncated ``.gz`` is a one-line error naming the file.

Every problem raises :class:`~evojax_merge.errors.EvoMergeInputError` with a single line that
names the file, the record (index, and line for ``.jsonl``) and what is wrong.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.fileio import write_text_atomic

REQUIRED_FIELDS = ("instruction", "output")
STRING_FIELDS = ("instruction", "input", "output")
SUFFIXES = (".json", ".jsonl")  # written by save_records
READ_SUFFIXES = (*SUFFIXES, ".json.gz", ".jsonl.gz")  # read by load_records


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(where: str, what: str) -> EvoMergeInputError:
    return EvoMergeInputError(_one_line(f"{where}: {what}"))


def validate_record(record: object, where: str) -> dict:
    """Check one record; return a normalized copy (``input`` defaults to ``""``).

    ``where`` prefixes the error message, e.g. ``"data.jsonl: record 3 (line 4)"``.
    """
    if not isinstance(record, Mapping):
        raise _fail(where, f"expected an object with instruction/output, got {type(record).__name__}")
    for key in REQUIRED_FIELDS:
        if key not in record:
            raise _fail(where, f"missing required field {key!r}")
    for key in STRING_FIELDS:
        if key in record and not isinstance(record[key], str):
            raise _fail(where, f"field {key!r} must be a string, got {type(record[key]).__name__}")
    out = dict(record)
    out.setdefault("input", "")
    if "history" in record:
        history = record["history"]
        if not isinstance(history, list):
            raise _fail(
                where, f"'history' must be a list of [user, assistant] pairs, got {type(history).__name__}"
            )
        for j, turn in enumerate(history):
            if not (
                isinstance(turn, (list, tuple))
                and len(turn) == 2
                and all(isinstance(x, str) for x in turn)
            ):
                raise _fail(where, f"history[{j}] must be a [user, assistant] pair of strings")
        out["history"] = [list(turn) for turn in history]
    return out


def validate_records(records: Iterable[object], source: str = "<records>") -> list[dict]:
    """Validate in-memory records (the same checks as :func:`load_records`)."""
    out = [validate_record(r, f"{source}: record {i}") for i, r in enumerate(records)]
    if not out:
        raise _fail(source, "no records")
    return out


def record_format(path: str | os.PathLike[str]) -> tuple[str, bool]:
    """``(".json" or ".jsonl", gzip-compressed)`` of a record file name; anything else is an error naming it."""
    name = Path(path).name
    gz = name.endswith(".gz")
    suffix = Path(name[:-3] if gz else name).suffix
    if suffix not in SUFFIXES:
        raise _fail(str(path), f"unsupported file type {''.join(Path(name).suffixes[-2:]) or name!r}; use "
                    f"{', '.join(READ_SUFFIXES)}")
    return suffix, gz


def _read_text(p: Path, gz: bool) -> str:
    if not gz:
        try:
            return p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise _fail(str(p), f"cannot read file: {err}") from None
    try:
        with gzip.open(p, "rt", encoding="utf-8") as f:
            return f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise _fail(str(p), f"corrupt gzip file: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise _fail(str(p), f"cannot read file: {err}") from None


def load_records(path: str | os.PathLike[str]) -> list[dict]:
    """Read and validate the records of a ``.json`` or ``.jsonl`` file, plain or gzip-compressed (``.gz``)."""
    p = Path(path)
    suffix, gz = record_format(p)
    if not p.is_file():
        raise _fail(str(p), "file not found")
    text = _read_text(p, gz)
    if not text.strip():
        raise _fail(str(p), "file is empty")
    return _parse_jsonl(text, p) if suffix == ".jsonl" else _parse_json(text, p)


# json's messages that end in a dangling "at" (the position goes in the prefix) or say little
_JSON_WHAT = {
    "unterminated string starting at": "unterminated string: no closing quote",
    "invalid control character at": "invalid control character: a raw tab or line break inside a string",
    "extra data": "extra data after the JSON value",
    "expecting value": "expected a value",
    "expecting property name enclosed in double quotes": "expected a key in double quotes",
}


def _json_error(where: str, err: json.JSONDecodeError) -> EvoMergeInputError:
    """One complete line: ``where: line L, column C: what is wrong (invalid JSON)``."""
    msg = _one_line(err.msg).rstrip(": ")
    what = _JSON_WHAT.get(msg.lower())
    if msg.lower() == "invalid control character at" and err.doc[err.pos: err.pos + 1] in ("\n", "\r"):
        what = "line break inside a string, perhaps a missing closing quote"
    if what is None:
        for tail in (" starting at", " at"):
            if msg.endswith(tail):
                msg = msg[: -len(tail)]
                break
        what = msg[:1].lower() + msg[1:]
        if what.startswith("expecting "):
            what = "expected " + what[len("expecting "):]
    return _fail(where, f"{what} (invalid JSON)")


def _parse_json(text: str, p: Path) -> list[dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise _json_error(f"{p}: line {err.lineno}, column {err.colno}", err) from None
    if not isinstance(data, list):
        raise _fail(str(p), f"expected a JSON list of records, got {type(data).__name__}")
    return validate_records(data, str(p))


def _parse_jsonl(text: str, p: Path) -> list[dict]:
    out: list[dict] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{p}: record {len(out)} (line {lineno})"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise _json_error(f"{p}: line {lineno}, column {err.colno} (record {len(out)})", err) from None
        out.append(validate_record(record, where))
    return out


def save_records(path: str | os.PathLike[str], records: Iterable[Mapping[str, object]]) -> Path:
    """Validate and write ``records`` as ``.json`` or ``.jsonl``, atomically.

    The data goes to a temporary file in the target folder, is flushed and fsync-ed, then
    ``os.replace``-d over ``path``: a reader sees the old file or the new one, never half of one,
    and a failure leaves no temporary file behind.
    """
    p = Path(path)
    if p.suffix not in SUFFIXES:
        raise _fail(str(p), f"unsupported file type {p.suffix!r}; use .json or .jsonl")
    checked = validate_records(list(records), str(p))
    if p.suffix == ".jsonl":
        payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in checked)
    else:
        payload = json.dumps(checked, ensure_ascii=False, indent=1) + "\n"
    return write_text_atomic(p, payload)
