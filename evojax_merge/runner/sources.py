"""Experiments on full fine-tunes (Sakana's table, docs/methods.md §4): sources, TA, TIES,
DARE-TIES (grid), PS, DFS and PS+DFS on the target of a :class:`SakanaWorld`, over seeds.

``run_sources_experiment`` returns the shape of ``runner/experiment.py``:
``{"methods": {label: {precision, recall, f1, per_task: {target: cell}}}}``. The target's metric is
exact-match accuracy of the generated answer, so precision = recall = f1 = accuracy (the mean over
seeds); each cell also holds ``accuracy_per_seed``, ``accuracy_std``, ``val_ce`` and the method's
details (genomes, DFS path). Source rows also carry ``own_task_accuracy``.

Train entry point: ``run_sakana(cfg, out_dir)`` (``+experiment=sakana``) writes results.json,
results.md and the found DFS paths as PNGs.
"""

from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.methods.base import MergeMethod, MergeTask, Outcome, SourcesCell
from evojax_merge.models.functional import ParamsModel, greedy_decode
from evojax_merge.models.io import _read_safetensors
from evojax_merge.models.sources import load_sources
from evojax_merge.search.sakana import model_ce, validation_batch
from evojax_merge.zoo.sakana_world import SakanaWorld, accuracy, answer_text, encode

log = logging.getLogger(__name__)


def _no_evaluator(prune: str):
    raise EvoMergeInputError("Sakana methods merge full fine-tunes; they have no LoRA evaluator")


@partial(jax.jit, static_argnums=3)
def _greedy(model, ids, lengths, steps: int):
    # module level: one compile per model structure and shape, shared by every method and seed
    return greedy_decode(model.logits, ids, lengths, steps)


def generate_answers(model, records: list[dict], tokenizer, max_len: int, steps: int = 3) -> list[str]:
    """Greedy answers (cache-free decode) of any model with ``.logits(ids, mask, at)``."""
    enc = encode(records, tokenizer, max_len)
    cols = np.arange(max_len)[None]
    ids = np.where(cols < enc["prompt_len"][:, None], enc["input_ids"], tokenizer.pad_token_id)
    if int(enc["prompt_len"].max()) + steps > max_len:
        raise EvoMergeInputError(f"prompts too long for {steps} generated tokens within max_len={max_len}")
    toks = _greedy(model, jnp.asarray(ids), jnp.asarray(enc["prompt_len"]), steps)
    return answer_text(np.asarray(toks), tokenizer)


def make_cell(world: SakanaWorld, sources: tuple[str, ...] = ("lang", "skill"), val_examples: int | None = None
              ) -> SourcesCell:
    dirs = world.source_dirs
    unknown = [s for s in sources if s not in dirs]
    if unknown:
        raise EvoMergeInputError(f"experiment.sources: unknown source {unknown[0]!r} (have {', '.join(dirs)})")
    stack = load_sources([dirs[s] for s in sources])
    base = {k: jnp.asarray(v) for k, v in _read_safetensors(world.base_dir).items()}
    tok, length = world.tokenizer, world.max_len
    val = encode(world.records(world.target)["validation"][:val_examples], tok, length)
    own = []
    for s in sources:  # a source's own data: its task's training records (validation if it has none)
        splits = world.records(world.own_task[s]) if s in world.own_task else {}
        recs = splits.get("train") or splits.get("validation")
        own.append(encode(recs, tok, length) if recs else None)
    return SourcesCell(stack, base, validation_batch(val), tuple(sources), tuple(own), val)


def _score(model, world: SakanaWorld, task: str, tokenizer, test_examples: int | None) -> float:
    recs = world.records(task)["test"][:test_examples]
    return accuracy(generate_answers(model, recs, tokenizer, world.max_len), recs)


