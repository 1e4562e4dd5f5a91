"""The VLM world's part of REPORT.md (``world.report`` in results.json names :func:`sections`).

- the pilot gate of every world seed (validation only, decided before any method ran);
- exact match and ROUGE-L per method, mean ± std over replicates, and each row's ROUGE-L gap to source A
  with a paired test-set bootstrap per world (:func:`evojax_merge.report.bootstrap.paired_bootstrap` on
  per-question counts ``(rouge_i, 1, 1)``, whose micro "F1" ``2 Σ r / 2n`` is the mean ROUGE-L);
- example answers beside their test images (PNGs in the report's figures), the question also in A;
- the PS coefficients (density and weight) per layer group and source.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from evojax_merge.eval.rouge import rouge_l

EXAMPLES = 6
TARGET_DIR = "vqa_b"


def _load(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


def _rows(run_dir: Path, label: str) -> list[dict]:
    path = Path(run_dir) / "predictions" / TARGET_DIR / f"{label}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _build_config(world: dict):
    from evojax_merge.zoo.vlm_build import VlmBuildConfig, VlmModelSpec

    b = dict(world["build"])
    return VlmBuildConfig(model=VlmModelSpec(**b.pop("model")), **b)


def gate_table(results: Sequence[dict]) -> str:
    """One row per world seed: each source's and the oracle's report-half EM, the gap, the verdict."""
    seen = set()
    lines = ["| world seed | A alone | B alone | oracle (TA λ) | gap | passed |", "|---|---|---|---|---|---|"]
    for res in results:
        w = res.get("world") or {}
        gate = w.get("gate")
        if not gate or w.get("seed") in seen:
            continue
        seen.add(w.get("seed"))
        em = gate["em"]
        lines.append(f"| {w.get('seed')} | {100 * em['vlm_a']['report']:.1f} | {100 * em['lang_b']['report']:.1f} | "
                     f"{100 * gate['oracle_em']:.1f} ({gate['oracle'].removeprefix('ta_')}) | "
                     f"{100 * gate['gap']:+.1f} | {'yes' if gate['passed'] else 'NO'} |")
    return "\n".join(lines)


def _sd(x: Sequence[float]) -> float:
    """The sample standard deviation (n − 1), as the report's tables; 0 for one value."""
    return float(np.std(x, ddof=1)) if len(x) > 1 else 0.0


def rouge_table(run_dirs: Sequence[Path], results: Sequence[dict], reference: str = "source_vlm_a") -> str:
    """EM and ROUGE-L per method (mean ± std over replicates) and the ROUGE-L gap to ``reference`` with a
    paired bootstrap over the test questions of each world (its search seeds stacked)."""
    from evojax_merge.report.bootstrap import paired_bootstrap

    labels = list(results[0]["methods"])
    worlds: dict = {}
    for d, res in zip(run_dirs, results, strict=True):
        worlds.setdefault((res.get("world") or {}).get("seed"), []).append(d)

    def counts(dirs, label):
        return np.stack([np.asarray([[rouge_l(r["prediction"], r["gold"])[2], 1.0, 1.0] for r in _rows(d, label)])
                         for d in dirs])

    lines = ["| method | EM (mean ± sd over replicates) | ROUGE-L | ROUGE-L − source A, per world [95% bootstrap] |",
             "|---|---|---|---|"]
    for label in labels:
        cells = [res["methods"][label]["per_task"] for res in results]
        em = [c[TARGET_DIR]["exact_match"] for c in cells]
        rl = [c[TARGET_DIR]["rouge_l"] for c in cells]
        gaps = []
        for w, dirs in worlds.items():
            if label == reference:
                break
            try:
                b = paired_bootstrap({"t": counts(dirs, label)}, {"t": counts(dirs, reference)})
            except ValueError:
                continue
            gaps.append(f"w{w}: {b.diff:+.1f} [{b.lo:+.1f}, {b.hi:+.1f}]")
        lines.append(f"| {label} | {100 * np.mean(em):.1f} ± {100 * _sd(em):.1f} | "
                     f"{100 * np.mean(rl):.1f} ± {100 * _sd(rl):.1f} | {'; '.join(gaps) or '—'} |")
    return "\n".join(lines)


