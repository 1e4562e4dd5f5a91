"""Results as the paper prints them: a table of precision/recall/F1 per method, per target."""

from __future__ import annotations

import json
from pathlib import Path

from evojax_merge.fileio import write_text_atomic


def results_table(results: dict) -> str:
    """A Markdown table: one row per method, one F1 column per target, then the averages."""
    methods = results["methods"]
    targets = sorted({t for m in methods.values() for t in m["per_task"]})
    head = ["method", *targets, "avg P", "avg R", "avg F1"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, res in sorted(methods.items(), key=lambda kv: -kv[1]["f1"]):
        cells = [f"{100 * res['per_task'][t]['f1']:.1f}" if t in res["per_task"] else "" for t in targets]
        avg = [f"{100 * res[k]:.2f}" for k in ("precision", "recall", "f1")]
        rows.append("| " + " | ".join([label, *cells, *avg]) + " |")
    return "\n".join(rows)


def write_results(out_dir: str | Path, results: dict, title: str) -> tuple[Path, Path]:
    """``results.json`` (everything) and ``results.md`` (the table), written atomically."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    write_text_atomic(json_path, json.dumps(results, indent=2, default=float))
    md = f"# {title}\n\nTest F1 (x100) per target; averages of precision, recall and F1.\n\n{results_table(results)}\n"
    write_text_atomic(md_path, md)
    return json_path, md_path
