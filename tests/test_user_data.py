"""The README's user-data command line, run as written (paths substituted), and its bad-input errors.

A tiny HF Llama with a ChatML tokenizer, three PEFT adapters and InstructUIE-style RE records
with a 3-shot history, all written by the test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hf_oracles import build_hf_model, build_peft_adapter
from prompt_fixtures import chat_tokenizer, ie_record

from evojax_merge.data.records import save_records
from evojax_merge.zoo.tokenizer import save_tokenizer

pytestmark = pytest.mark.slow  # subprocesses

ROOT = Path(__file__).resolve().parents[1]
FAST = ["logger=none", "progress=false", "budget.population_size=4",
        "budget.stage1_generations=2", "budget.stage2_generations=2",
        "budget.lorahub_population_size=4", "budget.lorahub_generations=2", "budget.grid_lambdas=[1.0]",
        "budget.grid_densities=[1.0]", "budget.preselect_top_k=2", "data.validation.batch_size=4",
        "data.validation.num_batches=2", "experiment.test_examples=3", "experiment.max_new_tokens=6"]


def readme_user_data_lines() -> list[str]:
    """Every README command that takes user data (``world=files``), continuation lines joined."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    return [" ".join(line.split()) for line in text.splitlines()
            if line.lstrip().startswith("python -m evojax_merge.train") and "world=files" in line]


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    tok = chat_tokenizer()
    base = build_hf_model("llama", root / "model", seed=0, vocab_size=len(tok))
    save_tokenizer(tok, root / "model")
    for i, name in enumerate(("ner_a", "re_b", "ep_c")):
        build_peft_adapter(base, root / "adapters" / name, seed=20 + i)
    save_records(root / "val.jsonl", [ie_record(i) for i in range(8)])
    save_records(root / "test.jsonl", [ie_record(i, shots=2) for i in range(8, 11)])
    return root


def _run(args: list[str], tmp: Path, cwd: Path):
    env = {**os.environ, "EVOJAX_MERGE_CACHE": str(tmp / "cache"), "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=900)


def _readme_args(line: str, files: Path, run_dir: Path) -> list[str]:
    line = line.replace("/models/llama", str(files / "model")).replace("/adapters/*", f"{files}/adapters/*")
    line = re.sub(r"\b(val|test)\.jsonl\b", lambda m: str(files / m.group(0)), line)
    return [*shlex.split(line)[1:], *FAST, f"hydra.run.dir={run_dir}"]


def test_readme_user_data_line_runs_as_written(user_files, tmp_path):
    lines = readme_user_data_lines()
    assert lines, "README has no user-data command line"
    for k, line in enumerate(lines):
        run_dir = tmp_path / f"run{k}"
        proc = _run(_readme_args(line, user_files, run_dir), tmp_path, ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = json.loads((run_dir / "results.json").read_text())
        for method, res in results["methods"].items():
            cell = res["per_task"]["my_task"]
            assert set(cell) >= {"precision", "recall", "f1", "val_ce", "val_fitness", "prompt"}
            assert cell["prompt"]["style"] == "chat" and cell["prompt"]["dropped_turns"] == 0
            assert 0.0 <= cell["f1"] <= 1.0 and cell["val_ce"] > 0
            rows = [json.loads(x) for x in (run_dir / "predictions" / "my_task" / f"{method}.jsonl").read_text()
                    .splitlines()]
            assert len(rows) == 3 and rows[0]["gold"] == ie_record(8)["output"].strip()
            assert {"prediction", "gold_items", "predicted_items", "matched"} <= set(rows[0])
        evo = results["methods"]["evo_merging"]["per_task"]["my_task"]
        assert evo["val_ce"] <= evo["val_fitness"]  # the search's fitness adds the L1 penalty


def test_a_bad_declaration_on_the_command_line_is_one_line_exit_2(user_files, tmp_path):
    line = readme_user_data_lines()[0]
    run_dir = tmp_path / "bad"
    args = [a for a in _readme_args(line, user_files, run_dir) if not a.startswith("world.tasks.my_task.type")]
    assert len(args) == len(_readme_args(line, user_files, run_dir)) - 1
    proc = _run(args, tmp_path, ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: world.tasks.my_task.type: missing; declare the task's type, one of ner, es, et, re")
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "results.json").exists() and not (run_dir / "predictions").exists()


def _spec(user_files, model=None, **tasks):
    """``world=files`` as the world group creates it: declarations are checked here, before anything loads."""
    from evojax_merge.world.specs import FilesWorld

    return FilesWorld(model or {"source": "hf", "path": str(user_files / "model")}, f"{user_files}/adapters/*", tasks)


def _world(user_files, **tasks):
    from evojax_merge.world.specs import OpenContext

    return _spec(user_files, **tasks).open(OpenContext(max_new_tokens=6, progress=False)).world


def test_bad_task_declarations(user_files):
    from evojax_merge.errors import EvoMergeInputError

    val, test = str(user_files / "val.jsonl"), str(user_files / "test.jsonl")
    cases = [({"validation": val, "test": test}, "world.tasks.t.type: missing; declare the task's type"),
             ({"type": "pos", "validation": val, "test": test}, "world.tasks.t.type: 'pos' is not one of ner, es, et"),
             ({"type": "re", "validation": val}, "world.tasks.t.test: missing; every task needs a validation"),
             ({"type": "re", "validation": val, "test": test, "tets": test}, "world.tasks.t.tets: unknown key")]
    for spec, message in cases:
        with pytest.raises(EvoMergeInputError, match="^" + re.escape(message)):
            _spec(user_files, t=spec)
    good = {"type": "re", "validation": val, "test": test}
    for model, message in [({"source": "hf", "path": None}, "world.model.path: missing (an HF model directory)"),
                           ({"source": "onnx", "path": "m"}, "world.model.source: 'onnx' is not hf or gguf")]:
        with pytest.raises(EvoMergeInputError, match="^" + re.escape(message)):
            _spec(user_files, model=model, t=good)
    assert _spec(user_files, t=good).catalog()[1] == {"t": "re"}  # the declared type, never guessed


def test_bad_records(user_files, tmp_path):
    from evojax_merge.errors import EvoMergeInputError

    test = str(user_files / "test.jsonl")
    bad = tmp_path / "bad_gold.jsonl"
    recs = [ie_record(i) for i in range(3)]
    recs[1]["output"] = " Work for Igor Khmelnov"
    save_records(bad, recs)
    message = f"{bad}: record 1: field 'output' ' Work for Igor Khmelnov': item 'work for igor khmelnov' is not a re"
    with pytest.raises(EvoMergeInputError, match="^" + re.escape(message)):
        _world(user_files, t={"type": "re", "validation": str(bad), "test": test})
    half = tmp_path / "half.jsonl"
    half.write_text(json.dumps(ie_record(0)) + "\n" + json.dumps({**ie_record(1), "history": [["only a user"]]}) + "\n")
    with pytest.raises(EvoMergeInputError, match="^" + re.escape(f"{half}: record 1 (line 2): history[0] must be a "
                                                                 "[user, assistant] pair of strings")):
        _world(user_files, t={"type": "re", "validation": str(half), "test": test})
    world = _world(user_files, t={"type": "re", "validation": test, "test": test})
    with pytest.raises(EvoMergeInputError, match="^" + re.escape(f"{test}: record 0: the prompt and answer without any "
                                                                 "few-shot turn need ")):
        world.check_splits(["t"], max_len=30)
    world.check_splits(["t"], max_len=None)  # what the data needs: fits