def examples(run_dir: Path, result: dict, figures: Path, n: int = EXAMPLES) -> str:
    """``n`` test questions spread over the question types (the first of each type in turn, each on an image
    not shown yet): the image (a PNG), the question (B, and in A), the gold answer and every method's answer."""
    import matplotlib.pyplot as plt

    from evojax_merge.zoo.vlm_build import world_data

    data = world_data(_build_config(result["world"]))
    test = data["tasks"][TARGET_DIR]["test"]
    back = {b: a for a, b in data["cipher"].items()}
    labels = list(result["methods"])
    preds = {label: _rows(run_dir, label) for label in labels}
    picked, images, kinds = [], set(), sorted({r["task"] for r in test})
    for k in range(n):
        kind = kinds[k % len(kinds)]
        i = next((i for i, r in enumerate(test) if r["task"] == kind and r["image"] not in images and i not in picked),
                 None)
        if i is not None:
            picked.append(i)
            images.add(test[i]["image"])
    lines = ["| image | question (B / A) | gold (B / A) | " + " | ".join(labels) + " |",
             "|---" * (3 + len(labels)) + "|"]
    for i in picked:
        rec = test[i]
        img = data["scenes"].images["test"][rec["image"]]
        name = f"vlm_example_{i}.png"
        plt.imsave(figures / name, np.kron(img, np.ones((6, 6, 1), np.uint8)))

        def a(text: str) -> str:
            return " ".join(back.get(w, w) for w in text.split())

        answers = [preds[label][i]["prediction"] if i < len(preds[label]) else "" for label in labels]
        lines.append(f"| ![](figures/{name}) | {rec['prompt']} / *{a(rec['prompt'])}* | {rec['answer']} / "
                     f"*{a(rec['answer'])}* | " + " | ".join(f"{x} (*{a(x)}*)" for x in answers) + " |")
    return "\n".join(lines)


def ps_figure(results: Sequence[dict], out: Path, label: str = "vlm_ps") -> bool:
    """Density and weight per layer group for each source, every replicate a line; False if no PS row."""
    import matplotlib.pyplot as plt

    cells = [r["methods"][label]["per_task"][TARGET_DIR] for r in results if label in r["methods"]]
    if not cells:
        return False
    sources = cells[0].get("sources", ["vlm_a", "lang_b"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key in zip(axes, ("density", "weight"), strict=True):
        for s, colour in zip(range(len(sources)), ("tab:blue", "tab:orange"), strict=False):
            for k, c in enumerate(cells):
                v = np.asarray(c[key])[:, s]
                ax.plot(range(len(v)), v, "o-", color=colour, alpha=0.6, label=sources[s] if k == 0 else None)
        g = np.asarray(cells[0][key]).shape[0]
        ax.set_xticks(range(g), ["emb", *[f"L{i}" for i in range(g - 2)], "head"])
        ax.set_title(f"PS {key} per layer group")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def sections(run_dirs: Sequence[str | Path], figures: str | Path) -> str:
    """The VLM world's Markdown (module docstring); PNGs go to ``figures``."""
    import matplotlib

    matplotlib.use("Agg")
    dirs = [Path(d) for d in run_dirs]
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    results = [_load(d) for d in dirs]
    parts = ["## The VLM world (issue 25)", "",
             "Source A (`vlm_a`) answers image questions in language A; source B (`lang_b`) knows language B but "
             "never saw an image; the target asks and answers in B. Merges change the language model only.", "",
             "### Pilot gate (validation report half, EM ×100; decided before any method ran)", "",
             gate_table(results), "",
             f"### Exact match and ROUGE-L on every {TARGET_DIR} test question (×100)", "",
             rouge_table(dirs, results), "",
             f"### Example answers (replicate `{'/'.join(dirs[0].parts[-4:])}`; B, and in *A* in italics)",
             "", examples(dirs[0], results[0], figures), ""]
    if ps_figure(results, figures / "vlm_ps_coefficients.png"):
        parts += ["### PS coefficients per layer", "", "![PS density and weight per layer group and source]"
                  "(figures/vlm_ps_coefficients.png)", ""]
    return "\n".join(parts)
