"""The pilot gate: can a merge matter in this zoo at all? Checked before any method runs on it.

For each gate target ``T_D`` (task type T, domain D):

- **best single**: the highest test F1 of any one adapter among the target's related pool
  (:mod:`evojax_merge.zoo.pools`) and every same-type adapter of another domain;
- **oracle merge**: dense task arithmetic with hand-set signs, ``λ(τ(T_D′) + τ(X_D))`` and
  ``λ(τ(T_D′) + τ(X_D) − τ(X_D′))`` for each same-type adapter ``T_D′`` of the related pool, each
  other task type X, and λ in :data:`LAMBDAS`. The oracle is the candidate with the best *validation* F1; its *test* F1
  is what the gate compares.

The world passes when, on every gate target, the oracle beats the best single by at least
``margin`` (0.10 = 10 F1) and the best single scores within ``single_range`` (0.20-0.60). If it
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
from evojax_merge.zoo.pools import related_pool

MARGIN = 0.10
SINGLE_RANGE = (0.20, 0.60)
LAMBDAS = (0.5, 1.0)  # task arithmetic's scaling: a sum of k full task vectors can overshoot


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


def oracle_combos(target: str, adapters: Mapping[str, Mapping[str, str]], pool: Sequence[str]) -> list[dict]:
    """The hand-signed task-arithmetic candidates of ``target`` (see the module docstring)."""
    task_type, domain = target.split("_", 1)
    tasks = {a["task"]: n for n, a in adapters.items() if a["kind"] == "task"}
    same = [n for n in pool if adapters[n]["kind"] == "task" and adapters[n]["task"].startswith(f"{task_type}_")]
    others = sorted({t.split("_", 1)[0] for t in tasks} - {task_type})
    combos = []
    for s in same:
        other_domain = adapters[s]["task"].split("_", 1)[1]
        for x in others:
            if f"{x}_{domain}" not in tasks:
                continue
            for lam in LAMBDAS:
                combos.append({s: lam, tasks[f"{x}_{domain}"]: lam})
                if f"{x}_{other_domain}" in tasks:
                    combos.append({s: lam, tasks[f"{x}_{domain}"]: lam, tasks[f"{x}_{other_domain}"]: -lam})
    return combos


def single_candidates(target: str, adapters: Mapping[str, Mapping[str, str]], domains: Sequence[str]) -> list[str]:
    """Related pool plus every same-type adapter of another domain, in ``adapters`` order."""
    task_type = target.split("_", 1)[0]
    pool = set(related_pool(target, adapters, domains))
    pool |= {n for n, a in adapters.items() if a["kind"] == "task" and a["task"].startswith(f"{task_type}_")
             and a["task"] != target}
    return [n for n in adapters if n in pool]


def run_gate(model, tokenizer, stack: LoraStack, names: Sequence[str], adapters: Mapping[str, Mapping[str, str]],
             domains: Sequence[str], records: Mapping[str, Mapping[str, list]], targets: Sequence[str],
             examples: int = 50, max_len: int = 192, max_new_tokens: int = 40) -> dict:
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
        singles = single_candidates(target, adapters, domains)
        combos = oracle_combos(target, adapters, related_pool(target, adapters, domains))
        cands = combine(stack, names, [{n: 1.0} for n in singles] + combos)
        test_f1 = f1s(cands, test, task_type)
        single_f1 = dict(zip(singles, test_f1[: len(singles)], strict=True))
        val_f1 = f1s(combine(stack, names, combos), val, task_type) if combos else []
        pick = int(np.argmax(val_f1)) if combos else None
        best_single = max(single_f1, key=single_f1.get)
        oracle_test = test_f1[len(singles) + pick] if pick is not None else 0.0
        cell = {
            "best_single": best_single, "best_single_f1": single_f1[best_single], "single_f1": single_f1,
            "oracle": {k: v for k, v in combos[pick].items()} if pick is not None else None,
            "oracle_val_f1": val_f1[pick] if pick is not None else None, "oracle_test_f1": oracle_test,
            "oracle_candidates_test_f1": test_f1[len(singles):],
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
        oracle = " ".join(f"{v:+g}·{k}" for k, v in (c["oracle"] or {}).items())
        lines.append(f"  {t:<16} best single {100 * c['best_single_f1']:5.1f} ({c['best_single']})  "
                     f"oracle {100 * c['oracle_test_f1']:5.1f} ({oracle})  gap {100 * c['gap']:+5.1f}  "
                     f"{'PASS' if c['passed'] else 'FAIL'}")
    lines.append(f"  gate: {'PASSED' if gate['passed'] else 'FAILED'}")
    return "\n".join(lines)


def gate_zoo_dir(root, targets: Sequence[str] | None = None, examples: int | None = None) -> dict:
    """Rerun the gate on a built zoo directory (its manifest's targets unless given)."""
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
    tasks = manifest["tasks"]
    first = manifest["config"]["tasks"]["task_types"][0]
    domains = [t.split("_", 1)[1] for t in tasks if t.startswith(first + "_")]
    records = {t: json.loads((root / "data" / f"{t}.json").read_text()) for t in tasks}
    return run_gate(model, AutoTokenizer.from_pretrained(root / "base"), pool.stack, list(pool.names), adapters,
                    domains, records, list(targets or gate_cfg["targets"]), examples or gate_cfg["examples"],
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
