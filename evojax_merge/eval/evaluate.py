"""Records in, generated answers and scores out: the glue between generation and metrics.

Prompts that do not fit ``max_len`` lose whole few-shot turns, oldest first
(:mod:`evojax_merge.data.batching`). That is never silent here: :func:`generate_for_population`
fills its ``fit`` argument with :func:`prompt_fit`'s counts and logs one warning line when any
prompt lost a turn, or when a prompt plus ``max_new_tokens`` passes the model's
``max_position_embeddings``; :func:`fit_prompts` gives the same counts without generating.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evojax_merge.data.batching import (
    DEFAULT_BUCKETS,
    DEFAULT_CAP,
    Encoding,
    bucket_length,
    encode_generation,
    special_ids,
    stop_id,
)
from evojax_merge.eval.generate import greedy_generate
from evojax_merge.eval.metrics import task_scores
from evojax_merge.hostmem import release_freed_memory
from evojax_merge.lora.adapter import LoraAdapter, LoraStack
from evojax_merge.models.llama import LlamaForCausalLM

log = logging.getLogger(__name__)
_WARNED: set[tuple] = set()  # fit warnings already logged (one line per source and outcome, not per call)


@partial(nnx.jit, static_argnames=("max_new_tokens", "eos_id", "pad_id"))
def _generate_chunk(model, adapters, prompt_ids, lengths, max_new_tokens, eos_id, pad_id):
    graphdef, params = nnx.split(model)

    def one(adapter, ids, lens):
        return greedy_generate(nnx.merge(graphdef, params), ids, lens, max_new_tokens, eos_id, pad_id, adapter)

    return jax.vmap(one)(adapters, prompt_ids, lengths)


@partial(nnx.jit, static_argnames=("max_new_tokens", "eos_id", "pad_id"))
def _generate_rows(model, adapter, prompt_ids, lengths, max_new_tokens, eos_id, pad_id):
    """One candidate (``adapter`` or None) on one batch of rows, the prefill's logits at the last token only."""
    return greedy_generate(model, prompt_ids, lengths, max_new_tokens, eos_id, pad_id, adapter, last_only=True)


def _row_batches(lengths: np.ndarray, batch_rows: int, limit: int) -> list[tuple[np.ndarray, int]]:
    """``(row indices, width)`` of the batches of ``batch_rows`` rows sorted by length (stably), each at the
    bucket of its longest row (at most ``limit``): a few compiled shapes, little padding."""
    order = np.argsort(lengths, kind="stable")
    out = []
    for start in range(0, len(order), batch_rows):
        rows = order[start:start + batch_rows]
        out.append((rows, bucket_length(int(lengths[rows].max()), DEFAULT_BUCKETS, limit)))
    return out


def _generate_by_rows(model, tokenizer, adapters, per_candidate, encodings, batch_rows: int, max_new_tokens: int,
                      eos: int, pad: int) -> list[list[str]]:
    """Each candidate alone, its prompts in batches of ``batch_rows`` by length (:func:`_row_batches`)."""
    outputs: list[list[str]] = []
    for p, recs in enumerate(per_candidate):
        if not recs:
            outputs.append([])
            continue
        enc = encodings[id(recs)][0].arrays
        lengths = np.asarray(enc["lengths"])
        adapter = None if adapters is None else _stack_take(adapters, np.asarray([p]))
        if adapter is not None:
            adapter = jax.tree.map(lambda x: x[0], adapter)
        answers: list[str | None] = [None] * len(recs)
        for rows, width in _row_batches(lengths, batch_rows, int(enc["input_ids"].shape[1])):
            ids = np.full((len(rows), width), pad, np.int32)
            ids[:, : min(width, enc["input_ids"].shape[1])] = np.asarray(enc["input_ids"])[rows, :width]
            toks = _generate_rows(model, adapter, jnp.asarray(ids), jnp.asarray(lengths[rows]),
                                  max_new_tokens=max_new_tokens, eos_id=eos, pad_id=pad)
            for i, text in zip(rows.tolist(), decode_answers(tokenizer, np.asarray(toks), eos), strict=True):
                answers[i] = text
            del toks
            release_freed_memory()  # else glibc keeps each batch's freed buffers: 3.5 GB peak, not 2.6 (hostmem)
        outputs.append([str(a) for a in answers])
    return outputs


@partial(nnx.jit, static_argnames=("max_new_tokens", "eos_id", "pad_id"))
def _generate_plain(model, prompt_ids, lengths, max_new_tokens, eos_id, pad_id):
    return greedy_generate(model, prompt_ids, lengths, max_new_tokens, eos_id, pad_id, None)


