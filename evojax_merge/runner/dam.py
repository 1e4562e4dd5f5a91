"""``+experiment=dam_lora``: DAM and its variants against soup, TA, TIES and Evo-Merging, quality vs cost.

For every target (OOD pool: everything but the target's own adapter) and every seed, each method
runs on the same validation set and is scored on the target's test split. Cost is measured two
ways: wall time, and the number of examples pushed through a forward pass (a backward counted
apart), so a gradient method and a black-box search can be put on one axis.

    run_dam(cfg, out_dir)  ->  results dict; writes dam_results.json, dam_results.md, one run directory
    per seed (seeds/) and the report command's REPORT.md with its figures (report/)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.data.batching import encode_examples
from evojax_merge.errors import EvoMergeInputError
from evojax_merge.eval.evaluate import generate_for_population, score
from evojax_merge.methods.base import MergeTask
from evojax_merge.models.delta import fold_into_params
from evojax_merge.runner.experiment import pick_targets
from evojax_merge.runner.seed_runs import build_seed_report, report_cell, write_seed_runs
from evojax_merge.search.fitness import MergeEvaluator, ValidationConfig

log = logging.getLogger(__name__)


class CountingEvaluator:
    """A MergeEvaluator that counts the examples it forwards (explicit calls; traced searches apart)."""

    def __init__(self, inner: MergeEvaluator):
        self._inner = inner
        self.examples = 0

    @property
    def per_candidate(self) -> int:
        return int(self._inner.num_batches * self._inner.batch_size)

    def evaluate(self, alpha, beta, generation: int = 0):
        self.examples += int(np.asarray(alpha).shape[0]) * self.per_candidate
        return self._inner.evaluate(alpha, beta, generation)

    def evaluate_dense(self, delta, adapter=None, generation: int = 0):
        self.examples += self.per_candidate
        return self._inner.evaluate_dense(delta, adapter, generation)

    def evaluate_adapter(self, adapter, generation: int = 0):
        self.examples += self.per_candidate
        return self._inner.evaluate_adapter(adapter, generation)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _search_examples(outcome, per_candidate: int, population: int) -> int:
    """Examples forwarded inside traced CMA-ES stages: (x0 + population × generations) per stage."""
    if outcome.search is None:
        return 0
    return sum((1 + population * len(st.history)) * per_candidate for st in outcome.search.stages)


def _test_texts(world, records, outcomes, spec) -> list[list[str]]:
    """Greedy answers of every outcome: adapters batched by rank, dense deltas folded one by one."""
    texts: dict[int, list[str]] = {}
    by_rank: dict[int, list[int]] = {}
    for i, o in enumerate(outcomes):
        if o.adapter is not None:
            by_rank.setdefault(int(next(iter(o.adapter.A.values())).shape[0]), []).append(i)
    for idx in by_rank.values():
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[outcomes[i].adapter for i in idx])
        outs = generate_for_population(world.model, world.tokenizer, stacked, records, spec.max_len,
                                       spec.max_new_tokens)
        texts.update(zip(idx, outs, strict=True))
    from flax import nnx

    graphdef, params = nnx.split(world.model)
    for i, o in enumerate(outcomes):
        if i in texts:
            continue
        model = world.model if o.delta is None else nnx.merge(graphdef, fold_into_params(params, o.delta))
        texts[i] = generate_for_population(model, world.tokenizer, None, records, spec.max_len,
                                           spec.max_new_tokens)[0]
    return [texts[i] for i in range(len(outcomes))]


def run_dam_cells(world, spec, validation: ValidationConfig, methods: dict, seeds,
                  population_chunk="auto") -> list[dict]:
    """One row per (target, seed, method): test scores, validation CE, wall time, forward counts.

    ``methods``: ``{label: MergeMethod}`` from the registry. A method that counts its own forward
    passes (DAM) reports them in ``details``; for the others the evaluator counts the explicit calls
    and the traced CMA-ES generations are added (x0 plus population x generations per stage)."""
    rows: list[dict] = []
    for target in pick_targets(world.records, spec):
        own = world.own_adapter(target)
        pool = world.pool.subset([i for i, n in enumerate(world.pool.names) if n != own])
        examples = encode_examples(world.records[target]["validation"], world.tokenizer, max_len=spec.max_len)
        test_records = world.records[target]["test"][: spec.test_examples]
        for seed in seeds:
            val = dataclasses.replace(validation, seed=int(seed))
            inner = MergeEvaluator(world.model, pool.stack, examples, val, population_chunk=population_chunk)
            outcomes, meta = [], []
            for name, method in methods.items():
                ev = CountingEvaluator(inner)
                task = MergeTask(target, list(pool.names), lambda _prune, ev=ev: ev, stack=pool.stack, world=world,
                                 seed=int(seed), progress=False)
                t0 = time.perf_counter()
                o = method.run(task)
                wall = time.perf_counter() - t0
                if "forward_examples" in o.details:
                    forward, backward = o.details["forward_examples"], o.details["backward_examples"]
                else:
                    population = getattr(getattr(method, "config", None), "population_size", 0)
                    forward, backward = ev.examples + _search_examples(o, ev.per_candidate, population), 0
                outcomes.append(o)
                val_ce = o.val_ce if o.val_ce is not None else o.val_fitness
                meta.append({"method": name, "target": target, "seed": int(seed), "wall_s": wall,
                             "forward_examples": int(forward), "backward_examples": int(backward),
                             "val_ce": None if val_ce is None else float(val_ce),
                             "details": {k: v for k, v in o.details.items() if k in ("history", "coefficients",
                                                                                     "steps", "params", "sources")}})
                log.info("dam experiment: %s %s seed %d: val %.4f, %.1fs", target, name, seed,
                         meta[-1]["val_ce"] or float("nan"), wall)
            texts = _test_texts(world, test_records, outcomes, spec)
            for m, t in zip(meta, texts, strict=True):
                m.update(score(t, test_records, world.task_type(target)))
                rows.append(m)
    return rows


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Per method: mean ± std over (target, seed) of F1, val CE, wall time and forward examples."""
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == name]
        stats = {}
        for key in ("f1", "val_ce", "wall_s", "forward_examples", "backward_examples"):
            vals = np.asarray([r[key] for r in mine if r.get(key) is not None], float)
            stats[key] = {"mean": float(vals.mean()) if vals.size else None,
                          "std": float(vals.std()) if vals.size else None}
        stats["cells"] = len(mine)
        out[name] = stats
    return out


