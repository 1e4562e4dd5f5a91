"""The pilot gate of the compositional IE world: can a merge matter in it at all?

Fixed before any merging method runs on the world, and printed at build time. For each gate
target ``T_D`` (a task whose noisy siblings are in the pool, :func:`evojax_merge.zoo.ie_world.sibling_sets`):

- **best single**: the highest test F1 of any one adapter of the pool, i.e. every adapter except
  the target's own task adapter (siblings, same-type adapters of other domains, the target
  domain's other task types, anti-adapters, distractors);
- **oracle merge**: dense task arithmetic on hand-set recipes, the one with the best *validation*
  F1 (its *test* F1 is what the gate compares):

  - ``λ · mean(τ(sib_j))`` for λ in :data:`SIBLING_LAMBDAS` (the siblings' average denoises);
  - ``(1 − μ) · mean(τ(sib_j)) + μ · τ(T_D′)`` for each same-type adapter ``T_D′`` of another
    domain and μ in :data:`TRANSFER_MUS` (the other domain adds the skill on the shared core labels);
  - with an anti-adapter of the target (its labels permuted, the same direction as the siblings'
    confusions): ``mean(τ(sib_j)) − γ · τ(anti)`` and ``mean(τ(sib_j)) + γ · (τ(T_D′) − τ(anti))``
    for γ in :data:`ANTI_GAMMAS` (the issue's hand-signed form: the difference keeps the format and
    copy skill both adapters share and removes the permuted labels).

The world passes when, on every gate target, the oracle beats the best single by at least
``MARGIN`` (0.10 = 10 F1) and the best single scores within ``SINGLE_RANGE`` (0.20-0.60). If it
fails, the world is wrong and no method result on it means anything (``docs/architecture.md``).

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


def run_gate(model, tokenizer, stack: LoraStack, names: Sequence[str], adapters: Mapping[str, Mapping[str, str]],
             records: Mapping[str, Mapping[str, list]], targets: Sequence[str], examples: int = 50,
             max_len: int = 192, max_new_tokens: int = 40) -> dict:
    """Gate figures per target and ``passed``; F1 on the first ``examples`` records of each split."""
    from evojax_merge.eval.evaluate import generate_for_population
    from evojax_merge.eval.metrics import ie_scores

    def f1s(cands: LoraStack, recs: list[dict], task_type: str) -> list[float]:
        outs = generate_for_population(model, tokenizer, cands, recs, max_len=max_len, max_new_tokens=max_new_tokens)
        return [ie_scores(o, [r["output"] for r in recs], task_type)["f1"] for o in outs]

    result: dict = {"targets": {}, "margin": MARGIN, "single_range": list(SINGLE_RANGE)}
    for target in targets:
        task_type = target.split("_", 1)[0]
        test, val = records[target]["test"][:examples], records[target]["validation"][:examples]
        singles = single_candidates(target, adapters)
        combos = oracle_combos(target, adapters)
        own = [n for n, a in adapters.items() if a["kind"] == "task" and a["task"] == target]
        test_f1 = f1s(combine(stack, names, [{n: 1.0} for n in [*singles, *own]] + combos), test, task_type)
        single_f1 = dict(zip(singles, test_f1[: len(singles)], strict=True))
        own_f1 = test_f1[len(singles)] if own else None
        combo_test = test_f1[len(singles) + len(own):]
        val_f1 = f1s(combine(stack, names, combos), val, task_type) if combos else []
        pick = int(np.argmax(val_f1)) if combos else None
        best_single = max(single_f1, key=single_f1.get)
        oracle_test = combo_test[pick] if pick is not None else 0.0
        cell = {
            "best_single": best_single, "best_single_f1": single_f1[best_single], "single_f1": single_f1,
            "own_adapter_f1": own_f1,  # the target's own adapter: a reference, never in the pool
            "oracle": combos[pick] if pick is not None else None,
            "oracle_val_f1": val_f1[pick] if pick is not None else None, "oracle_test_f1": oracle_test,
            "candidates": [{"recipe": recipe(c), "val_f1": v, "test_f1": t}
                           for c, v, t in zip(combos, val_f1, combo_test, strict=True)],
            "gap": oracle_test - single_f1[best_single],
        }
        cell["passed"] = gate_verdict(single_f1[best_single], oracle_test)
        result["targets"][target] = cell
    result["passed"] = bool(targets) and all(c["passed"] for c in result["targets"].values())
    return result


def format_gate(gate: Mapping) -> str:
    """A few lines for the build log."""
    lines = [f"pilot gate (oracle - best single >= {100 * gate['margin']:.0f} F1, best single in "
             f"{100 * gate['single_range'][0]:.0f}-{100 * gate['single_range'][1]:.0f} F1):"]
    for t, c in gate["targets"].items():
        own = "" if c.get("own_adapter_f1") is None else f"  (own adapter {100 * c['own_adapter_f1']:.1f})"
        lines.append(f"  {t:<16} best single {100 * c['best_single_f1']:5.1f} ({c['best_single']})  "
                     f"oracle {100 * c['oracle_test_f1']:5.1f} ({recipe(c['oracle'])})  gap {100 * c['gap']:+5.1f}  "
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
