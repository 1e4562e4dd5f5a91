"""DAM on the Sakana-style world of full fine-tunes (issue 12's ``zoo/sakana_world.py``).

Sources: ``lang`` (base fine-tuned on language B) and ``skill`` (base fine-tuned on word problems
in language A); target ``skill_b`` (word problems in B), never seen by either. DAM's KL term takes
each source on its own data: ``lang`` on ``lang_b`` text, ``skill`` on ``skill_a`` problems (every
real token, ``positions="all"``). Compared, per seed: DAM, DAM w/o cos, DAM w/o KL (CE on the
target's validation set), the uniform soup, task arithmetic and TIES (λ / density picked on the
target's validation CE), and the base and the two sources alone. Quality: exact-match accuracy of
the greedy answer on the target's test split; cost: wall time and examples forwarded.

    python -m evojax_merge.runner.dam_sakana WORLD_DIR OUT_DIR [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.merge.task_vectors import task_arithmetic, ties
from evojax_merge.methods.dam import DAM
from evojax_merge.models.dam_io import load_full_sources
from evojax_merge.models.functional import greedy_decode, logits_of
from evojax_merge.models.io import load_model, model_weights
from evojax_merge.models.loss import answer_loss
from evojax_merge.runner.dam import results_markdown, summarize, write_plots

SOURCES = ("lang", "skill")


@partial(jax.jit, static_argnums=0)
def _val_ce(cfg, params, data):
    z = logits_of(cfg, params, data["input_ids"], data["attention_mask"], data["answer_pos"])
    return answer_loss(z, data["answer_tgt"], data["answer_mask"])


@partial(jax.jit, static_argnums=(0, 4))
def _decode(cfg, params, ids, lengths, steps):
    return greedy_decode(lambda i, m, a: logits_of(cfg, params, i, m, a), ids, lengths, steps)


def run_dam_sakana(world_dir: str | Path, out_dir: str | Path, seeds=(0, 1, 2), dam_kwargs: dict | None = None,
                   lambdas=(0.5, 0.7, 1.0), densities=(0.5, 0.7, 1.0)) -> dict:
    from evojax_merge.zoo.sakana_world import SakanaWorld, accuracy, answer_text, encode

    root = Path(world_dir)
    if not (root / "manifest.json").is_file():
        raise EvoMergeInputError(f"{root}: not a Sakana world (no manifest.json)")
    world = SakanaWorld(root, json.loads((root / "manifest.json").read_text()))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok, length = world.tokenizer, world.max_len
    model = load_full_sources([world.source_dirs[s] for s in SOURCES], names=SOURCES)
    cfg = model.config
    base = {k: jnp.asarray(v) for k, v in model_weights(load_model(world.base_dir)).items()}
    stacked = model.args["stacked"]
    own = world.own_task
    source_data = []
    for s in SOURCES:
        splits = world.records(own[s])
        recs = splits.get("train") or splits.get("validation")
        source_data.append(encode(recs, tok, length))
    target = world.records(world.target)
    val = {k: jnp.asarray(v) for k, v in encode(target["validation"], tok, length).items()}
    val_np = encode(target["validation"], tok, length)
    test_recs = target["test"]
    test = encode(test_recs, tok, length)
    v_examples = int(val["input_ids"].shape[0])

    def score(params) -> tuple[float, float]:
        ce = float(_val_ce(cfg, params, val))
        toks = _decode(cfg, params, jnp.asarray(test["input_ids"]), jnp.asarray(test["prompt_len"]), 2)
        return ce, accuracy(answer_text(np.asarray(toks), tok), test_recs)

    tv = {k: stacked[k] - base[k][None] for k in stacked}
    kw = {"positions": "all", "max_len": length, **(dam_kwargs or {})}
    dams = {"dam": DAM(name="dam", **kw), "dam_no_cos": DAM(name="dam_no_cos", **{**kw, "lambda_cos": 0.0}),
            "dam_no_kl": DAM(name="dam_no_kl", **{**kw, "objective": "ce"})}
    rows = []
    for seed in seeds:
        def add(name, params, t0, forward, backward=0, details=None, seed=seed):
            wall = time.perf_counter() - t0
            ce, acc = score(params)
            rows.append({"method": name, "target": world.target, "seed": int(seed), "wall_s": wall,
                         "forward_examples": int(forward), "backward_examples": int(backward), "val_ce": ce,
                         "f1": acc, "accuracy": acc, "details": details or {}})
            print(f"seed {seed} {name:12s} val CE {ce:.4f}  test acc {acc:.3f}  {wall:.1f}s  {forward} fwd", flush=True)

        for name, m in dams.items():
            t0 = time.perf_counter()
            if m.objective == "kl":
                outcome, res = m.run_full(model, source_data=source_data, seed=int(seed))
            else:
                outcome, res = m.run_full(model, target_data=val_np, seed=int(seed))
            params = model.merged_weights({k: jnp.asarray(v) for k, v in res.coefficients.items()})
            d = outcome.details
            add(name, params, t0, d["forward_examples"], d["backward_examples"],
                {"history": d["history"], "coefficients": d["coefficients"], "steps": d["steps"]})
        t0 = time.perf_counter()
        add("soup", {k: w.mean(0) for k, w in stacked.items()}, t0, 0)
        grids = (("task_arithmetic", lambda lam, _d: task_arithmetic(tv, lam), [(lam, 1.0) for lam in lambdas]),
                 ("ties", lambda lam, d: ties(tv, d, lam), list(itertools.product(lambdas, densities))))
        for name, fn, grid in grids:
            t0 = time.perf_counter()
            best = None
            for lam, dens in grid:
                params = {k: base[k] + delta for k, delta in fn(lam, dens).items()}
                ce = float(_val_ce(cfg, params, val))
                if best is None or ce < best[0]:
                    best = (ce, params, {"lambda": lam, "density": dens})
            add(name, best[1], t0, len(grid) * v_examples, 0, {"params": best[2]})
        for i, s in enumerate(SOURCES):
            add(f"{s}_alone", {k: w[i] for k, w in stacked.items()}, time.perf_counter(), 0)
        add("base", base, time.perf_counter(), 0)
    summary = summarize(rows)
    results = {"world": str(root), "summary": summary, "rows": rows}
    (out_dir / "dam_sakana_results.json").write_text(json.dumps(results, indent=1, default=float))
    (out_dir / "dam_sakana_results.md").write_text(results_markdown(rows, summary))
    results["plots"] = [str(p) for p in write_plots(rows, summary, out_dir)]
    print(results_markdown(rows, summary))
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("world_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--examples-per-source", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args(argv)
    try:
        run_dam_sakana(args.world_dir, args.out_dir, tuple(args.seeds),
                       {"examples_per_source": args.examples_per_source, "batch_size": args.batch_size,
                        "epochs": args.epochs, "lr": args.lr})
    except EvoMergeInputError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()

