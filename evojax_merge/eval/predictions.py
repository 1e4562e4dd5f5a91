"""Per-example test predictions next to their gold answers: ``predictions/<target>/<method>.jsonl``.

One JSON line per test record: its index, instruction, input, gold answer, the generated text,
and (for an IE type) the items each side parsed to and how many matched, so a zero score can be
read off the file instead of debugged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from evojax_merge.eval.metrics import IE_TYPES, parse_gold, parse_output
from evojax_merge.fileio import write_text_atomic


def safe_name(label: str) -> str:
    """A method label as a file name: letters, digits and ``-_.@=`` kept, the rest ``_``."""
    return "".join(ch if ch.isalnum() or ch in "-_.@=" else "_" for ch in label)


def prediction_rows(records: Sequence[Mapping[str, object]], texts: Sequence[str],
                    task_type: str | None = None) -> list[dict]:
    """The rows of one predictions file (see the module docstring)."""
    if len(records) != len(texts):
        raise ValueError(f"{len(texts)} predictions for {len(records)} records")
    rows = []
    for i, (record, text) in enumerate(zip(records, texts, strict=True)):
        row = {"index": i, "instruction": record.get("instruction", ""), "input": record.get("input", ""),
               "gold": str(record.get("output", record.get("answer", ""))).strip(), "prediction": text}
        if task_type in IE_TYPES:
            gold, pred = parse_gold(row["gold"], task_type), parse_output(text, task_type)
            row |= {"gold_items": sorted(map(list, gold)), "predicted_items": sorted(map(list, pred)),
                    "matched": len(gold & pred)}
        rows.append(row)
    return rows


def write_predictions(out_dir: str | Path, target: str, method: str, records: Sequence[Mapping[str, object]],
                      texts: Sequence[str], task_type: str | None = None) -> Path:
    """Write ``<out_dir>/<target>/<method>.jsonl`` atomically; returns its path."""
    rows = prediction_rows(records, texts, task_type)
    path = Path(out_dir) / safe_name(target) / f"{safe_name(method)}.jsonl"
    return write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