def decode_answers(tokenizer, rows, eos_id: int | None) -> list[str]:
    """Generated token rows -> answer strings: cut at the first EOS, special tokens dropped, stripped.

    The one decoding rule of local runs and the merge service, so both give identical strings."""
    out = []
    for row in rows:
        ids = list(row.tolist() if hasattr(row, "tolist") else row)
        if eos_id is not None and eos_id in ids:
            ids = ids[: ids.index(eos_id)]
        out.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    return out


def _stack_take(stack: LoraStack | LoraAdapter, idx: np.ndarray) -> LoraAdapter:
    """A population of adapters (leading axis) taken at ``idx``."""
    return LoraAdapter(A={m: a[idx] for m, a in stack.A.items()}, B={m: b[idx] for m, b in stack.B.items()},
                       scale=jnp.asarray(stack.scale)[idx])


def prompt_fit(encodings: Sequence[tuple[Encoding, Sequence[Mapping]]]) -> dict:
    """What fitting did to prompts: one dict over ``(encoding, records)`` pairs.

    ``records``: prompts encoded; ``records_with_dropped_turns`` of them lost ``dropped_turns`` of
    their ``history_turns`` few-shot turns (``most_dropped`` at most in one record) to fit
    ``max_len``; ``longest_prompt`` is the longest prompt in tokens after fitting."""
    dropped = [int(d) for enc, _ in encodings for d in enc.dropped_turns]
    longest = [int(np.max(enc.arrays["lengths"])) for enc, recs in encodings if len(recs)]
    first = encodings[0][0] if encodings else None
    return {
        "style": first.style if first else None,
        "max_len": first.max_len if first else None,
        "records": len(dropped),
        "records_with_dropped_turns": sum(1 for d in dropped if d),
        "dropped_turns": sum(dropped),
        "history_turns": sum(len(r.get("history") or []) for _, recs in encodings for r in recs),
        "most_dropped": max(dropped, default=0),
        "longest_prompt": max(longest, default=0),
    }


def fit_prompts(records: Sequence[Mapping], tokenizer, max_len: int | None = 128, *, style: str = "auto",
                cap: int = DEFAULT_CAP, source: str = "<records>", overflow: str = "drop_turns") -> dict:
    """:func:`prompt_fit` of ``records``' generation prompts, without generating (and without logging)."""
    enc = encode_generation(list(records), tokenizer, max_len, style=style, cap=cap, source=source,
                            overflow=overflow)
    return prompt_fit([(enc, records)])


def _note_fit(stats: dict, source: str, context: int | None) -> None:
    """One warning line when a prompt lost a few-shot turn or the prompt plus its answer passes ``context``."""
    over = context is not None and stats["longest_prompt"] + stats["max_new_tokens"] > context
    if not stats["dropped_turns"] and not over:
        return
    key = (source, stats["style"], stats["max_len"], stats["records"], stats["records_with_dropped_turns"],
           stats["dropped_turns"], over)
    if key in _WARNED:
        return
    _WARNED.add(key)
    parts = []
    if stats["dropped_turns"]:
        parts.append(f"{stats['records_with_dropped_turns']} of {stats['records']} prompts lost "
                     f"{stats['dropped_turns']} of their {stats['history_turns']} few-shot turns (up to "
                     f"{stats['most_dropped']} in one) to fit max_len {stats['max_len']}")
    if over:
        parts.append(f"the longest prompt ({stats['longest_prompt']} tokens) plus max_new_tokens "
                     f"{stats['max_new_tokens']} passes the model's max_position_embeddings {context}")
    log.warning("%s: %s", source, "; ".join(parts))


