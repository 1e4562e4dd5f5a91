"""User records on disk: loading, one-line validation errors, atomic saving."""

import json
import os

import pytest

from evojax_merge.data import records as records_mod
from evojax_merge.data.records import load_records, save_records, validate_records
from evojax_merge.errors import EvoMergeInputError

GOOD = [
    {"instruction": "Name the city.", "input": "anna lives in paris.", "output": "paris"},
    {"instruction": "Say hi.", "output": "hi", "history": [["hello", "hi there"]], "task": "x"},
]


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _error(path) -> str:
    with pytest.raises(EvoMergeInputError) as info:
        load_records(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_load_json_and_jsonl(tmp_path):
    as_json = load_records(_write(tmp_path / "d.json", json.dumps(GOOD)))
    lines = "\n".join(json.dumps(r) for r in GOOD)
    as_jsonl = load_records(_write(tmp_path / "d.jsonl", lines.replace("\n", "\n\n") + "\n"))
    assert as_json == as_jsonl
    assert as_json[1]["input"] == "" and as_json[1]["history"] == [["hello", "hi there"]]
    assert as_json[1]["task"] == "x"  # unknown keys are kept
    assert as_json[0] == GOOD[0]


def test_missing_output_names_file_and_record(tmp_path):
    bad = [GOOD[0], {"instruction": "x", "input": "y"}]
    msg = _error(_write(tmp_path / "d.json", json.dumps(bad)))
    assert "record 1" in msg and "missing required field 'output'" in msg


def test_missing_instruction_in_jsonl_names_record_and_line(tmp_path):
    text = json.dumps(GOOD[0]) + "\n\n" + json.dumps({"output": "z"}) + "\n"
    msg = _error(_write(tmp_path / "d.jsonl", text))
    assert "record 1 (line 3)" in msg and "'instruction'" in msg


def test_non_list_history(tmp_path):
    bad = [{"instruction": "a", "output": "b", "history": "hello"}]
    msg = _error(_write(tmp_path / "d.json", json.dumps(bad)))
    assert "record 0" in msg and "'history' must be a list" in msg and "got str" in msg


def test_history_turn_that_is_not_a_pair(tmp_path):
    bad = [GOOD[0], GOOD[0], {"instruction": "a", "output": "b", "history": [["u", "a"], ["only"]]}]
    msg = _error(_write(tmp_path / "d.json", json.dumps(bad)))
    assert "record 2" in msg and "history[1]" in msg


def test_non_string_field(tmp_path):
    bad = [{"instruction": "a", "output": 3}]
    msg = _error(_write(tmp_path / "d.jsonl", json.dumps(bad[0])))
    assert "record 0" in msg and "'output' must be a string, got int" in msg


@pytest.mark.parametrize("name,text", [("e.json", ""), ("e.jsonl", "  \n\n"), ("e.json", "\n")])
def test_empty_file(tmp_path, name, text):
    assert "file is empty" in _error(_write(tmp_path / name, text))


def test_empty_list(tmp_path):
    assert "no records" in _error(_write(tmp_path / "d.json", "[]"))


def test_malformed_json(tmp_path):
    msg = _error(_write(tmp_path / "d.json", '[{"instruction": "a",\n "output": }]'))
    assert msg == f"{tmp_path / 'd.json'}: line 2, column 12: expected a value (invalid JSON)"
    text = json.dumps(GOOD[0]) + "\n{not json\n"
    msg = _error(_write(tmp_path / "d.jsonl", text))
    assert msg == f"{tmp_path / 'd.jsonl'}: line 2, column 2 (record 1): expected a key in double quotes (invalid JSON)"


def test_unterminated_string_is_one_complete_line(tmp_path):
    # json's own message ends mid-phrase ("Unterminated string starting at"); ours says what is wrong
    text = '[\n {"instruction": "Name the city.",\n  "output": "paris}]'
    msg = _error(_write(tmp_path / "data.json", text))
    assert msg == f"{tmp_path / 'data.json'}: line 3, column 13: unterminated string: no closing quote (invalid JSON)"
    msg = _error(_write(tmp_path / "data.json", text + "\n"))  # the string runs into the line break
    assert msg == (f"{tmp_path / 'data.json'}: line 3, column 21: line break inside a string, perhaps a missing "
                   "closing quote (invalid JSON)")
    lines = json.dumps(GOOD[0]) + "\n" + '{"instruction": "a", "output": "b\tc"}\n'
    msg = _error(_write(tmp_path / "data.jsonl", lines))
    assert msg.startswith(f"{tmp_path / 'data.jsonl'}: line 2, column 34 (record 1): invalid control character")
    assert msg.endswith("(invalid JSON)")


def test_wrong_top_level_and_record_types(tmp_path):
    assert "expected a JSON list" in _error(_write(tmp_path / "d.json", json.dumps(GOOD[0])))
    msg = _error(_write(tmp_path / "l.jsonl", "[1, 2]\n"))
    assert "record 0" in msg and "expected an object" in msg


def test_missing_file_and_bad_suffix(tmp_path):
    assert "file not found" in _error(tmp_path / "nope.jsonl")
    assert "unsupported file type '.csv'" in _error(_write(tmp_path / "d.csv", "a,b"))


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_save_round_trips_and_leaves_no_temp_files(tmp_path, suffix):
    path = tmp_path / "sub" / f"out{suffix}"
    save_records(path, GOOD)
    save_records(path, GOOD[:1])  # overwrite in place
    assert load_records(path) == validate_records(GOOD[:1])
    assert sorted(os.listdir(path.parent)) == [path.name]


def test_save_rejects_bad_records_and_keeps_old_file(tmp_path):
    path = save_records(tmp_path / "d.jsonl", GOOD)
    before = path.read_bytes()
    with pytest.raises(EvoMergeInputError, match="record 0: missing required field 'output'"):
        save_records(path, [{"instruction": "a"}])
    assert path.read_bytes() == before


def test_failed_replace_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = save_records(tmp_path / "d.json", GOOD)
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(records_mod.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_records(path, GOOD[:1])
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["d.json"]


@pytest.mark.parametrize("name", ["d.json.gz", "d.jsonl.gz"])
def test_gzip_compressed_files_read_like_plain_ones(tmp_path, name):
    import gzip

    text = json.dumps(GOOD) if name == "d.json.gz" else "".join(json.dumps(r) + "\n" for r in GOOD)
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode("utf-8")))
    assert load_records(path) == load_records(_write(tmp_path / name.removesuffix(".gz"), text))
    assert len(load_records(path)) == len(GOOD)


def test_corrupt_or_truncated_gzip_is_one_line_naming_the_file(tmp_path):
    import gzip

    fake = tmp_path / "fake.json.gz"
    fake.write_text(json.dumps(GOOD))  # not compressed at all
    msg = _error(fake)
    assert msg.startswith(f"{fake}: corrupt gzip file: ") and "\n" not in msg
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(("".join(json.dumps(r) + "\n" for r in GOOD) * 50).encode())[:-12])
    msg = _error(cut)
    assert msg.startswith(f"{cut}: corrupt gzip file: ") and "\n" not in msg
    bad = tmp_path / "bad.json.gz"
    bad.write_bytes(gzip.compress(b'[{"instruction": "a", "output": "b"}'))  # valid gzip, invalid JSON
    assert _error(bad).startswith(f"{bad}: line 1, column ")
    assert "unsupported file type '.csv.gz'" in _error(_write(tmp_path / "d.csv.gz", "a"))
