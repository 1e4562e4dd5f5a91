"""The pilot gate of the compositional IE world: can a merge matter in it at all?

Fixed before any merging method runs on the world, and printed at build time. It reads **validation
records only**: the test split, on which the methods are scored, selects nothing (issue 23). The
first ``examples`` validation records of each gate target are split by position into a *pick* half
(even positions) and a *report* half (odd positions); every choice is made on the pick half and every
figure the gate compares is measured on the report half, so no choice is scored on its own records.
For each gate target ``T_D`` (a task whose noisy siblings are in the pool,
:func:`evojax_merge.zoo.ie_world.sibling_sets`):

- **best single**: the adapter of the pool (every adapter except the target's own task adapter:
  siblings, same-type adapters of other domains, the target domain's other task types,
  anti-adapters, distractors) with the highest F1 on the pick half;
- **oracle merge**: dense task arithmetic on hand-set recipes, the one with the best F1 on the pick half:

  - ``λ · mean(τ(sib_j))`` for λ in :data:`SIBLING_LAMBDAS` (the siblings' average denoises);
  - ``(1 − μ) · mean(τ(sib_j)) + μ · τ(T_D′)`` for each same-type adapter ``T_D′`` of another
    domain and μ in :data:`TRANSFER_MUS` (the other domain adds the skill on the shared core labels);
  - with an anti-adapter of the target (its labels permuted, the same direction as the siblings'
    confusions): ``mean(τ(sib_j)) − γ · τ(anti)`` and ``mean(τ(sib_j)) + γ · (τ(T_D′) − τ(anti))``
    for γ in :data:`ANTI_GAMMAS` (the issue's hand-signed form: the difference keeps the format and
    copy skill both adapters share and removes the permuted labels).

The world passes when, on every gate target, the oracle beats the best single by at least
``MARGIN`` (0.10 = 10 F1) and the best single scores within ``SINGLE_RANGE`` (0.20-0.60), both on
the report half. If it fails, the world is wrong and no method result on it means anything
(``docs/architecture.md``): the engine stops unless ``world.allow_failed_gate=true``.

A dense sum ``Σ c_i s_i B_i A_i`` is exactly one LoRA of rank ``k·r`` with
``A = [c_1 s_1 A_1; …; c_k s_k A_k]``, ``B = [B_1 … B_k]`` and scale 1, so every candidate,
singles included (zero-padded to the largest rank), is generated in one vmapped call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from evojax_merge.lora.adapter import LoraStack

MARGIN = 0.10
SINGLE_RANGE = (0.20, 0.60)
SIBLING_LAMBDAS = (1.0, 1.5)  # the siblings' mean, and that mean scaled up (averaging shrinks it)
TRANSFER_MUS = (0.25, 0.5)  # interpolation weight of a same-type adapter of another domain
ANTI_GAMMAS = (0.25, 0.5)  # weight of the negated anti-adapter


def gate_verdict(best_single_f1: float, oracle_f1: float) -> bool:
    """``oracle - best single >= MARGIN`` and ``best single`` within ``SINGLE_RANGE`` (F1 in [0, 1])."""
    lo, hi = SINGLE_RANGE
    return bool(round(oracle_f1 - best_single_f1, 9) >= MARGIN and lo <= best_single_f1 <= hi)


def combine(stack: LoraStack, names: Sequence[str], combos: Sequence[Mapping[str, float]]) -> LoraStack:
    """One rank-``k·r`` adapter per combination ``{adapter name: coefficient}``, zero-padded."""
    index = {n: i for i, n in enumerate(names)}
    width = max(len(c) for c in combos) * stack.rank
    A: dict[str, list] = {m: [] for m in stack.A}
    B: dict[str, list] = {m: [] for m in stack.B}
    for combo in combos:
        for m in stack.A:
            a = jnp.concatenate([c * stack.scale[index[n]] * stack.A[m][index[n]] for n, c in combo.items()], 0)
            b = jnp.concatenate([stack.B[m][index[n]] for n in combo], 1)
            A[m].append(jnp.pad(a, ((0, width - a.shape[0]), (0, 0))))
            B[m].append(jnp.pad(b, ((0, 0), (0, width - b.shape[1]))))
    return LoraStack(A={m: jnp.stack(v) for m, v in A.items()}, B={m: jnp.stack(v) for m, v in B.items()},
                     scale=jnp.ones((len(combos),), jnp.float32))


def siblings_of(target: str, adapters: Mapping[str, Mapping[str, str]]) -> list[str]:
    return [n for n, a in adapters.items() if a["kind"] == "sibling" and a["task"] == target]


def oracle_combos(target: str, adapters: Mapping[str, Mapping[str, str]]) -> list[dict[str, float]]:
    """The hand-set recipes of ``target`` (see the module docstring), in a fixed order."""
    task_type = target.split("_", 1)[0]
    sibs = siblings_of(target, adapters)
    if not sibs:
        return []
    same = [n for n, a in adapters.items()
            if a["kind"] == "task" and a["task"] != target and a["task"].startswith(f"{task_type}_")]
    anti = [n for n, a in adapters.items() if a["kind"] == "anti" and a["task"] == target]

    def mean(w: float) -> dict[str, float]:
        return {s: w / len(sibs) for s in sibs}

    combos: list[dict[str, float]] = [mean(lam) for lam in SIBLING_LAMBDAS]
    combos += [{**mean(1 - mu), x: mu} for x in same for mu in TRANSFER_MUS]
    for a in anti:  # the anti-adapter learned the target's labels permuted: negating it pushes them back
        combos += [{**mean(1.0), a: -g} for g in ANTI_GAMMAS]
        combos += [{**mean(1.0), x: g, a: -g} for x in same for g in ANTI_GAMMAS]
    return combos


def single_candidates(target: str, adapters: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Every adapter of the pool but the target's own task adapter, in ``adapters`` order."""
    return [n for n, a in adapters.items() if not (a["kind"] == "task" and a["task"] == target)]