def _summary(per_seed: list[float]) -> dict:
    mean = float(np.mean(per_seed))
    return {"precision": mean, "recall": mean, "f1": mean, "accuracy": mean,
            "accuracy_std": float(np.std(per_seed)), "accuracy_per_seed": [float(a) for a in per_seed]}


def run_sources_experiment(world: SakanaWorld, methods: dict[str, MergeMethod], seeds=(0, 1, 2),
                           test_examples: int | None = None, val_examples: int | None = None,
                           sources: tuple[str, ...] = ("lang", "skill"), progress: bool = False,
                           on_outcome=None) -> dict:
    """Source rows, then every method for every seed, scored on the target's test split."""
    if not seeds:
        raise EvoMergeInputError("experiment.seeds: at least one seed")
    cell = make_cell(world, sources, val_examples)
    tok, target = world.tokenizer, world.target
    results: dict[str, dict] = {}
    rows = {"base": ParamsModel(cell.stack.config, cell.base)}
    rows.update({f"source:{s}": ParamsModel(cell.stack.config, cell.stack.source_params(i))
                 for i, s in enumerate(sources)})
    for label, model in rows.items():
        acc = _score(model, world, target, tok, test_examples)
        ce = float(model_ce(model, cell.batch))
        cellres = {**_summary([acc] * len(seeds)), "val_ce": ce}
        name = label.split(":", 1)[-1]
        if name in world.own_task:
            cellres["own_task"] = world.own_task[name]
            cellres["own_task_accuracy"] = _score(model, world, world.own_task[name], tok, test_examples)
        results[label] = {"per_task": {target: cellres}}
        log.info("%-16s target acc %.3f", label, acc)
    sources_only = {k: v for k, v in results.items() if k.startswith("source:")}
    best = min(sources_only, key=lambda k: sources_only[k]["per_task"][target]["val_ce"])
    results["best_single"] = {"per_task": {target: {**results[best]["per_task"][target], "source": best}}}
    for label, method in methods.items():
        accs, details = [], []
        for seed in seeds:
            t0 = time.perf_counter()
            task = MergeTask(target=target, pool_names=list(cell.stack.names), evaluator_for=_no_evaluator,
                             sources=cell, seed=int(seed), progress=progress)
            out: Outcome = method.run(task)
            search_s = time.perf_counter() - t0
            acc = _score(out.model, world, target, tok, test_examples)
            accs.append(acc)
            details.append({"seed": int(seed), "accuracy": acc, "val_ce": out.val_ce, "search_s": search_s,
                            **out.details})
            if on_outcome is not None:
                on_outcome(label, seed, out)
            log.info("%-16s seed %d target acc %.3f (val CE %.4f, %.1fs)", label, seed, acc, out.val_ce or np.nan,
                     search_s)
        results[label] = {"per_task": {target: {**_summary(accs), "val_ce": float(np.mean([d["val_ce"] for d in
                                                                                            details])),
                                                "seeds": details}}}
    for res in results.values():
        cells = list(res["per_task"].values())
        for key in ("precision", "recall", "f1"):
            res[key] = float(np.mean([c[key] for c in cells]))
    return {"methods": results, "target": target, "sources": [str(d) for d in cell.stack.names],
            "seeds": [int(s) for s in seeds]}


def results_markdown(results: dict) -> str:
    target = results["target"]
    lines = [f"| method | {target} accuracy (mean ± std over seeds) | per seed | own task |", "|---|---|---|---|"]
    for label, res in results["methods"].items():
        c = res["per_task"][target]
        own = f"{c['own_task']}: {100 * c['own_task_accuracy']:.1f}" if "own_task_accuracy" in c else ""
        seeds = ", ".join(f"{100 * a:.1f}" for a in c["accuracy_per_seed"])
        lines.append(f"| {label} | {100 * c['accuracy']:.1f} ± {100 * c['accuracy_std']:.1f} | {seeds} | {own} |")
    return "\n".join(lines)


