"""Records -> padded numpy batches with answer-only labels, at bucketed lengths.

A training row is the record's prompt and answer (:mod:`evojax_merge.data.prompt`: the chat
template, or ``<s> prompt answer </s>`` in the plain template); ``labels`` equal ``input_ids``
on the answer (and its closing end-of-turn / ``</s>``) and -100 elsewhere, or also on the
history answers with ``loss_on_history=True`` (LLaMA-Factory's ``mask_history=False``). Labels
are *not* shifted: position t's logits predict ``labels[t + 1]``, as in transformers and
:mod:`evojax_merge.models.loss`.

Length: a row longer than ``max_len`` loses whole few-shot turns, oldest first (counted per
record in :attr:`Encoding.dropped_turns`); a row that does not fit even without any turn is an
error naming the source file and the record index. Nothing is ever cut mid-prompt, except by
the explicit ``overflow="truncate_left"`` that only the built-in zoo's own training rows use
(their cached weights were trained that way).
``max_len=None`` means "what the data needs", up to ``cap``. Rows are right-padded to the
smallest bucket that fits the longest row (``max_len`` acts as the last bucket), so one ``jit``
compile serves every batch of that bucket.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from evojax_merge.data.prompt import Segment, resolve_style, segments, stop_text
from evojax_merge.errors import EvoMergeInputError

IGNORE_INDEX = -100
# steps of at most 1.5x: a row of 70 tokens pads to 80, not 128 (the validation forward is the search's cost)
DEFAULT_BUCKETS: tuple[int, ...] = (32, 48, 64, 80, 96, 128, 160, 192, 256, 384, 512, 768, 1024, 1536, 2048)
DEFAULT_CAP = 2048
OVERFLOW = ("drop_turns", "truncate_left")  # truncate_left: only the zoo's own training rows (legacy)


def bucket_length(n: int, buckets: Sequence[int] = DEFAULT_BUCKETS, max_len: int | None = None) -> int:
    """The smallest bucket >= ``n``; buckets above ``max_len`` are replaced by ``max_len``."""
    cands = sorted(b for b in buckets if max_len is None or b < max_len)
    if max_len is not None:
        cands.append(max_len)
    for b in cands:
        if b >= n:
            return b
    raise EvoMergeInputError(f"sequence of {n} tokens exceeds the largest bucket {cands[-1]}")


def special_ids(tokenizer: object) -> tuple[int, int | None, int | None]:
    """``(pad, bos, eos)`` ids of a transformers tokenizer or a ``tokenizers.Tokenizer``.

    A missing pad falls back to eos, then to 0; a missing bos/eos is None (not added).
    """
    if hasattr(tokenizer, "token_to_id"):  # tokenizers.Tokenizer
        bos, eos = tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>")  # type: ignore[attr-defined]
        pad = tokenizer.token_to_id("<pad>")  # type: ignore[attr-defined]
    else:
        bos = getattr(tokenizer, "bos_token_id", None)
        eos = getattr(tokenizer, "eos_token_id", None)
        pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = eos if eos is not None else 0
    return int(pad), bos, eos


def stop_id(tokenizer: object, style: str = "auto") -> int | None:
    """The token that ends a generated answer: the chat template's end of turn, else eos."""
    style = resolve_style(tokenizer, style)
    text = stop_text(tokenizer, style)
    if text:
        ids = _token_ids(tokenizer, [text])[0]
        if ids:
            return int(ids[0])
    return special_ids(tokenizer)[2]


def _token_ids(tokenizer: object, texts: list[str]) -> list[list[int]]:
    """Ids without special tokens, batched; works for both tokenizer kinds."""
    if not texts:
        return []
    if hasattr(tokenizer, "encode_batch"):  # tokenizers.Tokenizer
        return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]  # type: ignore[attr-defined]
    return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]  # type: ignore[operator]


