"""The VLM world's pilot gate and its greedy answers: can a merge matter in it at all?

Fixed before any merging method runs (computed when the world is built, kept in its manifest), on the
target's **validation records only** (the test split selects nothing). The validation records are split
by position into a *pick* half (even positions) and a *report* half (odd positions), as in the IE
world's gate (:mod:`evojax_merge.zoo.gate`): every choice is made on the pick half and every compared
figure is the report half's. Scores are exact match (EM) of the greedy answer, every model with the kept
vision tower and projector (``vlm_a``'s), only the language model differing:

- **source A** (``vlm_a``'s LM) and **source B** (``lang_b``'s LM) alone;
- **oracle merge**: task arithmetic ``θ = θ_base + λ (τ_A + τ_B)`` for λ in :data:`TA_LAMBDAS`, the
  λ with the best pick-half EM.

The world passes when ``EM(oracle) − max(EM(A), EM(B)) >= MARGIN`` and ``max(EM(A), EM(B)) <= SINGLE_MAX``
(each source alone scores low), both on the report half; else the engine stops unless
``world.allow_failed_gate=true``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from evojax_merge.eval.metrics import canonical
from evojax_merge.models.functional import greedy_decode
from evojax_merge.models.llava import SplicedLM, image_rows
from evojax_merge.zoo.sakana_world import answer_text

MARGIN = 0.10  # EM, as a fraction
SINGLE_MAX = 0.50
TA_LAMBDAS = (0.5, 0.75, 1.0, 1.25)
ANSWER_STEPS = 3  # generated tokens: a two-word answer and </s>


def spliced(world, params: dict, records: list[dict], split: str) -> tuple[SplicedLM, dict[str, np.ndarray]]:
    """``params`` (a language model) with the kept vision tower's image rows of ``records`` (of ``split``)."""
    enc = world.encode(records)
    rows, is_image = image_rows(world.features(split), enc["input_ids"], enc["image"],
                                world.llava_config.image_token_id)
    return SplicedLM(world.llava_config.text, params, jnp.asarray(rows), jnp.asarray(is_image)), enc


@functools.partial(jax.jit, static_argnums=3)
def _greedy(model, ids, lengths, steps: int):
    return greedy_decode(model.logits, ids, lengths, steps)


def vlm_answers(world, params: dict, records: list[dict], split: str, steps: int = ANSWER_STEPS) -> list[str]:
    """Greedy answers (cache-free decode) of the VLM whose language model is ``params``."""
    if not records:
        return []
    model, enc = spliced(world, params, records, split)
    cols = np.arange(enc["input_ids"].shape[1])[None]
    ids = np.where(cols < enc["prompt_len"][:, None], enc["input_ids"], world.tokenizer.pad_token_id)
    toks = _greedy(model, jnp.asarray(ids), jnp.asarray(enc["prompt_len"]), steps)
    return answer_text(np.asarray(toks), world.tokenizer)


def exact_match(predictions: list[str], records: list[dict]) -> float:
    """``mean_i [canonical(pred_i) == canonical(gold_i)]``; 0.0 for no records."""
    if not records:
        return 0.0
    return sum(canonical(p) == canonical(r["answer"]) for p, r in zip(predictions, records, strict=True)) / len(records)


def ta_params(base: dict, sources: list[dict], lam: float) -> dict:
    """``θ_base + λ Σ_s (θ_s − θ_base)`` per tensor."""
    return {k: base[k] + lam * sum(s[k] - base[k] for s in sources) for k in base}


def gate_verdict(best_single: float, oracle: float) -> bool:
    """``oracle − best single >= MARGIN`` and ``best single <= SINGLE_MAX`` (EM as fractions)."""
    return bool(round(oracle - best_single, 9) >= MARGIN and best_single <= SINGLE_MAX)


def compute_gate(world) -> dict:
    """The gate on the target's validation records (module docstring); a JSON-able dict."""
    records = world.records(world.target)["validation"]
    halves = {"pick": records[0::2], "report": records[1::2]}
    base = world.lm_params("base")
    a, b = world.lm_params("vlm_a"), world.lm_params("lang_b")
    candidates = {"vlm_a": a, "lang_b": b, **{f"ta_{lam}": ta_params(base, [a, b], lam) for lam in TA_LAMBDAS}}
    em = {}
    for name, params in candidates.items():
        answers = vlm_answers(world, params, records, "validation")
        em[name] = {h: exact_match(answers[i::2], recs) for i, (h, recs) in enumerate(halves.items())}
    oracle = max((n for n in em if n.startswith("ta_")), key=lambda n: em[n]["pick"])
    single = max(em["vlm_a"]["report"], em["lang_b"]["report"])
    return {"split": "validation", "examples": {h: len(r) for h, r in halves.items()}, "em": em, "oracle": oracle,
            "best_single_em": single, "oracle_em": em[oracle]["report"], "gap": em[oracle]["report"] - single,
            "margin": MARGIN, "single_max": SINGLE_MAX, "passed": gate_verdict(single, em[oracle]["report"])}


def format_gate(gate: dict) -> str:
    """One line: each source's and the oracle's report-half EM, the gap and the verdict."""
    em = gate["em"]
    return (f"gate (validation, report half of {gate['examples']['report']}): A {100 * em['vlm_a']['report']:.1f}, "
            f"B {100 * em['lang_b']['report']:.1f}, oracle {gate['oracle']} {100 * gate['oracle_em']:.1f} EM; "
            f"gap {100 * gate['gap']:+.1f} (needs >= {100 * gate['margin']:.0f}, sources <= "
            f"{100 * gate['single_max']:.0f}): {'passed' if gate['passed'] else 'FAILED'}")
