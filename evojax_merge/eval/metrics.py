"""IE metrics: parse answers into sets of tuples, micro precision/recall/F1, exact match.

Parsing is tolerant: case and spacing do not matter (``"Person : John  Smith"`` equals
``"person: john smith"``, which is also what a word-level tokenizer's ``decode`` gives back),
and a malformed piece is dropped on its own; a parse never raises.

Tuples per task type (see :mod:`evojax_merge.zoo.tasks` for the formats):

- ``ner``, ``et``: ``(type, span)``;  ``es``: ``(span,)``;  ``epr``: ``(relation,)``
- ``re``: ``(head, relation, tail)``;  ``ep``: ``(head, tail)``
- ``ee``: ``("trigger", type, trigger)`` per event plus ``("argument", type, role, span)`` per
  argument, so a right trigger with one wrong argument still earns partial credit
- ``generic``: each ``;``-separated item, parentheses stripped, split on ``,`` and ``:``

Empty-answer convention (InstructUIE's micro average): ``none`` or an empty string parses to the
empty set; an instance where prediction and gold are both empty adds nothing to the counts (no
true positive, no error). Scores are micro-averaged over all tuples of all instances; a ratio
whose denominator is zero is 1.0 when there is nothing on either side (nothing to find and
nothing wrongly found) and 0.0 otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

Tuples = frozenset[tuple[str, ...]]

TASK_TYPES = ("ner", "es", "et", "re", "ep", "epr", "ee", "generic")
_TOKEN = re.compile(r"\w+|[^\w\s]")
_SPECIALS = re.compile(r"<pad>|</s>|<s>|<unk>|<\|endoftext\|>|<\|im_end\|>")
_PAREN = re.compile(r"\(([^()]*)\)")


def canonical(text: str) -> str:
    """Lower-case, one space between every word and punctuation mark: the comparison form."""
    return " ".join(_TOKEN.findall(_SPECIALS.sub(" ", str(text)).lower()))


def _is_none(text: str) -> bool:
    return text in ("", "none")


def _fields(item: str, n: int) -> tuple[str, ...] | None:
    """Exactly ``n`` non-empty comma-separated fields, else None (malformed)."""
    parts = [p.strip() for p in item.split(",")]
    return tuple(parts) if len(parts) == n and all(parts) else None


def _key_value(item: str) -> tuple[str, str] | None:
    key, sep, value = item.partition(":")
    key, value = key.strip(), value.strip()
    return (key, value) if sep and key and value else None


def _items(text: str) -> list[str]:
    return [s.strip() for s in text.split(";") if s.strip()]


def parse_output(text: str, task_type: str = "generic") -> Tuples:
    """The set of tuples an answer states; ``none``/empty/garbage -> fewer (or no) tuples."""
    task_type = task_type.lower()
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task type {task_type!r}; known: {', '.join(TASK_TYPES)}")
    text = canonical(text)
    if text.endswith(" .") or text == ".":  # a closing full stop is not part of the last span
        text = text[:-1].rstrip()
    if _is_none(text):
        return frozenset()
    out: set[tuple[str, ...]] = set()
    if task_type in ("ner", "et"):
        out = {kv for item in _items(text) if (kv := _key_value(item))}
    elif task_type in ("es", "epr"):
        out = {(item,) for item in _items(text) if item != "none"}
    elif task_type in ("re", "ep"):
        n = 3 if task_type == "re" else 2
        out = {f for group in _PAREN.findall(text) if (f := _fields(group, n))}
    elif task_type == "ee":
        for item in _items(text):
            head, *args = item.split(",")
            trig = _key_value(head)
            if trig is None:
                continue  # no "type: trigger" -> the whole event is unreadable
            out.add(("trigger", *trig))
            out |= {("argument", trig[0], *kv) for a in args if (kv := _key_value(a))}
    else:
        for item in _items(text):
            fields = tuple(f.strip() for f in re.split(r"[,:]", item.strip("() ")) if f.strip())
            if fields:
                out.add(fields)
    return frozenset(out)


def _as_tuples(x: str | Iterable[tuple[str, ...]], task_type: str) -> Tuples:
    return parse_output(x, task_type) if isinstance(x, str) else frozenset(map(tuple, x))


def ie_counts(
    preds: Sequence[str | Iterable[tuple[str, ...]]],
    golds: Sequence[str | Iterable[tuple[str, ...]]],
    task_type: str = "generic",
) -> tuple[int, int, int]:
    """``(true positives, predicted tuples, gold tuples)`` summed over instances."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold answers")
    tp = n_pred = n_gold = 0
    for p, g in zip(preds, golds, strict=True):
        pt, gt = _as_tuples(p, task_type), _as_tuples(g, task_type)
        tp += len(pt & gt)
        n_pred += len(pt)
        n_gold += len(gt)
    return tp, n_pred, n_gold


def _ratio(num: int, den: int, nothing_anywhere: bool) -> float:
    if den:
        return num / den
    return 1.0 if nothing_anywhere else 0.0


def ie_scores(
    preds: Sequence[str | Iterable[tuple[str, ...]]],
    golds: Sequence[str | Iterable[tuple[str, ...]]],
    task_type: str = "generic",
) -> dict[str, float]:
    """Micro ``{"precision", "recall", "f1"}`` over tuples; strings are parsed per ``task_type``."""
    tp, n_pred, n_gold = ie_counts(preds, golds, task_type)
    empty = n_pred == 0 and n_gold == 0
    precision = _ratio(tp, n_pred, empty)
    recall = _ratio(tp, n_gold, empty)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def exact_match(preds: Sequence[str], golds: Sequence[str]) -> float:
    """Fraction of answers equal to the gold after :func:`canonical` (0.0 for no instances)."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold answers")
    if not golds:
        return 0.0
    return sum(canonical(p) == canonical(g) for p, g in zip(preds, golds, strict=True)) / len(golds)
