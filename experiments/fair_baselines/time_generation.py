"""Seconds per generation of Sakana PS and DFS on the fair world (issue 23, item 6), to size their budgets.

    nice -n 19 python experiments/fair_baselines/time_generation.py --val 64 128 --json timing.json

Builds (or reuses) the Sakana world with a 1024-record validation split and a 512-problem test split
(``+experiment=sakana_fair``'s ``world.build``), then times one stage of each search at the paper's
population (PS 16, DFS 128 with r = 3 and no path cap) for 1 and for 1 + ``--extra`` generations; the
difference over ``--extra`` is one generation without the compile.
"""

from __future__ import annotations

import argparse
import json
import time

from evojax_merge.search.sakana import DFSConfig, PSConfig, dfs_search, ps_search
from evojax_merge.world.specs import OpenContext, SakanaWorld

BUILD = {"validation": 1024, "test": 512}


def _search(name: str, cell, generations: int) -> float:
    """Seconds of one search stage at the paper's population (no checkpoints)."""
    t0 = time.perf_counter()
    if name == "ps":
        ps_search(cell.stack, cell.base, cell.batch, PSConfig(population_size=16, generations=generations))
    else:
        dfs_search(cell.stack, cell.batch, DFSConfig(population_size=128, generations=generations, repeats=3,
                                                     start_source=1))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--val", type=int, nargs="+", default=[64])
    ap.add_argument("--extra", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    for v in args.val:
        backend = SakanaWorld(BUILD, val_examples=v).open(OpenContext(cache_dir=None, progress=False))
        cell = backend.sources_cell()
        for name, population in (("ps", 16), ("dfs", 128)):
            first = _search(name, cell, 1)
            per_gen = (_search(name, cell, 1 + args.extra) - first) / args.extra
            row = {"search": name, "val_examples": v, "population": population, "first_s": round(first, 2),
                   "per_generation_s": round(per_gen, 3), "per_trial_ms": round(1000 * per_gen / population, 2)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
