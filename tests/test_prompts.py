"""Chat-template and plain prompts, answer/history labels, whole-turn fitting, history leaks."""

from __future__ import annotations

import pytest
from prompt_fixtures import chat_tokenizer, ie_record

from evojax_merge.data.batching import IGNORE_INDEX, encode_generation, encode_records, special_ids, stop_id
from evojax_merge.data.prompt import format_prompt, history_leaks, resolve_style
from evojax_merge.errors import EvoMergeInputError
from evojax_merge.zoo.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer()


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _messages(rec):
    msgs = []
    for user, assistant in rec["history"]:
        msgs += [{"role": "user", "content": user.strip()}, {"role": "assistant", "content": assistant.strip()}]
    return [*msgs, {"role": "user", "content": rec["instruction"].strip()}]  # the input is in the instruction


def test_chat_prompt_is_the_templates_rendering_and_the_answer_closes_the_turn(tok):
    rec = ie_record(0, shots=2)
    prompt = tok.apply_chat_template(_messages(rec), tokenize=False, add_generation_prompt=True)
    assert prompt.count("Answer:") == 3 and prompt.count(rec["input"]) == 1  # one cue per turn, input once
    gen = encode_generation([rec], tok)
    n = int(gen.arrays["lengths"][0])
    assert gen.style == "chat" and gen.arrays["input_ids"][0, :n].tolist() == _ids(tok, prompt)
    train = encode_records([rec], tok)
    answer = _ids(tok, rec["output"].strip() + "<|im_end|>")
    row, labels = train.arrays["input_ids"][0], train.arrays["labels"][0]
    m = int(train.arrays["attention_mask"][0].sum())
    assert row[:m].tolist() == _ids(tok, prompt) + answer
    assert labels[:m].tolist() == [IGNORE_INDEX] * n + answer  # answer-only, end-of-turn included
    assert (labels[m:] == IGNORE_INDEX).all()


def test_loss_on_history_scores_every_assistant_turn(tok):
    rec = ie_record(1, shots=3)
    train = encode_records([rec], tok, loss_on_history=True)
    labels = [x for x in train.arrays["labels"][0].tolist() if x != IGNORE_INDEX]
    expected = []
    for _, assistant in rec["history"]:
        expected += _ids(tok, assistant.strip() + "<|im_end|>")
    expected += _ids(tok, rec["output"].strip() + "<|im_end|>")
    assert labels == expected
    # the same tokens as the answer-only row: only the labels differ
    plain = encode_records([rec], tok)
    assert (plain.arrays["input_ids"] == train.arrays["input_ids"]).all()


def test_plain_prompt_writes_the_cue_once():
    rec = ie_record(0, shots=1)
    text = format_prompt(rec)
    assert text.count("Answer:") == 2 and text.endswith("\nAnswer:")  # the shot's and the record's
    assert "Input:" not in text and text.count(rec["input"]) == 1
    zoo_style = {"instruction": " Do it. ", "input": "x y", "output": " ok ", "history": [["hi", "hello"]]}
    assert format_prompt(zoo_style) == "User: hi\nAssistant: hello\nInstruction: Do it.\nInput: x y\nAnswer:"


def test_style_resolution(tok):
    plain_tok = build_tokenizer(["a b"])
    assert resolve_style(tok, "auto") == "chat" and resolve_style(plain_tok, "auto") == "plain"
    assert resolve_style(tok, "plain") == "plain"
    with pytest.raises(EvoMergeInputError, match="^data.prompt: chat, but the tokenizer has no chat template"):
        resolve_style(plain_tok, "chat")
    with pytest.raises(EvoMergeInputError, match="^data.prompt: 'bogus' is not one of"):
        resolve_style(tok, "bogus")
    assert stop_id(tok) == tok.convert_tokens_to_ids("<|im_end|>")
    assert stop_id(plain_tok) == special_ids(plain_tok)[2] == plain_tok.eos_token_id


def test_whole_turns_go_oldest_first_to_fit(tok):
    rec = ie_record(2, shots=3)
    lengths = [int(encode_records([{**rec, "history": rec["history"][d:]}], tok).arrays["attention_mask"].sum())
               for d in range(4)]
    assert lengths[0] > lengths[1] > lengths[2] > lengths[3]
    short = ie_record(0, shots=0)
    enc = encode_records([short, rec], tok, max_len=lengths[2])
    assert enc.dropped_turns == [0, 2] and enc.records_with_dropped_turns == 1
    kept = encode_records([{**rec, "history": rec["history"][2:]}], tok)  # the newest turn stays
    m = lengths[2]
    assert enc.arrays["input_ids"][1, :m].tolist() == kept.arrays["input_ids"][0, :m].tolist()
    assert enc.arrays["input_ids"].shape[1] == lengths[2]  # max_len is the last bucket
    auto = encode_records([short, rec], tok)  # max_len None: what the data needs
    assert auto.dropped_turns == [0, 0] and auto.arrays["input_ids"].shape[1] >= lengths[0]
    gen = encode_generation([rec], tok, max_len=lengths[1] - 5)  # the prompt alone is shorter
    assert gen.dropped_turns == [1]


def test_a_record_that_cannot_fit_zero_shot_names_file_and_record(tok):
    rec = ie_record(3, shots=2)
    zero = int(encode_records([{**rec, "history": []}], tok).arrays["attention_mask"].sum())
    with pytest.raises(EvoMergeInputError) as err:
        encode_records([{"instruction": "Find relations .", "output": "None"}, rec], tok, max_len=zero - 1,
                       source="data/val.jsonl")
    msg = str(err.value)
    assert msg == (f"data/val.jsonl: record 1: the prompt and answer without any few-shot turn need {zero} tokens, "
                   f"more than experiment.max_len={zero - 1}")  # the key to raise
    prompt_only = zero - len(_ids(tok, rec["output"].strip() + "<|im_end|>"))  # the zero-shot row less its answer
    with pytest.raises(EvoMergeInputError) as err:  # experiment.max_len null: the cap it fell back to
        encode_generation([rec], tok, max_len=None, cap=5, source="data/test.jsonl")
    assert str(err.value) == (f"data/test.jsonl: record 0: the prompt without any few-shot turn need {prompt_only} "
                              "tokens, more than 5 (experiment.max_len is null: data.max_len_cap or the model's "
                              "max_position_embeddings)")


def test_history_turn_holding_the_records_answer_is_found():
    recs = [ie_record(i, shots=2) for i in range(4)]
    recs[1]["history"][0][1] = recs[1]["output"]  # the record's own answer as its first shot's answer
    recs[3]["history"][1][1] = "  " + recs[3]["output"].upper()
    none = {**ie_record(0, shots=1), "output": "None"}
    none["history"][0][1] = "None"  # "None" answers are not leaks
    assert history_leaks([*recs, none]) == [1, 3]


def test_plain_template_loss_on_history():
    tok = build_tokenizer(["user assistant instruction input answer hi hello do it ok x y"])
    rec = {"instruction": "Do it.", "input": "x y", "output": "ok", "history": [["hi", "hello"]]}
    only = encode_records([rec], tok, style="plain")
    both = encode_records([rec], tok, style="plain", loss_on_history=True)
    assert (only.arrays["input_ids"] == both.arrays["input_ids"]).all()  # same tokens, more labels
    scored = [x for x in both.arrays["labels"][0].tolist() if x != IGNORE_INDEX]
    assert scored == _ids(tok, " hello") + _ids(tok, " ok") + [tok.eos_token_id]
    assert [x for x in only.arrays["labels"][0].tolist() if x != IGNORE_INDEX] == _ids(tok, " ok") + [tok.eos_token_id]
