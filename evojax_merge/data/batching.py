"""Records -> padded numpy batches with answer-only labels, at bucketed lengths.

A training sequence is ``<s> prompt answer </s>``; ``labels`` equal ``input_ids`` on the answer
and ``</s>`` and -100 elsewhere (prompt, ``<s>``, padding). Labels are *not* shifted: position
t's logits predict ``labels[t + 1]``, as in transformers and :mod:`evojax_merge.models.loss`.

Rows are right-padded to the smallest bucket that fits the longest row (``max_len`` acts as the
last bucket), so one ``jit`` compile serves every batch of that bucket. Too-long rows lose
prompt tokens from the left (just after ``<s>``); the answer is never cut.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from evojax_merge.data.prompt import format_answer, format_prompt
from evojax_merge.errors import EvoMergeInputError

IGNORE_INDEX = -100
DEFAULT_BUCKETS: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)


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


def encode_examples(
    records: Sequence[Mapping[str, object]],
    tokenizer: object,
    max_len: int = 256,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    pad_to: int | None = None,
) -> dict[str, np.ndarray]:
    """``{"input_ids", "attention_mask", "labels"}``, int32 ``[B, T]``, for teacher forcing.

    ``T`` is the bucket of the longest row, or ``pad_to`` when given (e.g. one fixed length for a
    whole validation set). A row whose answer alone does not fit in ``max_len`` is an error.
    """
    pad, bos, eos = special_ids(tokenizer)
    head = [bos] if bos is not None else []
    tail = [eos] if eos is not None else []
    prompts = _token_ids(tokenizer, [format_prompt(r) for r in records])
    answers = _token_ids(tokenizer, [format_answer(r) for r in records])
    ids_rows: list[list[int]] = []
    label_rows: list[list[int]] = []
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        answer = a + tail
        room = max_len - len(head) - len(answer)
        if room < 1:
            raise EvoMergeInputError(
                f"record {i}: answer has {len(answer)} tokens, no room for a prompt in max_len {max_len}"
            )
        p = p[-room:]  # left truncation keeps the instruction's end and the input next to the answer
        ids_rows.append(head + p + answer)
        label_rows.append([IGNORE_INDEX] * (len(head) + len(p)) + answer)
    length = _target_length(ids_rows, max_len, buckets, pad_to)
    input_ids = _pad(ids_rows, length, pad)
    return {
        "input_ids": input_ids,
        "attention_mask": _pad([[1] * len(r) for r in ids_rows], length, 0),
        "labels": _pad(label_rows, length, IGNORE_INDEX),
    }


def encode_prompts(
    records: Sequence[Mapping[str, object]],
    tokenizer: object,
    max_len: int = 256,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    pad_to: int | None = None,
) -> dict[str, np.ndarray]:
    """``{"input_ids", "attention_mask"}`` ``[B, T]`` and ``"lengths"`` ``[B]`` for generation.

    Each row is ``<s> prompt`` (left-truncated to ``max_len``), right-padded; the answer is to be
    generated from position ``lengths[b]`` on.
    """
    pad, bos, _ = special_ids(tokenizer)
    head = [bos] if bos is not None else []
    if max_len <= len(head):
        raise EvoMergeInputError(f"max_len {max_len} leaves no room for a prompt")
    prompts = _token_ids(tokenizer, [format_prompt(r) for r in records])
    rows = [head + p[-(max_len - len(head)) :] for p in prompts]  # left truncation
    length = _target_length(rows, max_len, buckets, pad_to)
    return {
        "input_ids": _pad(rows, length, pad),
        "attention_mask": _pad([[1] * len(r) for r in rows], length, 0),
        "lengths": np.asarray([len(r) for r in rows], dtype=np.int32),
    }


def _target_length(rows: list[list[int]], max_len: int, buckets: Sequence[int], pad_to: int | None) -> int:
    longest = max((len(r) for r in rows), default=1)
    if pad_to is not None:
        if pad_to < longest:
            raise EvoMergeInputError(f"pad_to={pad_to} is shorter than the longest row ({longest} tokens)")
        return pad_to
    return bucket_length(longest, buckets, max_len)