def recipe(combo: Mapping[str, float] | None) -> str:
    """``"0.25·sib0_x + ... + 0.5·ner_y"``, for logs and tables."""
    return " + ".join(f"{v:g}·{k}" for k, v in (combo or {}).items())


def gate_halves(validation: Sequence[dict], examples: int) -> tuple[list[dict], list[dict]]:
    """The pick half (even positions) and the report half (odd positions) of the first ``examples`` records."""
    head = list(validation[:examples])
    return head[0::2], head[1::2]


def run_gate(model, tokenizer, stack: LoraStack, names: Sequence[str], adapters: Mapping[str, Mapping[str, str]],
             records: Mapping[str, Mapping[str, list]], targets: Sequence[str], examples: int = 50,
             max_len: int = 192, max_new_tokens: int = 40) -> dict:
    """Gate figures per target and ``passed``, from validation records only (see the module docstring)."""
    from evojax_merge.eval.evaluate import generate_for_population
    from evojax_merge.eval.metrics import ie_scores

    def f1s(cands: LoraStack, recs: list[dict], task_type: str) -> list[float]:
        outs = generate_for_population(model, tokenizer, cands, recs, max_len=max_len, max_new_tokens=max_new_tokens)
        return [ie_scores(o, [r["output"] for r in recs], task_type)["f1"] for o in outs]

    result: dict = {"targets": {}, "margin": MARGIN, "single_range": list(SINGLE_RANGE), "split": "validation"}
    for target in targets:
        task_type = target.split("_", 1)[0]
        pick_recs, report_recs = gate_halves(records[target]["validation"], examples)
        singles = single_candidates(target, adapters)
        combos = oracle_combos(target, adapters)
        own = [n for n, a in adapters.items() if a["kind"] == "task" and a["task"] == target]
        cands = combine(stack, names, [{n: 1.0} for n in [*singles, *own]] + combos)
        pick_f1, report_f1 = f1s(cands, pick_recs, task_type), f1s(cands, report_recs, task_type)
        n_single, n_own = len(singles), len(own)
        single_pick = dict(zip(singles, pick_f1[:n_single], strict=True))
        single_report = dict(zip(singles, report_f1[:n_single], strict=True))
        combo_pick, combo_report = pick_f1[n_single + n_own:], report_f1[n_single + n_own:]
        best_single = max(singles, key=lambda n: (single_pick[n], -singles.index(n)))
        pick = int(np.argmax(combo_pick)) if combos else None
        oracle_f1 = combo_report[pick] if pick is not None else 0.0
        cell = {
            "best_single": best_single, "best_single_f1": single_report[best_single],
            "single_f1": single_report, "single_pick_f1": single_pick,
            "own_adapter_f1": report_f1[n_single] if own else None,  # a reference, never in the pool
            "oracle": combos[pick] if pick is not None else None,
            "oracle_pick_f1": combo_pick[pick] if pick is not None else None, "oracle_f1": oracle_f1,
            "candidates": [{"recipe": recipe(c), "pick_f1": p, "report_f1": r}
                           for c, p, r in zip(combos, combo_pick, combo_report, strict=True)],
            "gap": oracle_f1 - single_report[best_single],
            "records": {"pick": len(pick_recs), "report": len(report_recs)},
        }
        cell["passed"] = gate_verdict(single_report[best_single], oracle_f1)
        result["targets"][target] = cell
    result["passed"] = bool(targets) and all(c["passed"] for c in result["targets"].values())
    return result