def generate_for_population(
    model: LlamaForCausalLM,
    tokenizer,
    adapters: LoraStack | LoraAdapter | None,
    records: Sequence[Sequence[Mapping]] | Sequence[Mapping],
    max_len: int | None = 128,
    max_new_tokens: int = 40,
    chunk: int = 16,
    *,
    style: str = "auto",
    cap: int = DEFAULT_CAP,
    source: str = "<records>",
    overflow: str = "drop_turns",
    fit: MutableMapping | None = None,
    batch_rows: int | None = None,
) -> list[list[str]]:
    """Greedy answers of every candidate: ``out[p][i]`` answers ``records[p][i]``.

    ``adapters`` carries a leading population axis (a ``LoraStack``, or a ``LoraAdapter`` whose
    arrays are stacked). ``records`` is one list per candidate, or one shared flat list. ``None``
    generates once with the model alone (``out[0]``). Candidates run ``chunk`` at a time, in one
    vmapped call each. Prompts follow ``style`` (:mod:`evojax_merge.data.prompt`); an answer
    stops at the chat template's end-of-turn token (or eos in the plain template).

    ``fit``, when given, is cleared and filled with :func:`prompt_fit`'s counts over each distinct
    record list (a list shared by every candidate counts once), plus ``max_new_tokens``. A prompt
    that lost a few-shot turn is logged (one warning line per source and outcome).

    ``batch_rows`` (``experiment.test_batch_size``): each candidate alone, its prompts sorted by length in
    batches of that many rows, each padded to its own bucket, the prefill's vocabulary projection at the
    last prompt token only. Memory then grows with ``batch_rows``, not with candidates x records x the
    longest prompt (the same greedy answers, up to float rounding of other batch shapes). None: as before.
    """
    pad, _, _ = special_ids(tokenizer)
    eos = stop_id(tokenizer, style)
    eos = -1 if eos is None else eos
    enc_kw = {"style": style, "cap": cap, "source": source, "overflow": overflow}
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)

    def noted(encodings: list[tuple[Encoding, Sequence[Mapping]]]) -> None:
        stats = {**prompt_fit(encodings), "max_new_tokens": int(max_new_tokens)}
        _note_fit(stats, source, context)
        if fit is not None:
            fit.clear()
            fit.update(stats)

    if batch_rows is not None:
        if int(batch_rows) < 1:
            raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
        flat_lists = [list(records)] if adapters is None else (
            records if records and not isinstance(records[0], Mapping) else [records] * int(
                jnp.asarray(adapters.scale).shape[0]))
        encodings: dict[int, tuple[Encoding, Sequence[Mapping]]] = {}
        for recs in flat_lists:
            if recs and id(recs) not in encodings:
                encodings[id(recs)] = (encode_generation(list(recs), tokenizer, max_len, **enc_kw), recs)
        noted(list(encodings.values()))
        return _generate_by_rows(model, tokenizer, adapters, flat_lists, encodings, int(batch_rows),
                                 max_new_tokens, eos, pad)
    if adapters is None:
        flat = list(records)
        enc = encode_generation(flat, tokenizer, max_len, **enc_kw)
        noted([(enc, flat)])
        toks = _generate_plain(model, jnp.asarray(enc.arrays["input_ids"]), jnp.asarray(enc.arrays["lengths"]),
                               max_new_tokens=max_new_tokens, eos_id=eos, pad_id=pad)
        return [decode_answers(tokenizer, np.asarray(toks), eos)]
    num = int(jnp.asarray(adapters.scale).shape[0])
    per_candidate = records if records and not isinstance(records[0], Mapping) else [records] * num
    if len(per_candidate) != num:
        raise ValueError(f"{len(per_candidate)} record lists for {num} candidates")
    width = max(len(r) for r in per_candidate)
    # one prompt length for all candidates, so every chunk has the same shape (one compile)
    flat = [r for recs in per_candidate for r in recs]
    length = encode_generation(flat, tokenizer, max_len, **enc_kw).arrays["input_ids"].shape[1]
    prompt_ids = np.full((num, width, length), pad, np.int32)
    lengths = np.ones((num, width), np.int32)
    encodings: dict[int, tuple[Encoding, Sequence[Mapping]]] = {}
    for p, recs in enumerate(per_candidate):
        if recs:
            if id(recs) not in encodings:  # a list shared by every candidate is encoded once
                encodings[id(recs)] = (encode_generation(list(recs), tokenizer, max_len, pad_to=length, **enc_kw),
                                       recs)
            enc = encodings[id(recs)][0]
            prompt_ids[p, : len(recs)] = enc.arrays["input_ids"]
            lengths[p, : len(recs)] = enc.arrays["lengths"]
    noted(list(encodings.values()))
    outputs: list[list[str]] = []
    chunk = max(1, min(chunk, num))
    for start in range(0, num, chunk):
        idx = np.arange(start, start + chunk) % num  # the last chunk wraps around; extra rows dropped
        toks = _generate_chunk(model, _stack_take(adapters, idx), jnp.asarray(prompt_ids[idx]),
                               jnp.asarray(lengths[idx]), max_new_tokens=max_new_tokens, eos_id=eos, pad_id=pad)
        toks = np.asarray(toks)
        for j, p in enumerate(idx[: min(chunk, num - start)]):
            outputs.append(decode_answers(tokenizer, toks[j][: len(per_candidate[p])], eos))
    return outputs


def score(predictions: Sequence[str], records: Sequence[Mapping], task_type: str) -> dict[str, float]:
    """IE precision/recall/F1 for a declared IE type; exact match (as all three) for ``exact``."""
    return task_scores(predictions, [str(r["output"]) for r in records], task_type)