def seed_cells(results: dict) -> dict[int, dict[str, dict[str, dict]]]:
    """``{seed: {label: {target: report cell}}}`` from the experiment's results (the report's input)."""
    from evojax_merge.runner.seed_runs import report_cell

    target, out = results["target"], {}
    for label, res in results["methods"].items():
        c = res["per_task"][target]
        runs = c.get("seeds") or [{"seed": s, "accuracy": a, "val_ce": c.get("val_ce")}
                                  for s, a in zip(results["seeds"], c["accuracy_per_seed"], strict=True)]
        for d in runs:
            details = {k: v for k, v in d.items() if k not in ("seed", "accuracy", "val_ce", "search_s")}
            out.setdefault(int(d["seed"]), {})[label] = {
                target: report_cell(d["accuracy"], details, d.get("val_ce"), d.get("search_s"))}
    return out


def write_outputs(results: dict, out_dir: Path, config: dict | None = None) -> Path:
    """results.json and results.md, then one run directory per seed (``seeds/``) and the report
    command's REPORT.md with its figures (``report/``); returns REPORT.md."""
    from evojax_merge.fileio import write_text_atomic
    from evojax_merge.runner.seed_runs import build_seed_report, write_seed_runs

    out_dir = Path(out_dir)
    write_text_atomic(out_dir / "results.json", json.dumps(results, indent=2, default=float))
    write_text_atomic(out_dir / "results.md", results_markdown(results) + "\n")
    config = config or {"experiment": {"name": "sakana", "setting": results["target"]}}
    dirs = write_seed_runs(out_dir / "seeds", config, "accuracy", seed_cells(results))
    return build_seed_report(dirs, out_dir / "report")


def run_sakana(cfg, out_dir: Path) -> dict:
    """``+experiment=sakana``: build/reuse the world, instantiate ``experiment.methods``, run, write."""
    from omegaconf import OmegaConf

    from evojax_merge.methods.registry import build_methods
    from evojax_merge.zoo.sakana_world import SakanaModelSpec, SakanaWorldConfig, build_sakana_world

    e = OmegaConf.to_container(cfg.experiment, resolve=True)
    wcfg = dict(e.get("world") or {})
    try:
        model = SakanaModelSpec(**wcfg.pop("model", {}))
        world_cfg = SakanaWorldConfig(model=model, **wcfg)
    except TypeError as err:
        raise EvoMergeInputError(f"experiment.world: {err}") from None
    methods = build_methods(e.get("methods") or {})  # one-line errors naming the method and the key
    rows = e.get("rows")  # the table's method rows, in order (default: every configured method)
    if rows is not None:
        unknown = [r for r in rows if r not in methods]
        if unknown:
            raise EvoMergeInputError(f"experiment.rows: unknown method {unknown[0]!r} "
                                     f"(configured: {', '.join(methods)})")
        methods = {r: methods[r] for r in rows}
    t0 = time.perf_counter()
    cache = e.get("cache_dir") or cfg.get("cache_dir")
    world = build_sakana_world(world_cfg, cache, progress=bool(e.get("progress", False)))
    world_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = run_sources_experiment(world, methods, tuple(e.get("seeds", (0, 1, 2))), e.get("test_examples"),
                                     e.get("val_examples"), tuple(e.get("sources", ("lang", "skill"))),
                                     progress=bool(e.get("progress", False)))
    results["num_layers"] = world_cfg.model.num_hidden_layers
    results["timings"] = {"world_s": world_s, "experiment_s": time.perf_counter() - t0}
    results["world"] = {"root": str(world.root), **world.manifest}
    out_dir.mkdir(parents=True, exist_ok=True)
    report = write_outputs(results, out_dir, OmegaConf.to_container(cfg, resolve=True))
    print(f"\n{e.get('name', 'sakana')} ({results['target']}), test accuracy x100:\n{results_markdown(results)}\n\n"
          f"written to {out_dir}; report: {report}")
    return results