def results_markdown(rows: list[dict], summary: dict) -> str:
    lines = ["| method | F1 x100 | val CE | wall s | forward examples | backward examples | cells |",
             "|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {100 * s['f1']['mean']:.1f} ± {100 * s['f1']['std']:.1f} | "
                     f"{s['val_ce']['mean']:.4f} | {s['wall_s']['mean']:.2f} | {s['forward_examples']['mean']:.0f} | "
                     f"{s['backward_examples']['mean']:.0f} | {s['cells']} |")
    lines += ["", "| target | seed | method | F1 x100 | val CE | wall s | forward ex. |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['seed']} | {r['method']} | {100 * r['f1']:.1f} | "
                     f"{r['val_ce'] if r['val_ce'] is None else round(r['val_ce'], 4)} | {r['wall_s']:.2f} | "
                     f"{r['forward_examples']} |")
    return "\n".join(lines) + "\n"


def run_dam(cfg, out_dir: str | Path) -> dict:
    """The whole experiment from a composed Hydra config (``+experiment=dam_lora``)."""
    from omegaconf import OmegaConf

    from evojax_merge.train import experiment_spec, load_world, methods_from_config, validate

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    validate(cfg)
    if "dam" not in cfg:
        raise EvoMergeInputError("dam: the config needs the dam block (+experiment=dam_lora)")
    spec, built = experiment_spec(cfg), methods_from_config(cfg)
    if spec.setting != "ood":
        raise EvoMergeInputError(f"experiment.setting: the dam experiment runs the ood setting, not {spec.setting!r}")
    validation = ValidationConfig(**OmegaConf.to_container(cfg.data.validation, resolve=True))
    unknown = [m for m in cfg.dam.methods if m not in built]
    if unknown:
        raise EvoMergeInputError(f"dam.methods: unknown method {unknown[0]!r} (configured: {', '.join(built)})")
    methods = {name: built[name] for name in cfg.dam.methods}
    for m in methods.values():
        if hasattr(m, "max_len") and spec.max_len is not None:
            m.max_len = spec.max_len
    seeds = list(cfg.dam.seeds)
    t0 = time.perf_counter()
    world = load_world(cfg)
    world_s = time.perf_counter() - t0
    rows = run_dam_cells(world, spec, validation, methods, seeds, cfg.population_chunk)
    summary = summarize(rows)
    results = {"summary": summary, "rows": rows, "timings": {"world_s": world_s,
                                                              "experiment_s": time.perf_counter() - t0 - world_s},
               "config": OmegaConf.to_container(cfg, resolve=True)}
    (out_dir / "dam_results.json").write_text(json.dumps(results, indent=1, default=float))
    (out_dir / "dam_results.md").write_text(results_markdown(rows, summary))
    dirs = write_seed_runs(out_dir / "seeds", results["config"], "F1", seed_cells(rows))
    results["report"] = str(build_seed_report(dirs, out_dir / "report"))
    print(f"{results_markdown(rows, summary)}\n\nreport: {results['report']}")
    return results


def seed_cells(rows: list[dict]) -> dict[int, dict[str, dict[str, dict]]]:
    """``{seed: {method: {target: report cell}}}`` from the experiment's rows (the report's input)."""
    cells: dict[int, dict[str, dict[str, dict]]] = {}
    for r in rows:
        details = {**r["details"], **{k: r[k] for k in ("forward_examples", "backward_examples")}}
        cell = report_cell(r["f1"], details, r["val_ce"], r["wall_s"])
        cell.update(precision=r.get("precision", r["f1"]), recall=r.get("recall", r["f1"]))
        cells.setdefault(r["seed"], {}).setdefault(r["method"], {})[r["target"]] = cell
    return cells


def main(argv: list[str] | None = None) -> None:
    """``python -m evojax_merge.runner.dam OUT_DIR [hydra overrides]`` (defaults: +experiment=dam_lora)."""
    import sys

    from hydra import compose, initialize_config_dir

    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit("usage: python -m evojax_merge.runner.dam OUT_DIR [overrides...]")
    conf = str(Path(__file__).resolve().parents[2] / "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=dam_lora", *argv[1:]])
    try:
        run_dam(cfg, argv[0])
    except EvoMergeInputError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
