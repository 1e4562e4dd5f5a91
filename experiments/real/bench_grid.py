"""TIES's grid against task arithmetic's on SmolLM2-135M: its cuts per point, and once per cell.

    python experiments/real/bench_grid.py [--adapters 8] [--rows 16] [--tokens 200] [--json out.json]

A random pool of ``--adapters`` rank-8 adapters on all seven projections, ``--rows`` validation rows of about
``--tokens`` tokens (2 batches, by length), and the 2-point grids of the real experiment: TA over
lambda {0.5, 1.0}; TIES over lambda {0.5, 1.0} x density {0.5}, once with every task vector's cut found again at
every point and pass (``module_delta``) and once from the cuts found once per cell (``cut_delta``, what a run
does). A cut is a radix select of the k-th largest magnitude (``sparsifiers.kth_largest``); until this session it
was a sort of every task vector, which made TIES's grid 14x TA's in the real run. Each grid runs
twice in this process: cold (its compiles included) and warm. Prints seconds, and the chosen points' CE (equal).
``--merge-only`` times the streamed merges of the same grids alone (the validation CE, the same for every
method, left out).
"""

from __future__ import annotations

import argparse
import json
import time


def print_ratio(out: dict) -> None:
    """The issue's target, measured in this run: TIES's grid (what a run does) against TA's, within 2x."""
    ties, ta = out["TIES (cuts once per cell)"], out["TA"]
    print(f"TIES / TA: cold {ties['cold_s'] / ta['cold_s']:.2f}x, warm {ties['warm_s'] / ta['warm_s']:.2f}x "
          "(target: within 2x)", flush=True)


def merge_only(args) -> dict:
    """The grids' streamed merges alone: every module's update at every point, without the validation CE."""
    import itertools

    import jax.numpy as jnp

    from evojax_merge.bench.memory import _load
    from evojax_merge.bench.population import random_stack
    from evojax_merge.methods.task_vectors import TaskVectorMerge
    from evojax_merge.search.grid import stream_deltas

    model, _ = _load("smollm2")
    stack = random_stack(model.config, args.adapters, 8, seed=0)
    ta = TaskVectorMerge(None, None, (0.5, 1.0))
    ties = TaskVectorMerge({"_target_": "evojax_merge.merge.sparsifiers.magnitude_prune"},
                           {"_target_": "evojax_merge.merge.consensus.SignElection"}, (0.5, 1.0), (0.5,))
    dtypes = {m: jnp.float32 for m in stack.A}

    def grid(point_delta, axes) -> None:
        for values in itertools.product(*axes.values()):
            for _, d in stream_deltas(stack, point_delta(dict(zip(axes, values, strict=True))), dtypes):
                d.block_until_ready()

    out = {}
    for name, make, method in (("TA", lambda: ta.module_delta, ta),
                               ("TIES (cut per point and pass)", lambda: ties.module_delta, ties),
                               ("TIES (cuts once per cell)", lambda: ties.cut_delta(stack), ties)):
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            grid(make(), method.axes())
            times.append(time.perf_counter() - t0)
        out[name] = {"cold_s": times[0], "warm_s": times[1]}
        print(f"{name:>32}: merges of the 2-point grid ({len(stack.A)} modules x {args.adapters} adapters): "
              f"cold {times[0]:.1f} s, warm {times[1]:.1f} s", flush=True)
    print_ratio(out)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--json", default=None)
    ap.add_argument("--merge-only", action="store_true", help="time the streamed merges alone (no validation CE)")
    args = ap.parse_args(argv)
    if args.merge_only:
        return merge_only(args)
    from evojax_merge.bench.memory import _load, _records
    from evojax_merge.bench.population import random_stack
    from evojax_merge.data.batching import encode_records
    from evojax_merge.methods.task_vectors import TaskVectorMerge
    from evojax_merge.search.fitness import MergeEvaluator, ValidationConfig
    from evojax_merge.search.grid import grid_search, streamed_ce

    model, tok = _load("smollm2")
    stack = random_stack(model.config, args.adapters, 8, seed=0)
    enc = encode_records(_records(args.rows, args.tokens), tok, None, style="llamafactory")
    ev = MergeEvaluator(model, stack, enc.arrays, ValidationConfig(args.rows // 2, 2, by_length=True))
    ta = TaskVectorMerge(None, None, (0.5, 1.0))
    ties = TaskVectorMerge({"_target_": "evojax_merge.merge.sparsifiers.magnitude_prune"},
                           {"_target_": "evojax_merge.merge.consensus.SignElection"}, (0.5, 1.0), (0.5,))
    runs = {"TA": lambda: ta.module_delta, "TIES (cut per point and pass)": lambda: ties.module_delta,
            "TIES (cuts once per cell)": lambda: ties.cut_delta(stack)}
    out = {}
    for name, make in runs.items():
        times, score = [], None
        for _ in range(2):
            t0 = time.perf_counter()
            point = make()
            method = ta if name == "TA" else ties
            res = grid_search(method.axes(), lambda p, point=point: streamed_ce(ev, stack, point(p)), "val_ce")
            times.append(time.perf_counter() - t0)
            score = res.score
        out[name] = {"cold_s": times[0], "warm_s": times[1], "best_ce": score, "params": res.params}
        print(f"{name:>32}: cold {times[0]:7.1f} s, warm {times[1]:7.1f} s, best CE {score:.6f} at {res.params}",
              flush=True)
    print_ratio(out)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
