"""Prompts for alpaca-style records: the tokenizer's chat template, or one plain template.

A record becomes a list of :class:`Segment` texts, each marked ``prompt``, ``history`` (an
earlier answer of a few-shot turn) or ``answer``; batching tokenizes them and puts labels on
the answer (and, with ``loss_on_history``, on the history answers).

**chat** (``data.prompt=chat``, or ``auto`` when the tokenizer has a chat template): each
``history`` pair is a user turn and an assistant turn; instruction plus input is the last user
turn; the prompt is ``apply_chat_template(messages, add_generation_prompt=True)``; the answer
is what the template writes for the assistant's reply, closed by its end-of-turn token (e.g.
``<|im_end|>``), which is also the stop token of generation.

**plain** (``data.prompt=plain``, or ``auto`` without a chat template, e.g. the zoo)::

    User: <history user turn>            (one pair of lines per history turn)
    Assistant: <history assistant turn>
    Instruction: <instruction>
    Input: <input>                       (left out when empty or already in the instruction)
    Answer:

The answer is ``" " + output``: the leading space belongs to the answer, so a BPE tokenizer sees
the same word tokens in training (prompt + answer) as in generation (prompt alone).

The user turn holds the input only when the instruction does not already contain it, and the
cue ``Answer:`` is written once: an instruction that already ends with it (the released
InstructUIE-style sets) gets no second one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from evojax_merge.errors import EvoMergeInputError

ANSWER_CUE = "Answer:"
STYLES = ("auto", "chat", "plain")


@dataclasses.dataclass(frozen=True)
class PromptSettings:
    """``data.prompt``, ``data.loss_on_history`` and ``data.max_len_cap``."""

    style: str = "auto"  # auto | chat | plain
    loss_on_history: bool = False
    max_len_cap: int = 2048  # the longest row when experiment.max_len is null (what the data needs)


@dataclasses.dataclass(frozen=True)
class Segment:
    text: str
    kind: str  # "prompt" | "history" | "answer"


def has_chat_template(tokenizer: object) -> bool:
    return bool(getattr(tokenizer, "chat_template", None)) and hasattr(tokenizer, "apply_chat_template")


def resolve_style(tokenizer: object, style: str = "auto") -> str:
    """``chat`` or ``plain``; ``chat`` without a chat template is an error naming ``data.prompt``."""
    if style not in STYLES:
        raise EvoMergeInputError(f"data.prompt: {style!r} is not one of {', '.join(STYLES)}")
    if style == "auto":
        return "chat" if has_chat_template(tokenizer) else "plain"
    if style == "chat" and not has_chat_template(tokenizer):
        raise EvoMergeInputError("data.prompt: chat, but the tokenizer has no chat template (use plain or auto)")
    return style


def _history(record: Mapping[str, object]) -> list[tuple[str, str]]:
    return [(str(u).strip(), str(a).strip()) for u, a in record.get("history") or []]  # type: ignore[union-attr]


def question(record: Mapping[str, object]) -> tuple[str, str]:
    """``(instruction, input)``, stripped; the input is empty when the instruction already holds it."""
    instruction = str(record.get("instruction", "")).strip()
    text_input = str(record.get("input") or "").strip()
    if text_input and text_input in instruction:
        text_input = ""
    return instruction, text_input


def format_prompt(record: Mapping[str, object]) -> str:
    """The plain prompt: history turns, instruction, input, then the answer cue once."""
    return "".join(s.text for s in plain_segments(record) if s.kind != "answer")


def format_answer(record: Mapping[str, object]) -> str:
    """The plain target text: a space, then the stripped ``output``."""
    return " " + str(record.get("output", "")).strip()


def plain_segments(record: Mapping[str, object]) -> list[Segment]:
    out: list[Segment] = []
    for user, assistant in _history(record):
        out += [Segment(f"User: {user}\nAssistant:", "prompt"), Segment(f" {assistant}", "history"),
                Segment("\n", "prompt")]
    instruction, text_input = question(record)
    cued = instruction.endswith(ANSWER_CUE)
    if cued:
        instruction = instruction[: -len(ANSWER_CUE)].rstrip()
    text = f"Instruction: {instruction}\n" + (f"Input: {text_input}\n" if text_input else "") + ANSWER_CUE
    out += [Segment(text, "prompt"), Segment(format_answer(record), "answer")]
    return out


def _render(tokenizer: object, messages: list[dict], generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        messages, tokenize=False, add_generation_prompt=generation_prompt)
    return str(text)


def _reply(tokenizer: object, messages: list[dict], reply: str) -> tuple[str, str]:
    """``(generation prompt, the reply's text)``: the reply as the template closes it."""
    prompt = _render(tokenizer, messages, True)
    full = _render(tokenizer, [*messages, {"role": "assistant", "content": reply}], False)
    if not full.startswith(prompt) or reply not in full[len(prompt):]:
        raise EvoMergeInputError("data.prompt=chat: this chat template does not render an answer after its "
                                 "generation prompt; use data.prompt=plain")
    tail = full[len(prompt):]
    end = tail.index(reply) + len(reply)
    closure = tail[end:].rstrip()
    if not closure:
        closure = str(getattr(tokenizer, "eos_token", "") or "")
    return prompt, tail[:end] + closure


def chat_segments(record: Mapping[str, object], tokenizer: object) -> list[Segment]:
    """Segments whose concatenation is the chat rendering of the record and its answer."""
    messages: list[dict] = []
    out: list[Segment] = []
    done = ""
    for user, assistant in _history(record):
        messages.append({"role": "user", "content": user})
        prompt, reply = _reply(tokenizer, messages, assistant)
        out += [Segment(prompt[len(done):], "prompt"), Segment(reply, "history")]
        done = prompt + reply
        messages.append({"role": "assistant", "content": assistant})
    instruction, text_input = question(record)
    messages.append({"role": "user", "content": f"{instruction}\n{text_input}" if text_input else instruction})
    prompt, reply = _reply(tokenizer, messages, str(record.get("output", "")).strip())
    if not prompt.startswith(done):
        raise EvoMergeInputError("data.prompt=chat: this chat template rewrites earlier turns; use data.prompt=plain")
    return [*out, Segment(prompt[len(done):], "prompt"), Segment(reply, "answer")]


def segments(record: Mapping[str, object], tokenizer: object, style: str) -> list[Segment]:
    """The record as prompt/history/answer segments in ``style`` (``chat`` or ``plain``)."""
    if style == "chat":
        return chat_segments(record, tokenizer)
    return plain_segments(record)


def stop_text(tokenizer: object, style: str) -> str | None:
    """The text that closes an answer: the chat template's end of turn, or None (use eos)."""
    if style != "chat":
        return None
    reply = _reply(tokenizer, [{"role": "user", "content": "x"}], "y")[1]
    return reply[1:] or None


def history_leaks(records: Sequence[Mapping[str, object]]) -> list[int]:
    """Indices of records whose own answer appears in one of their history turns (not ``None``)."""
    from evojax_merge.eval.metrics import canonical

    out = []
    for i, r in enumerate(records):
        answer = canonical(str(r.get("output", "")))
        if not answer or answer == "none":
            continue
        if any(answer in canonical(a) for _, a in _history(r)):
            out.append(i)
    return out
