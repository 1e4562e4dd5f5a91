"""Prompts for alpaca-style records: LLaMA-Factory's rendering, the tokenizer's chat template, or one plain template.

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

**llamafactory** (``data.prompt=llamafactory``): the tokens LLaMA-Factory trains on, with its
alpaca converter and its template. **Adapters trained with LLaMA-Factory, as the Evo-Merging
authors' were, need this style**; ``chat`` and ``plain`` differ from it in the input, the spaces
and (for Llama 3.1) the system turn. The converter: each ``history`` pair is an earlier user and
assistant turn, verbatim; the last user turn is ``instruction + "\n" + input`` (the instruction
alone when the input is empty, even when the instruction already holds the input); nothing is
stripped, so a leading space of a history answer or of ``output`` is kept. The template:

- a Llama 3 tokenizer (one with ``<|start_header_id|>``, ``<|end_header_id|>`` and ``<|eot_id|>``)
  gets LLaMA-Factory's ``llama3`` template, which the authors trained with: ``bos``, then per turn
  ``<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n``
  and ``{answer}<|eot_id|>``, no system turn. It is *not* Llama 3.1's own chat template, which
  adds a "Cutting Knowledge Date" system turn and trims every message;
- any other tokenizer gets its own chat template as LLaMA-Factory reads one when no template is
  named (``parse_template``): the template is rendered with placeholders and split into a prefix,
  a system turn with the template's default system text, a user turn (ending with the generation
  prompt) and an assistant turn; contents go into those slots verbatim, so a template's ``trim``
  does not apply. For SmolLM2 that is ChatML with its default system turn, and the answer is
  ``{answer}<|im_end|>\n``.

Each turn is tokenized on its own (the first one as prefix, system and user pieces), as
LLaMA-Factory does; the answer's end-of-turn token is also the stop token of generation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from evojax_merge.errors import EvoMergeInputError

ANSWER_CUE = "Answer:"
STYLES = ("auto", "chat", "plain", "llamafactory")
LLAMA3_MARKERS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
_CONTENT = "\x00evojax_merge:content\x00"  # a slot's placeholder: no template trims or rewrites it


@dataclasses.dataclass(frozen=True)
class PromptSettings:
    """``data.prompt``, ``data.loss_on_history`` and ``data.max_len_cap``."""

    style: str = "auto"  # auto | chat | plain | llamafactory
    loss_on_history: bool = False
    max_len_cap: int = 2048  # the longest row when experiment.max_len is null (what the data needs)


@dataclasses.dataclass(frozen=True)
class Segment:
    text: str
    kind: str  # "prompt" | "history" | "answer"


def has_chat_template(tokenizer: object) -> bool:
    return bool(getattr(tokenizer, "chat_template", None)) and hasattr(tokenizer, "apply_chat_template")


def _has_tokens(tokenizer: object, tokens: Sequence[str]) -> bool:
    """Whether every one of ``tokens`` is a token of ``tokenizer`` (either tokenizer kind)."""
    if hasattr(tokenizer, "token_to_id"):  # tokenizers.Tokenizer
        return all(tokenizer.token_to_id(t) is not None for t in tokens)  # type: ignore[attr-defined]
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}  # type: ignore[attr-defined]
    return all(t in vocab for t in tokens)


def resolve_style(tokenizer: object, style: str = "auto") -> str:
    """``chat``, ``plain`` or ``llamafactory``; a style the tokenizer cannot render is an error naming
    ``data.prompt``."""
    if style not in STYLES:
        raise EvoMergeInputError(f"data.prompt: {style!r} is not one of {', '.join(STYLES)}")
    if style == "auto":
        return "chat" if has_chat_template(tokenizer) else "plain"
    if style == "chat" and not has_chat_template(tokenizer):
        raise EvoMergeInputError("data.prompt: chat, but the tokenizer has no chat template (use plain or auto)")
    if style == "llamafactory" and not (has_chat_template(tokenizer) or _has_tokens(tokenizer, LLAMA3_MARKERS)):
        raise EvoMergeInputError("data.prompt: llamafactory, but the tokenizer has no chat template and is not a "
                                 "Llama 3 tokenizer (use plain or auto)")
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


@dataclasses.dataclass(frozen=True)
class LlamaFactoryTemplate:
    """LLaMA-Factory's slots of one template; ``_CONTENT`` marks where a turn's content goes.

    ``prefix`` opens the conversation (e.g. ``bos``), ``system`` is written before the first user
    turn when ``default_system`` is not empty, ``user`` ends with the generation prompt and
    ``assistant`` is the reply closed by the end of turn."""

    name: str  # "llama3" or "tokenizer" (parsed from the tokenizer's chat template)
    prefix: str
    system: str
    default_system: str
    user: str
    assistant: str

    @property
    def closure(self) -> str:
        """What follows the reply: the end-of-turn text (e.g. ``<|eot_id|>``, ``<|im_end|>\\n``)."""
        return self.assistant.split(_CONTENT, 1)[1]


def _llama3_template(tokenizer: object) -> LlamaFactoryTemplate:
    """LLaMA-Factory's ``llama3`` template (``src/llamafactory/data/template.py``), no default system."""
    header = "<|start_header_id|>{}<|end_header_id|>\n\n"
    bos = getattr(tokenizer, "bos_token", None) or ""
    return LlamaFactoryTemplate(
        "llama3", bos, header.format("system") + _CONTENT + "<|eot_id|>", "",
        header.format("user") + _CONTENT + "<|eot_id|>" + header.format("assistant"), _CONTENT + "<|eot_id|>")


