"""The IE world's tokenizer (save, AutoTokenizer reload, round trip) and padded answer-only batches."""

import json

import numpy as np
import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from evojax_merge.data.batching import (
    IGNORE_INDEX,
    bucket_length,
    encode_examples,
    encode_prompts,
)
from evojax_merge.data.prompt import format_answer, format_prompt
from evojax_merge.errors import EvoMergeInputError
from evojax_merge.eval.metrics import parse_output
from evojax_merge.zoo.ie_build import world_tokenizer
from evojax_merge.zoo.ie_world import IE_TASK_TYPES, IEWorldConfig, generate_world
from evojax_merge.zoo.tokenizer import save_tokenizer

WORLD = generate_world(IEWorldConfig(domains=("news", "medicine"), train_size=25, validation_size=4, test_size=4))


def _train(task: str, n: int) -> list[dict]:
    return WORLD[task]["train"][:n]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(world_tokenizer(), out)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir):
    return AutoTokenizer.from_pretrained(str(tok_dir))


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_saved_tokenizer_reloads_through_autotokenizer(tok_dir, tok):
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    fresh = world_tokenizer()
    assert fresh.get_vocab() == tok.get_vocab()
    text = "Person: Anna Smith; (a, b)"
    assert _ids(tok, text) == _ids(fresh, text) == _ids(tok, text.lower())
    assert tok(text)["input_ids"][0] == tok.bos_token_id  # Llama-like <s> prefix by default
    assert tok.unk_token_id not in _ids(tok, "anna hayes left the onyx bloc after a vote in cedar city.")
    assert _ids(tok, "zzqx") == [tok.unk_token_id]


def test_answers_round_trip_through_decode(tok):
    assert sorted(WORLD) == sorted(f"{t}_{d}" for t in IE_TASK_TYPES for d in ("news", "medicine"))
    for task, splits in WORLD.items():
        t = task.split("_", 1)[0]
        for rec in splits["train"]:
            assert tok.unk_token_id not in _ids(tok, format_prompt(rec))
            ids = _ids(tok, rec["output"])
            assert tok.unk_token_id not in ids
            decoded = tok.decode(ids)
            assert parse_output(decoded, t) == parse_output(rec["output"], t)


def test_prompt_template():
    rec = {"instruction": " Do it. ", "input": "x y", "output": " ok ", "history": [["hi", "hello"]]}
    assert format_prompt(rec) == "User: hi\nAssistant: hello\nInstruction: Do it.\nInput: x y\nAnswer:"
    assert format_answer(rec) == " ok"
    assert format_prompt({"instruction": "Do it.", "output": "ok"}) == "Instruction: Do it.\nAnswer:"


def test_labels_mask_the_prompt_exactly(tok):
    recs = _train("et_news", 8)
    batch = encode_examples(recs, tok, max_len=256)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(v.dtype == np.int32 for v in batch.values())
    for i, rec in enumerate(recs):
        prompt = [tok.bos_token_id] + _ids(tok, format_prompt(rec))
        answer = _ids(tok, format_answer(rec)) + [tok.eos_token_id]
        n, T = len(prompt) + len(answer), batch["input_ids"].shape[1]
        assert batch["input_ids"][i, :n].tolist() == prompt + answer
        assert batch["labels"][i].tolist() == [IGNORE_INDEX] * len(prompt) + answer + [IGNORE_INDEX] * (T - n)
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (T - n)
        assert (batch["input_ids"][i, n:] == tok.pad_token_id).all()


def test_buckets_pick_the_smallest_fit(tok):
    assert [bucket_length(n) for n in (1, 32, 33, 49, 70, 100, 129, 200)] == [32, 32, 48, 64, 80, 128, 160, 256]
    assert bucket_length(170, max_len=180) == 180  # max_len is the last bucket
    with pytest.raises(EvoMergeInputError):
        bucket_length(300, buckets=(64, 128))
    short = [{"instruction": "Say.", "output": "ok"}]
    assert encode_examples(short, tok)["input_ids"].shape == (1, 32)
    recs = _train("ner_medicine", 16)
    batch = encode_examples(recs, tok, max_len=256, buckets=(32, 64, 128, 256))
    longest = int(batch["attention_mask"].sum(1).max())
    assert batch["input_ids"].shape[1] == bucket_length(longest, (32, 64, 128, 256)) >= longest
    assert encode_examples(recs, tok, pad_to=200)["labels"].shape == (16, 200)
    with pytest.raises(EvoMergeInputError, match="pad_to"):
        encode_examples(recs, tok, pad_to=10)


def test_a_row_that_cannot_fit_is_an_error_never_cut(tok):
    rec = {"instruction": "word " * 80, "input": "anna", "output": "person: anna"}
    with pytest.raises(EvoMergeInputError, match=r"^val.json: record 1: the prompt and answer without any few-shot "
                                                 r"turn need 9\d tokens, more than experiment.max_len=20$"):
        encode_examples([{"instruction": "a", "output": "b"}, rec], tok, max_len=20, source="val.json")
    with pytest.raises(EvoMergeInputError, match="record 0: the prompt without"):
        encode_prompts([rec], tok, max_len=20)


def test_zoo_legacy_truncation_cuts_the_prompt_from_the_left_never_the_answer(tok):
    rec = {"instruction": "word " * 80, "input": "anna", "output": "person: anna"}
    batch = encode_examples([rec], tok, max_len=20, overflow="truncate_left")
    ids = batch["input_ids"][0]
    answer = _ids(tok, format_answer(rec)) + [tok.eos_token_id]
    assert batch["input_ids"].shape == (1, 20) and ids[0] == tok.bos_token_id
    assert ids[-len(answer) :].tolist() == answer
    assert tok.decode(ids[-len(answer) - 5 : -len(answer)].tolist()) == "input : anna answer :"
    assert (batch["labels"][0] != IGNORE_INDEX).sum() == len(answer)
    with pytest.raises(EvoMergeInputError, match="record 0: the answer needs"):
        encode_examples([{"instruction": "a", "output": "w " * 40}], tok, max_len=20, overflow="truncate_left")
    cut = encode_prompts([rec], tok, max_len=10, overflow="truncate_left")
    assert cut["input_ids"].shape == (1, 10) and cut["lengths"][0] == 10 and cut["input_ids"][0, 0] == tok.bos_token_id


def test_encode_prompts_for_generation(tok):
    recs = _train("ner_news", 5)
    full = encode_examples(recs, tok)
    batch = encode_prompts(recs, tok)
    assert set(batch) == {"input_ids", "attention_mask", "lengths"}
    for i, rec in enumerate(recs):
        n = int(batch["lengths"][i])
        assert n == 1 + len(_ids(tok, format_prompt(rec)))
        assert batch["input_ids"][i, :n].tolist() == full["input_ids"][i, :n].tolist()
        assert batch["attention_mask"][i].sum() == n and (batch["input_ids"][i, n:] == 0).all()


def test_raw_tokenizers_object_gives_the_same_batch(tok_dir, tok):
    raw = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    recs = _train("es_medicine", 6)
    a, b = encode_examples(recs, tok), encode_examples(recs, raw)
    assert all(np.array_equal(a[k], b[k]) for k in a)
