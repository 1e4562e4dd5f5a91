"""IE metrics on InstructUIE's output conventions: answers -> sets of items -> micro P/R/F1.

Every task declares its type (``ner, es, et, re, ep, epr, ee, eet, eea`` or ``exact``); the
scorer is never guessed from a task's name. Answer shapes (``;`` separates items)::

    ner, et   type: span; type: span            -> ("type", "span")
    es        span; span   (or span, span)      -> ("span",)
    re, epr   relation: head, tail; ...         -> ("relation", "head , tail")
              (head, relation, tail); ...       -> the same tuple (the zoo's and InstructUIE's
                                                   first evaluator's shape)
    epr       relation                          -> ("relation",)   (the zoo: the pair is given)
    ep        head, tail; ...  or (head, tail)  -> ("head , tail",)
    eet       event type: trigger; ...          -> ("event type", "trigger")
    eea       name: role; ...                   -> ("name", "role")
    ee        type: trigger, name: role, ...; ...
              -> ("trigger", type, trigger) per event and ("argument", type, name, role) per
                 argument, so a right trigger with one wrong argument earns partial credit;
                 the trigger ends at the first comma, an argument at the comma after its
                 ": role", so a name may hold commas ("300,000: number of victim")

Normalisation, item by item (never only at the end of the whole answer): lower case, one
space between every word and punctuation mark (``"St.Albans"`` = ``"st . albans"``), trailing
full stops and commas removed (so ``"Vt."`` at the end of one answer and inside another is the
same entity), duplicates counted once (sets, as InstructUIE's evaluators use).

``None`` follows InstructUIE's evaluators (``src/evaluation/evaluator.py``):

- the NER evaluator splits an answer on ``;`` and keeps every item, so ``none`` is an item that
  can be matched: types ``ner, es, et``, ``ep`` (its items carry no ``:``, so only the NER
  evaluator can read them) and ``eet`` (InstructUIE scores EET by accuracy, which also counts
  None = None as right);
- the RE and EEA evaluators keep only items with a ``:``, so ``none`` is dropped: types ``re,
  epr, eea, ee``. An instance with nothing on either side adds nothing.

With ``TP = |gold ∩ pred|`` summed over instances, ``P = TP / Σ|pred|``, ``R = TP / Σ|gold|``,
``F1 = 2PR / (P + R)``; a ratio whose denominator is 0 is 0 (InstructUIE's ``MetricF1``).

Predictions are parsed leniently (a malformed item is dropped on its own); a gold answer must
parse under its declared type (:func:`check_gold`), else it is a data error naming the record.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from evojax_merge.errors import EvoMergeInputError

Tuples = frozenset[tuple[str, ...]]

IE_TYPES = ("ner", "es", "et", "re", "ep", "epr", "ee", "eet", "eea")
TASK_TYPES = (*IE_TYPES, "exact")
NONE_IS_ITEM = frozenset({"ner", "es", "et", "ep", "eet"})
NONE_ITEM: tuple[str, ...] = ("none",)
_TOKEN = re.compile(r"\w+|[^\w\s]")
_SPECIALS = re.compile(r"<pad>|</s>|<s>|<unk>|<\|endoftext\|>|<\|im_end\|>|<\|eot_id\|>")
_TRAILING = (" .", " ,")


class _Malformed(Exception):
    """An item that does not have its type's shape."""


def canonical(text: str) -> str:
    """Lower-case, one space between every word and punctuation mark: the comparison form."""
    return " ".join(_TOKEN.findall(_SPECIALS.sub(" ", str(text)).lower()))


def _clean(item: str) -> str:
    """An already-canonical item without trailing full stops/commas or surrounding spaces."""
    item = item.strip()
    while item.endswith(_TRAILING) or item in (".", ","):
        item = item[:-1].rstrip()
    return item


def _items(text: str, sep: str = ";") -> list[str]:
    return [c for s in text.split(sep) if (c := _clean(s))]


def _pair(item: str, last: bool = False) -> tuple[str, str]:
    """``key: value`` split at the first colon (the last with ``last``); both sides non-empty."""
    key, sep, value = item.rpartition(":") if last else item.partition(":")
    key, value = _clean(key), _clean(value)
    if not (sep and key and value):
        raise _Malformed(item)
    return key, value


def _unwrap(item: str) -> str | None:
    """The inside of ``( ... )``, or None when the item is not parenthesised."""
    if item.startswith("(") and item.endswith(")"):
        return _clean(item[1:-1])
    return None


def _fields(text: str, n: int) -> list[str]:
    parts = [_clean(p) for p in text.split(",")]
    if len(parts) != n or not all(parts):
        raise _Malformed(text)
    return parts


def _relation(item: str, task_type: str) -> tuple[str, ...]:
    inner = _unwrap(item)
    if inner is not None:  # (head, relation, tail)
        head, rel, tail = _fields(inner, 3)
        return rel, f"{head} , {tail}"
    if ":" not in item:
        if task_type == "epr" and "," not in item:  # the relation alone, the pair being given
            return (item,)
        raise _Malformed(item)
    rel, args = _pair(item)
    if "," not in args:
        raise _Malformed(item)
    return rel, " , ".join(_clean(a) for a in args.split(","))


def _entity_pair(item: str) -> tuple[str, ...]:
    inner = _unwrap(item)
    text = inner if inner is not None else item
    if "," not in text or ":" in text:
        raise _Malformed(item)
    parts = [_clean(a) for a in text.split(",")]
    if not all(parts):
        raise _Malformed(item)
    return (" , ".join(parts),)


