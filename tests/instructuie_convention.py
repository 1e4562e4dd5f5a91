"""InstructUIE's scoring conventions, restated for the comparison column of the metric tests.

Written from a reading of ``BeyonderXX/InstructUIE`` ``src/evaluation/evaluator.py`` (its NER,
RE, EEA, EET and Event evaluators and ``MetricF1``/``MetricAcc``), not copied from it:

- normalise a string: one space for any run of whitespace, no space around ``, : ( ) . _ ; ' -``,
  lower case, no braces, runs of ``,`` ``.`` ``;`` collapsed, ``’`` as ``'``, "location" as
  "located";
- NER: split the normalised answer on ``;``; every normalised piece is an item (``none`` and the
  empty string included);
- RE / EEA: the same pieces, but only those containing ``:``;
- EET: accuracy of the whole normalised string;
- Event: items are the parenthesised groups only (an answer without parentheses has none);
  scored by accuracy of the item sets;
- F1: micro over instances, ``TP = |gold ∩ pred|``, ``FP = |pred - gold|``, ``FN = |gold - pred|``;
  a ratio with denominator 0 is 0.
"""

from __future__ import annotations

import re

_AROUND = re.compile(r"\s*([,:().;'_-])\s*")


def normalise(s: str) -> str:
    s = " ".join(s.split())
    s = _AROUND.sub(r"\1", s).lower().replace("{", "").replace("}", "")
    for ch in ",.;":
        s = re.sub(re.escape(ch) + "+", ch, s)
    return s.replace("’", "'").replace("location", "located")


def ner_items(answer: str) -> set[str]:
    return {normalise(piece) for piece in normalise(answer).split(";")}


def colon_items(answer: str) -> set[str]:
    return {p for p in ner_items(answer) if ":" in p}


def event_items(answer: str) -> set[str]:
    return set(re.findall(r"\(([^()]*)\)", answer))


def f1(golds: list[str], preds: list[str], items) -> float:
    tp = fp = fn = 0
    for g, p in zip(golds, preds, strict=True):
        gs, ps = items(g), items(p)
        tp += len(gs & ps)
        fp += len(ps - gs)
        fn += len(gs - ps)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def accuracy(golds: list, preds: list, key=normalise) -> float:
    return sum(key(g) == key(p) for g, p in zip(golds, preds, strict=True)) / len(golds)


def score(task_type: str, golds: list[str], preds: list[str]) -> float:
    """The score InstructUIE's evaluator for ``task_type`` would give (F1, or accuracy for EET/EE)."""
    if task_type in ("ner", "es", "et", "ep"):
        return f1(golds, preds, ner_items)
    if task_type in ("re", "epr", "eea"):
        return f1(golds, preds, colon_items)
    if task_type == "eet":
        return accuracy(golds, preds)
    if task_type == "ee":
        return accuracy(golds, preds, key=event_items)
    raise ValueError(task_type)
