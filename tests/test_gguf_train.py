"""``world=gguf`` through the Hydra entry point: a tiny GGUF base, PEFT adapters, user data files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from gguf_files import byte_level_vocab, write_tiny_gguf
from hf_oracles import build_hf_model, build_peft_adapter

from evojax_merge.data.records import save_records

pytestmark = pytest.mark.slow  # subprocesses

VOCAB = len(byte_level_vocab()[0])
BASE_NAME = "my-org/tiny-gguf-base"


def _records(n: int, offset: int) -> list[dict]:
    names = ["Ann Lee", "Bo Chan", "Cy Park", "Di Roy", "Ed Fox", "Flo Kim"]
    places = ["Oslo", "Lima", "Rome", "Kiev"]
    shot = ["Find entities. Text: Al Ma went to Bonn . Answer:", " person: Al Ma; location: Bonn"]
    out = []
    for i in range(offset, offset + n):
        p, loc = names[i % len(names)], places[i % len(places)]
        out.append({"instruction": f"Find entities. Text: {p} went to {loc} . Answer:", "input": "",
                    "output": f" person: {p}; location: {loc}",
                    "history": [shot]})
    return out


def _train(tmp_path, *overrides):
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "evojax_merge.train", *overrides, "progress=false", "logger=none"],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def tiny_gguf_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf_world")
    hf = build_hf_model("llama", root / "hf", vocab_size=VOCAB, intermediate_size=128)
    gguf_path = write_tiny_gguf(hf, root / "tiny.gguf")
    for i in range(3):
        d = build_peft_adapter(hf, root / "adapters" / f"NER_src{i}", seed=20 + i, targets=["q_proj", "v_proj"])
        cfg = json.loads((d / "adapter_config.json").read_text())
        cfg.update(base_model_name_or_path=BASE_NAME, task_type="CAUSAL_LM")
        (d / "adapter_config.json").write_text(json.dumps(cfg))
    save_records(root / "data" / "validation.jsonl", _records(8, 0))
    save_records(root / "data" / "test.jsonl", _records(4, 8))
    return root, gguf_path


def test_model_gguf_runs_the_search_and_exports_faithfully(tiny_gguf_world, tmp_path):
    root, gguf_path = tiny_gguf_world
    out = tmp_path / "run"
    proc = _train(tmp_path, "world=gguf", f"world.model.path={gguf_path}", f"world.adapters={root}/adapters/*",
                  "world.tasks.NER_target.type=ner",  # world.tasks is open: a new task needs no "+"
                  f"world.tasks.NER_target.validation={root}/data/validation.jsonl",
                  f"world.tasks.NER_target.test={root}/data/test.jsonl", "setting.targets=[NER_target]",
                  "experiment.max_new_tokens=6", "experiment.test_examples=4",
                  "method=[evo_merging,base]", "budget.population_size=3",
                  "budget.stage1_generations=1", "budget.stage2_generations=1",
                  "data.validation.batch_size=4", "data.validation.num_batches=2", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"evo_merging", "base"}
    assert results["world"]["kind"] == "files" and set(results["methods"]["base"]["per_task"]) == {"NER_target"}
    merged = out / "merged_adapters" / "NER_target__evo_merging"
    cfg = json.loads((merged / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == BASE_NAME and cfg["task_type"] == "CAUSAL_LM"
    assert sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]


def test_model_gguf_missing_file_is_one_line_error(tiny_gguf_world, tmp_path):
    root, _ = tiny_gguf_world
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
    proc = _train(tmp_path, "world=gguf", f"world.model.path={tmp_path}/nothing.gguf",
                  f"world.adapters={root}/adapters/*", "world.tasks.NER_target.type=ner",
                  f"world.tasks.NER_target.validation={root}/data/validation.jsonl",
                  f"world.tasks.NER_target.test={root}/data/test.jsonl", "setting.targets=[NER_target]",
                  "method=[evo_merging,base]", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {tmp_path}/nothing.gguf: GGUF file not found"
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "results.json").exists()