def _parsed_template(tokenizer: object) -> LlamaFactoryTemplate:
    """The tokenizer's chat template read into slots the way LLaMA-Factory reads one without a named template."""
    def fail(what: str) -> EvoMergeInputError:
        return EvoMergeInputError(f"data.prompt=llamafactory: this chat template {what}; use data.prompt=chat")

    prefix = str(tokenizer.decode(tokenizer.encode("")))  # type: ignore[attr-defined]  # e.g. bos

    def render(messages: list[dict], generation_prompt: bool) -> str:
        text = _render(tokenizer, messages, generation_prompt)
        if not text.startswith(prefix):
            raise fail(f"does not start with the tokenizer's prefix {prefix!r}")
        return text[len(prefix):]

    user_msg = {"role": "user", "content": _CONTENT}
    user_full = render([user_msg], True)  # may hold a default system turn
    pair = render([user_msg, {"role": "assistant", "content": _CONTENT}], False)
    if not pair.startswith(user_full):
        raise fail("does not render the reply after its generation prompt")
    assistant = pair[len(user_full):].lstrip("\n")
    try:
        system = render([{"role": "system", "content": _CONTENT}], False)
        empty = render([{"role": "system", "content": ""}, user_msg], True)
    except EvoMergeInputError:
        raise
    except Exception:  # noqa: BLE001  (a template that refuses a system role has no system slot)
        system, empty = "", ""
    user, default = user_full, ""
    if system.count(_CONTENT) == 1 and len(user_full) > len(empty):  # a default system turn precedes the user's
        head, tail = system.split(_CONTENT)
        if not empty.startswith(head + tail):
            raise fail("writes an empty system turn that is not its system slot")
        user = empty[len(head + tail):]
        block = user_full[: len(user_full) - len(user)]
        if not (user_full.endswith(user) and block.startswith(head) and block.endswith(tail)):
            raise fail("writes its default system turn in a form this parser does not know")
        default = block[len(head): len(block) - len(tail)]
    if user.count(_CONTENT) != 1 or assistant.count(_CONTENT) != 1:
        raise fail("does not write each message's content exactly once")
    return LlamaFactoryTemplate("tokenizer", prefix, system, default, user, assistant)


_TEMPLATES: dict[tuple, LlamaFactoryTemplate] = {}  # parsed once per tokenizer, not once per record


def llamafactory_template(tokenizer: object) -> LlamaFactoryTemplate:
    """``llama3`` for a Llama 3 tokenizer, else the tokenizer's own chat template (see the module docstring)."""
    key = (id(tokenizer), getattr(tokenizer, "chat_template", None), getattr(tokenizer, "bos_token", None))
    if key not in _TEMPLATES:
        if _has_tokens(tokenizer, LLAMA3_MARKERS):
            _TEMPLATES[key] = _llama3_template(tokenizer)
        elif not has_chat_template(tokenizer):
            raise EvoMergeInputError("data.prompt: llamafactory, but the tokenizer has no chat template and is not "
                                     "a Llama 3 tokenizer (use plain or auto)")
        else:
            _TEMPLATES[key] = _parsed_template(tokenizer)
    return _TEMPLATES[key]


def llamafactory_messages(record: Mapping[str, object]) -> list[tuple[str, str]]:
    """LLaMA-Factory's alpaca converter: ``(role, content)`` turns, verbatim; the last is the answer."""
    out: list[tuple[str, str]] = []
    for user, assistant in record.get("history") or []:  # type: ignore[union-attr]
        out += [("user", str(user)), ("assistant", str(assistant))]
    query = [str(record[k]) for k in ("instruction", "input") if record.get(k)]
    return [*out, ("user", "\n".join(query)), ("assistant", str(record.get("output", "")))]


def llamafactory_segments(record: Mapping[str, object], tokenizer: object) -> list[Segment]:
    """One segment per piece LLaMA-Factory tokenizes on its own: the first turn's prefix, system and
    user pieces, then each turn; history answers are ``history``, the last reply is the ``answer``."""
    t = llamafactory_template(tokenizer)
    messages = llamafactory_messages(record)
    out: list[Segment] = []
    if t.prefix:
        out.append(Segment(t.prefix, "prompt"))
    if t.default_system:
        out.append(Segment(t.system.replace(_CONTENT, t.default_system), "prompt"))
    for i, (role, content) in enumerate(messages):
        if role == "user":
            out.append(Segment(t.user.replace(_CONTENT, content), "prompt"))
        else:
            out.append(Segment(t.assistant.replace(_CONTENT, content), "answer" if i == len(messages) - 1
                               else "history"))
    return out


def segments(record: Mapping[str, object], tokenizer: object, style: str) -> list[Segment]:
    """The record as prompt/history/answer segments in ``style`` (``chat``, ``llamafactory`` or ``plain``)."""
    if style == "chat":
        return chat_segments(record, tokenizer)
    if style == "llamafactory":
        return llamafactory_segments(record, tokenizer)
    return plain_segments(record)


def stop_text(tokenizer: object, style: str) -> str | None:
    """The text that closes an answer: the template's end of turn, or None (use eos)."""
    if style == "llamafactory":
        return llamafactory_template(tokenizer).closure or None
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
