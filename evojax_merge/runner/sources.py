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

import dataclasses
import json
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.merge.sakana_ps import Params
from evojax_merge.methods.base import MergeMethod, MergeTask, Outcome
from evojax_merge.models.functional import ParamsModel, greedy_decode
from evojax_merge.models.io import _read_safetensors
from evojax_merge.models.sources import SourceStack, load_sources
from evojax_merge.search.sakana import _ce, validation_batch
from evojax_merge.zoo.sakana_world import SakanaWorld, accuracy, answer_text, encode

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SourcesCell:
    """What a Sakana method sees as ``MergeTask.world``: stacked sources, base, validation batch."""

    stack: SourceStack
    base: Params
    batch: dict
    labels: tuple[str, ...]  # short names of the sources ("lang", "skill")


def _no_evaluator(prune: str):
    raise EvoMergeInputError("Sakana methods merge full fine-tunes; they have no LoRA evaluator")


def generate_answers(model, records: list[dict], tokenizer, max_len: int, steps: int = 3) -> list[str]:
    """Greedy answers (cache-free decode) of any model with ``.logits(ids, mask, at)``."""
    enc = encode(records, tokenizer, max_len)
    cols = np.arange(max_len)[None]
    ids = np.where(cols < enc["prompt_len"][:, None], enc["input_ids"], tokenizer.pad_token_id)
    if int(enc["prompt_len"].max()) + steps > max_len:
        raise EvoMergeInputError(f"prompts too long for {steps} generated tokens within max_len={max_len}")
    fn = jax.jit(lambda m, i, n: greedy_decode(m.logits, i, n, steps))
    toks = fn(model, jnp.asarray(ids), jnp.asarray(enc["prompt_len"]))
    return answer_text(np.asarray(toks), tokenizer)


def make_cell(world: SakanaWorld, sources: tuple[str, ...] = ("lang", "skill"), val_examples: int | None = None
              ) -> SourcesCell:
    dirs = world.source_dirs
    unknown = [s for s in sources if s not in dirs]
    if unknown:
        raise EvoMergeInputError(f"experiment.sources: unknown source {unknown[0]!r} (have {', '.join(dirs)})")
    stack = load_sources([dirs[s] for s in sources])
    base = {k: jnp.asarray(v) for k, v in _read_safetensors(world.base_dir).items()}
    val = world.records(world.target)["validation"][:val_examples]
    return SourcesCell(stack, base, validation_batch(encode(val, world.tokenizer, world.max_len)), tuple(sources))


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
        ce = float(jax.jit(lambda m: _ce(m.logits, cell.batch))(model))
        cellres = {**_summary([acc] * len(seeds)), "val_ce": ce}
        name = label.split(":", 1)[-1]
        if name in world.own_task:
            cellres["own_task"] = world.own_task[name]
            cellres["own_task_accuracy"] = _score(model, world, world.own_task[name], tok, test_examples)
        results[label] = {"per_task": {target: cellres}}
        log.info("%-16s target acc %.3f", label, acc)
    for label, method in methods.items():
        accs, details = [], []
        for seed in seeds:
            t0 = time.perf_counter()
            task = MergeTask(target=target, pool_names=list(cell.stack.names), evaluator_for=_no_evaluator,
                             world=cell, seed=int(seed), progress=progress)
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
    return {"methods": results, "target": target, "sources": [str(d) for d in cell.stack.names]}


def results_markdown(results: dict) -> str:
    target = results["target"]
    lines = [f"| method | {target} accuracy (mean ± std over seeds) | per seed | own task |", "|---|---|---|---|"]
    for label, res in results["methods"].items():
        c = res["per_task"][target]
        own = f"{c['own_task']}: {100 * c['own_task_accuracy']:.1f}" if "own_task_accuracy" in c else ""
        seeds = ", ".join(f"{100 * a:.1f}" for a in c["accuracy_per_seed"])
        lines.append(f"| {label} | {100 * c['accuracy']:.1f} ± {100 * c['accuracy_std']:.1f} | {seeds} | {own} |")
    return "\n".join(lines)


def plot_dfs_path(path: list[dict], num_slots: int, num_layers: int, sources: list[str], title: str,
                  out: Path) -> Path:
    """A slot x source map of a found DFS path: the layer index in the cell, colour = scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.full((len(sources), num_slots), np.nan)
    fig, ax = plt.subplots(figsize=(max(6, num_slots * 0.35), 1.2 + 0.6 * len(sources)))
    for step in path:
        grid[step["source_index"], step["slot"]] = step["scale"]
    im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    for k, step in enumerate(path):
        ax.text(step["slot"], step["source_index"], f"{step['layer']}\n#{k}", ha="center", va="center", fontsize=6,
                color="white")
    ax.set_yticks(range(len(sources)), [Path(s).name for s in sources])
    ax.set_xlabel(f"slot (M = {len(sources) * num_layers} layers x {num_slots // (len(sources) * num_layers)} "
                  "repeats); cell text: layer, step")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="input scale W[prev, j]")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_outputs(results: dict, out_dir: Path) -> None:
    from evojax_merge.fileio import write_text_atomic

    out_dir = Path(out_dir)
    write_text_atomic(out_dir / "results.json", json.dumps(results, indent=2, default=float))
    write_text_atomic(out_dir / "results.md", results_markdown(results) + "\n")
    target = results["target"]
    for label, res in results["methods"].items():
        for d in res["per_task"][target].get("seeds", []):
            if "path" in d:
                plot_dfs_path(d["path"], d["num_slots"], _num_layers(results), d["sources"],
                              f"{label}, seed {d['seed']}: {len(d['path'])} layers, accuracy {d['accuracy']:.3f}",
                              out_dir / "plots" / f"dfs_path_{label}_seed{d['seed']}.png")


def _num_layers(results: dict) -> int:
    return int(results.get("num_layers", 0)) or 1


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
    t0 = time.perf_counter()
    cache = e.get("cache_dir") or cfg.get("cache_dir")
    world = build_sakana_world(world_cfg, cache, progress=bool(e.get("progress", False)))
    world_s = time.perf_counter() - t0
    methods = build_methods(e.get("methods") or {})  # one-line errors naming the method and the key
    t0 = time.perf_counter()
    results = run_sources_experiment(world, methods, tuple(e.get("seeds", (0, 1, 2))), e.get("test_examples"),
                                     e.get("val_examples"), tuple(e.get("sources", ("lang", "skill"))),
                                     progress=bool(e.get("progress", False)))
    results["num_layers"] = world_cfg.model.num_hidden_layers
    results["timings"] = {"world_s": world_s, "experiment_s": time.perf_counter() - t0}
    results["world"] = {"root": str(world.root), **world.manifest}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_outputs(results, out_dir)
    print(f"\nsakana ({results['target']}), test accuracy x100:\n{results_markdown(results)}\n\nwritten to {out_dir}")
    return results
