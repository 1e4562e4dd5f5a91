"""ROUGE-L of generated answers against gold ones (Lin 2004; Sakana reports it on JA-VG-VQA-500).

Both texts are compared as tokens of :func:`evojax_merge.eval.metrics.canonical` (lower case, words and
punctuation marks split). With ``L = |LCS(pred, gold)|`` (longest common subsequence of tokens):

    P = L / |pred|,   R = L / |gold|,   F = 2 P R / (P + R)        (β = 1)

and ``P = R = F = 0`` when ``L = 0`` or either side is empty (both empty included), as the
``rouge_score`` package does. Corpus figures are the means of the per-answer P, R and F.
"""

from __future__ import annotations

from collections.abc import Sequence

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.eval.metrics import canonical


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """The length of the longest common subsequence of ``a`` and ``b`` (dynamic programming, O(|a| |b|))."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, gold: str) -> tuple[float, float, float]:
    """``(P, R, F)`` of one answer (module docstring)."""
    p_tok, g_tok = canonical(prediction).split(), canonical(gold).split()
    if not p_tok or not g_tok:
        return 0.0, 0.0, 0.0
    lcs = lcs_length(p_tok, g_tok)
    if lcs == 0:
        return 0.0, 0.0, 0.0
    p, r = lcs / len(p_tok), lcs / len(g_tok)
    return p, r, 2 * p * r / (p + r)


def rouge_l_scores(predictions: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
    """``{"p", "r", "f"}``: the means over answers; all 0.0 for no answers."""
    if len(predictions) != len(golds):
        raise EvoMergeInputError(f"rouge_l: {len(predictions)} predictions for {len(golds)} gold answers")
    if not golds:
        return {"p": 0.0, "r": 0.0, "f": 0.0}
    per = [rouge_l(p, g) for p, g in zip(predictions, golds, strict=True)]
    n = len(per)
    return {k: sum(x[i] for x in per) / n for i, k in enumerate(("p", "r", "f"))}