def _pad(rows: list[list[int]], length: int, value: int) -> np.ndarray:
    out = np.full((len(rows), length), value, dtype=np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def _target_length(rows: list[list[int]], max_len: int, buckets: Sequence[int], pad_to: int | None) -> int:
    longest = max((len(r) for r in rows), default=1)
    if pad_to is not None:
        if pad_to < longest:
            raise EvoMergeInputError(f"pad_to={pad_to} is shorter than the longest row ({longest} tokens)")
        return pad_to
    return bucket_length(longest, buckets, max_len)


@dataclasses.dataclass
class Encoding:
    """Padded arrays plus what was done to fit them: few-shot turns dropped, per record."""

    arrays: dict[str, np.ndarray]
    dropped_turns: list[int]
    style: str
    max_len: int  # the limit rows had to fit

    @property
    def records_with_dropped_turns(self) -> int:
        return sum(1 for d in self.dropped_turns if d)


def _row(record: Mapping[str, object], tokenizer: object, style: str, loss_on_history: bool,
         with_answer: bool) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one record; adjacent segments of one label kind are tokenized together
    (in ``llamafactory`` style every segment on its own)."""
    segs: list[Segment] = segments(record, tokenizer, style)
    if not with_answer:
        segs = segs[:-1]
    groups: list[list] = []
    separate = style == "llamafactory"  # LLaMA-Factory tokenizes each piece of each turn on its own
    for s in segs:
        scored = s.kind == "answer" or (loss_on_history and s.kind == "history")
        if groups and groups[-1][1] == scored and not separate:
            groups[-1][0] += s.text
        else:
            groups.append([s.text, scored])
    _, bos, eos = special_ids(tokenizer)
    plain = style == "plain"
    ids: list[int] = [bos] if plain and bos is not None else []
    labels = [IGNORE_INDEX] * len(ids)
    for (_, scored), part in zip(groups, _token_ids(tokenizer, [g[0] for g in groups]), strict=True):
        ids += part
        labels += part if scored else [IGNORE_INDEX] * len(part)
    if plain and with_answer and eos is not None:
        ids.append(eos)
        labels.append(eos)
    return ids, labels


def _truncate_left(ids: list[int], labels: list[int], limit: int, head: int, where: str,
                   limit_key: str) -> tuple[list, list]:
    """The zoo's own legacy fit: prompt tokens cut just after ``<s>``; the answer never."""
    if len(ids) <= limit:
        return ids, labels
    start = next((t for t, x in enumerate(labels) if x != IGNORE_INDEX), len(ids))
    room = limit - head - (len(ids) - start)
    if room < 1:
        raise EvoMergeInputError(f"{where}: the answer needs {len(ids) - start} tokens, no room for a prompt in "
                                 f"{limit_key}")
    cut = start - head - room
    return ids[:head] + ids[head + cut:], labels[:head] + labels[head + cut:]


def limit_name(max_len: int | None, limit: int) -> str:
    """The config key behind a length limit, for errors: ``experiment.max_len=96``, or the cap when it is null."""
    if max_len is not None:
        return f"experiment.max_len={limit}"
    return f"{limit} (experiment.max_len is null: data.max_len_cap or the model's max_position_embeddings)"


def _fit_rows(records: Sequence[Mapping[str, object]], tokenizer: object, style: str, loss_on_history: bool,
              limit: int, source: str, with_answer: bool, overflow: str = "drop_turns",
              limit_key: str | None = None) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Rows within ``limit`` tokens, dropping whole history turns oldest first; ``limit_key`` names the limit
    in the error of a row that does not fit (:func:`limit_name`)."""
    limit_key = limit_key or f"max_len {limit}"
    if overflow not in OVERFLOW:
        raise ValueError(f"overflow must be one of {OVERFLOW}, got {overflow!r}")
    rows, labels, dropped = [], [], []
    if overflow == "truncate_left":
        head = 1 if style == "plain" and special_ids(tokenizer)[1] is not None else 0
        for i, record in enumerate(records):
            ids, lab = _truncate_left(*_row(record, tokenizer, style, loss_on_history, with_answer), limit, head,
                                      f"{source}: record {i}", limit_key)
            rows.append(ids)
            labels.append(lab)
            dropped.append(0)
        return rows, labels, dropped
    for i, record in enumerate(records):
        turns = list(record.get("history") or [])  # type: ignore[call-overload]
        for d in range(len(turns) + 1):
            ids, lab = _row(record if d == 0 else {**record, "history": turns[d:]}, tokenizer, style,
                            loss_on_history, with_answer)
            if len(ids) <= limit:
                break
        else:
            what = "prompt and answer" if with_answer else "prompt"
            raise EvoMergeInputError(f"{source}: record {i}: the {what} without any few-shot turn need {len(ids)} "
                                     f"tokens, more than {limit_key}")
        rows.append(ids)
        labels.append(lab)
        dropped.append(d)
    return rows, labels, dropped


def encode_records(
    records: Sequence[Mapping[str, object]],
    tokenizer: object,
    max_len: int | None = None,
    *,
    cap: int = DEFAULT_CAP,
    style: str = "auto",
    loss_on_history: bool = False,
    source: str = "<records>",
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    pad_to: int | None = None,
    overflow: str = "drop_turns",
) -> Encoding:
    """Teacher-forcing rows: ``{"input_ids", "attention_mask", "labels"}``, int32 ``[B, T]``.

    ``T`` is the bucket of the longest row, or ``pad_to`` when given; ``max_len=None`` lets the
    rows be as long as they need, up to ``cap``.
    """
    style = resolve_style(tokenizer, style)
    limit = int(max_len if max_len is not None else cap)
    pad, _, _ = special_ids(tokenizer)
    rows, labels, dropped = _fit_rows(records, tokenizer, style, loss_on_history, limit, source, True, overflow,
                                      limit_name(max_len, limit))
    length = _target_length(rows, limit, buckets, pad_to)
    arrays = {
        "input_ids": _pad(rows, length, pad),
        "attention_mask": _pad([[1] * len(r) for r in rows], length, 0),
        "labels": _pad(labels, length, IGNORE_INDEX),
    }
    return Encoding(arrays, dropped, style, limit)


def encode_generation(
    records: Sequence[Mapping[str, object]],
    tokenizer: object,
    max_len: int | None = None,
    *,
    cap: int = DEFAULT_CAP,
    style: str = "auto",
    source: str = "<records>",
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    pad_to: int | None = None,
    overflow: str = "drop_turns",
) -> Encoding:
    """Prompts for generation: ``{"input_ids", "attention_mask"}`` ``[B, T]`` and ``"lengths"`` ``[B]``.

    Each row is the record's prompt (within ``max_len``, whole few-shot turns dropped if needed),
    right-padded; the answer is to be generated from position ``lengths[b]`` on.
    """
    style = resolve_style(tokenizer, style)
    limit = int(max_len if max_len is not None else cap)
    pad, _, _ = special_ids(tokenizer)
    rows, _, dropped = _fit_rows(records, tokenizer, style, False, limit, source, False, overflow,
                                 limit_name(max_len, limit))
    length = _target_length(rows, limit, buckets, pad_to)
    arrays = {
        "input_ids": _pad(rows, length, pad),
        "attention_mask": _pad([[1] * len(r) for r in rows], length, 0),
        "lengths": np.asarray([len(r) for r in rows], dtype=np.int32),
    }
    return Encoding(arrays, dropped, style, limit)


def encode_examples(
    records: Sequence[Mapping[str, object]],
    tokenizer: object,
    max_len: int | None = 256,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    pad_to: int | None = None,
    **kwargs: object,
) -> dict[str, np.ndarray]:
    """The arrays of :func:`encode_records`."""
    return encode_records(records, tokenizer, max_len, buckets=buckets, pad_to=pad_to, **kwargs).arrays  # type: ignore[arg-type]


def encode_prompts(
    records: Sequence[Mapping[str, object]],
    tokenizer: object,
    max_len: int | None = 256,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    pad_to: int | None = None,
    **kwargs: object,
) -> dict[str, np.ndarray]:
    """The arrays of :func:`encode_generation`."""
    return encode_generation(records, tokenizer, max_len, buckets=buckets, pad_to=pad_to, **kwargs).arrays  # type: ignore[arg-type]
