"""The one plain-text prompt template for alpaca-style records.

    User: <history user turn>            (one pair of lines per history turn)
    Assistant: <history assistant turn>
    Instruction: <instruction>
    Input: <input>                       (left out when the input is empty)
    Answer:

The answer is ``" " + output``: the leading space belongs to the answer, so a BPE tokenizer
sees the same word tokens in training (prompt + answer) as in generation (prompt alone), and
``format_prompt(r) + format_answer(r)`` is the full training text. A fixed plain template (no
chat template) because the zoo tokenizer is the project's own.
"""

from __future__ import annotations

from collections.abc import Mapping

ANSWER_CUE = "Answer:"


def format_prompt(record: Mapping[str, object]) -> str:
    """History turns, instruction, input, then the answer cue (no trailing space)."""
    parts: list[str] = []
    for user, assistant in record.get("history") or []:  # type: ignore[union-attr]
        parts.append(f"User: {str(user).strip()}\nAssistant: {str(assistant).strip()}\n")
    parts.append(f"Instruction: {str(record.get('instruction', '')).strip()}\n")
    text_input = str(record.get("input") or "").strip()
    if text_input:
        parts.append(f"Input: {text_input}\n")
    parts.append(ANSWER_CUE)
    return "".join(parts)


def format_answer(record: Mapping[str, object]) -> str:
    """The target text: a space, then the stripped ``output``."""
    return " " + str(record.get("output", "")).strip()
