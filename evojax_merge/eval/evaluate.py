"""Records in, generated answers and scores out: the glue between generation and metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evojax_merge.data.batching import DEFAULT_CAP, encode_prompts, special_ids, stop_id
from evojax_merge.eval.generate import greedy_generate
from evojax_merge.eval.metrics import task_scores
from evojax_merge.lora.adapter import LoraAdapter, LoraStack
from evojax_merge.models.llama import LlamaForCausalLM


@partial(nnx.jit, static_argnames=("max_new_tokens", "eos_id", "pad_id"))
def _generate_chunk(model, adapters, prompt_ids, lengths, max_new_tokens, eos_id, pad_id):
    graphdef, params = nnx.split(model)

    def one(adapter, ids, lens):
        return greedy_generate(nnx.merge(graphdef, params), ids, lens, max_new_tokens, eos_id, pad_id, adapter)

    return jax.vmap(one)(adapters, prompt_ids, lengths)


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
) -> list[list[str]]:
    """Greedy answers of every candidate: ``out[p][i]`` answers ``records[p][i]``.

    ``adapters`` carries a leading population axis (a ``LoraStack``, or a ``LoraAdapter`` whose
    arrays are stacked). ``records`` is one list per candidate, or one shared flat list. ``None``
    generates once with the model alone (``out[0]``). Candidates run ``chunk`` at a time, in one
    vmapped call each. Prompts follow ``style`` (:mod:`evojax_merge.data.prompt`); an answer
    stops at the chat template's end-of-turn token (or eos in the plain template).
    """
    pad, _, _ = special_ids(tokenizer)
    eos = stop_id(tokenizer, style)
    eos = -1 if eos is None else eos
    enc_kw = {"style": style, "cap": cap, "source": source, "overflow": overflow}
    if adapters is None:
        flat = list(records)
        enc = encode_prompts(flat, tokenizer, max_len=max_len, **enc_kw)
        toks = _generate_plain(model, jnp.asarray(enc["input_ids"]), jnp.asarray(enc["lengths"]),
                               max_new_tokens=max_new_tokens, eos_id=eos, pad_id=pad)
        return [decode_answers(tokenizer, np.asarray(toks), eos)]
    num = int(jnp.asarray(adapters.scale).shape[0])
    per_candidate = records if records and not isinstance(records[0], Mapping) else [records] * num
    if len(per_candidate) != num:
        raise ValueError(f"{len(per_candidate)} record lists for {num} candidates")
    width = max(len(r) for r in per_candidate)
    # one prompt length for all candidates, so every chunk has the same shape (one compile)
    flat = [r for recs in per_candidate for r in recs]
    length = encode_prompts(flat, tokenizer, max_len=max_len, **enc_kw)["input_ids"].shape[1]
    prompt_ids = np.full((num, width, length), pad, np.int32)
    lengths = np.ones((num, width), np.int32)
    for p, recs in enumerate(per_candidate):
        if recs:
            enc = encode_prompts(list(recs), tokenizer, max_len=max_len, pad_to=length, **enc_kw)
            prompt_ids[p, : len(recs)] = enc["input_ids"]
            lengths[p, : len(recs)] = enc["lengths"]
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