def _argument(text: str) -> tuple[str, str]:
    """``span: role`` split at the *last* colon (roles never hold one; a span such as a time may)."""
    return _pair(text, last=True)


def _events(item: str) -> set[tuple[str, ...]]:
    """``type: trigger, span: role, span: role`` -> trigger and argument tuples.

    The trigger ends at the first comma. After it, an argument ends at the comma that follows its
    ``: role``; a comma inside a span ("300,000", "Nov. 21 , 2016") is part of the span, since the
    comma-separated pieces before a piece with a colon all belong to that piece's span. Text left
    after the last role (a piece with no colon) makes the event malformed."""
    head, _, rest = item.partition(",")
    etype, trigger = _pair(head)
    out: set[tuple[str, ...]] = {("trigger", etype, trigger)}
    pending: list[str] = []
    for piece in rest.split(","):
        if not pending and not piece.strip():
            continue  # an empty piece between arguments (", ,")
        pending.append(piece)
        if ":" in piece:
            out.add(("argument", etype, *_argument(",".join(pending))))
            pending = []
    if pending and _clean(",".join(pending)):
        raise _Malformed(item)
    return out


def _parse_item(item: str, task_type: str) -> set[tuple[str, ...]]:
    if task_type in ("ner", "et", "eet", "eea"):
        return {_pair(item)}
    if task_type == "es":
        return {(item,)}
    if task_type in ("re", "epr"):
        return {_relation(item, task_type)}
    if task_type == "ep":
        return {_entity_pair(item)}
    return _events(item)  # ee


def _check_type(task_type: str) -> str:
    t = str(task_type).lower()
    if t not in IE_TYPES:
        raise ValueError(f"unknown IE task type {task_type!r}; known: {', '.join(IE_TYPES)}")
    return t


def _parse(text: str, task_type: str, strict: bool) -> Tuples:
    t = _check_type(task_type)
    body = _clean(canonical(text))
    sep = ";"
    if t == "es" and ";" not in body:
        sep = ","  # ES spans may be comma-separated
    out: set[tuple[str, ...]] = set()
    for item in _items(body, sep):
        if item == "none":
            if t in NONE_IS_ITEM:
                out.add(NONE_ITEM)
            continue
        try:
            out |= _parse_item(item, t)
        except _Malformed:
            if strict:
                raise EvoMergeInputError(f"item {item!r} is not a {t} item") from None
    return frozenset(out)


def parse_output(text: str, task_type: str) -> Tuples:
    """The set of items a predicted answer states; malformed items are dropped, never fatal."""
    return _parse(text, task_type, strict=False)


def parse_gold(text: str, task_type: str) -> Tuples:
    """Like :func:`parse_output`, but a malformed item raises :class:`EvoMergeInputError`."""
    return _parse(text, task_type, strict=True)


def check_gold(golds: Sequence[str], task_type: str, source: str) -> None:
    """Every gold answer parses under ``task_type``, else one line naming ``source`` and the record."""
    if task_type == "exact":
        return
    for i, gold in enumerate(golds):
        try:
            parse_gold(gold, task_type)
        except EvoMergeInputError as e:
            raise EvoMergeInputError(f"{source}: record {i}: field 'output' {gold!r}: {e} "
                                     f"(declared type {task_type})") from None


def _as_tuples(x: str | Iterable[tuple[str, ...]], task_type: str, gold: bool) -> Tuples:
    if isinstance(x, str):
        return parse_gold(x, task_type) if gold else parse_output(x, task_type)
    return frozenset(map(tuple, x))


def ie_counts(
    preds: Sequence[str | Iterable[tuple[str, ...]]],
    golds: Sequence[str | Iterable[tuple[str, ...]]],
    task_type: str,
) -> tuple[int, int, int]:
    """``(true positives, predicted items, gold items)`` summed over instances."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold answers")
    tp = n_pred = n_gold = 0
    for i, (p, g) in enumerate(zip(preds, golds, strict=True)):
        try:
            gt = _as_tuples(g, task_type, gold=True)
        except EvoMergeInputError as e:
            raise EvoMergeInputError(f"record {i}: gold answer {g!r}: {e}") from None
        pt = _as_tuples(p, task_type, gold=False)
        tp += len(pt & gt)
        n_pred += len(pt)
        n_gold += len(gt)
    return tp, n_pred, n_gold


def ie_scores(
    preds: Sequence[str | Iterable[tuple[str, ...]]],
    golds: Sequence[str | Iterable[tuple[str, ...]]],
    task_type: str,
) -> dict[str, float]:
    """Micro ``{"precision", "recall", "f1"}`` over items; a zero denominator gives 0."""
    tp, n_pred, n_gold = ie_counts(preds, golds, task_type)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def exact_match(preds: Sequence[str], golds: Sequence[str]) -> float:
    """Fraction of answers equal to the gold after :func:`canonical` (0.0 for no instances)."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold answers")
    if not golds:
        return 0.0
    return sum(canonical(p) == canonical(g) for p, g in zip(preds, golds, strict=True)) / len(golds)


def task_scores(preds: Sequence[str], golds: Sequence[str], task_type: str) -> dict[str, float]:
    """IE P/R/F1 for an IE type; for ``exact`` the exact-match rate (as all three, and itself)."""
    if task_type == "exact":
        em = exact_match(preds, golds)
        return {"precision": em, "recall": em, "f1": em, "exact_match": em}
    return ie_scores(preds, golds, task_type)