def format_gate(gate: Mapping) -> str:
    """A few lines for the build log."""
    lines = [f"pilot gate on validation records, chosen on one half and scored on the other (oracle - best single "
             f">= {100 * gate['margin']:.0f} F1, best single in {100 * gate['single_range'][0]:.0f}-"
             f"{100 * gate['single_range'][1]:.0f} F1):"]
    for t, c in gate["targets"].items():
        own = "" if c.get("own_adapter_f1") is None else f"  (own adapter {100 * c['own_adapter_f1']:.1f})"
        lines.append(f"  {t:<16} best single {100 * c['best_single_f1']:5.1f} ({c['best_single']})  "
                     f"oracle {100 * c['oracle_f1']:5.1f} ({recipe(c['oracle'])})  gap {100 * c['gap']:+5.1f}  "
                     f"{'PASS' if c['passed'] else 'FAIL'}{own}")
    lines.append(f"  gate: {'PASSED' if gate['passed'] else 'FAILED'}")
    return "\n".join(lines)


def gate_zoo_dir(root, targets: Sequence[str] | None = None, examples: int | None = None) -> dict:
    """Rerun the gate on a built IE zoo directory (its manifest's targets unless given)."""
    import json
    from pathlib import Path

    from transformers import AutoTokenizer

    from evojax_merge.lora.pool import load_pool
    from evojax_merge.models.io import load_model

    root = Path(root)
    manifest = json.loads((root / "manifest.json").read_text())
    gate_cfg = manifest["config"]["gate"]
    model = load_model(root / "base")
    pool = load_pool(str(root / "adapters" / "*"), model.config)
    adapters = manifest["adapters"]
    records = {t: json.loads((root / "data" / f"{t}.json").read_text()) for t in manifest["tasks"]}
    return run_gate(model, AutoTokenizer.from_pretrained(root / "base"), pool.stack, list(pool.names), adapters,
                    records, list(targets or gate_cfg["targets"]), examples or gate_cfg["examples"],
                    manifest["config"]["model"]["max_len"])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m evojax_merge.zoo.gate ZOO_DIR [TARGET ...]``: print the gate; exit 1 when it fails."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m evojax_merge.zoo.gate ZOO_DIR [TARGET ...]", file=sys.stderr)
        return 2
    gate = gate_zoo_dir(args[0], args[1:] or None)
    print(format_gate(gate))
    return 0 if gate["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
