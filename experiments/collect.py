"""Turn run directories into one paper-style table (mean ± std over seeds/runs per method).

    python experiments/collect.py multirun/ood/2026-11-21_15-00-00      # every results.json below
    python experiments/collect.py outputs/ood/*/ --metric precision --out table.md
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def collect(paths: list[Path], metric: str) -> dict[str, list[float]]:
    """method label -> the metric of every run that has it."""
    scores: dict[str, list[float]] = defaultdict(list)
    for path in paths:
        for result in sorted(Path(path).rglob("results.json")):
            methods = json.loads(result.read_text()).get("methods", {})
            for label, res in methods.items():
                scores[label].append(float(res[metric]))
    return scores


def table(scores: dict[str, list[float]], metric: str) -> str:
    rows = [f"| method | runs | {metric} (x100, mean ± std) |", "|---|---|---|"]
    for label, vals in sorted(scores.items(), key=lambda kv: -np.mean(kv[1])):
        rows.append(f"| {label} | {len(vals)} | {100 * np.mean(vals):.2f} ± {100 * np.std(vals):.2f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", type=Path)
    ap.add_argument("--metric", default="f1", choices=["precision", "recall", "f1"])
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    args = ap.parse_args()
    scores = collect(args.paths, args.metric)
    if not scores:
        raise SystemExit(f"error: no results.json under {', '.join(map(str, args.paths))}")
    text = table(scores, args.metric)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
