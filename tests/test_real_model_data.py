"""The real-model example's data writer: valid InstructUIE-style records, a held-out task, deterministic."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "real_model"))

import make_data  # noqa: E402
import run_example  # noqa: E402

from evojax_merge.data.records import load_records  # noqa: E402


def test_records_have_the_released_sets_shape(tmp_path):
    paths = make_data.write_all(tmp_path, train=6, validation=3, test=2, seed=0)
    assert set(paths) == set(make_data.TASKS) and make_data.HELD_OUT not in run_example.TRAIN_TASKS
    assert run_example.TARGET == make_data.HELD_OUT
    for task, splits in paths.items():
        options = [o.strip() for o in make_data.TASKS[task][0].split(",")]
        for split, n in (("train", 6), ("validation", 3), ("test", 2)):
            records = load_records(splits[split])
            assert len(records) == n
            for r in records:
                assert r["instruction"].endswith("\nAnswer:") and r["output"].startswith(" ")
                assert len(r["history"]) == 1 and r["history"][0][1].startswith(" ")
                items = [i.split(": ", 1) for i in r["output"].strip().split("; ")]
                assert all(t in options for t, _ in items)
                text = r["instruction"].split("Text: ", 1)[1]
                assert all(span in text for _, span in items)  # every gold span is in the text
    again = make_data.write_all(tmp_path / "again", train=6, validation=3, test=2, seed=0)
    for task in paths:
        assert Path(paths[task]["test"]).read_text() == Path(again[task]["test"]).read_text()


def test_search_command_uses_the_project_entry_point(tmp_path):
    cmd = run_example.search_command(tmp_path)
    assert cmd[1:3] == ["-m", "evojax_merge.train"] and "world=gguf" in cmd
    assert f"world.adapters={tmp_path}/adapters/*" in cmd and f"world.tasks.{make_data.HELD_OUT}.type=ner" in cmd
    assert f"setting.targets=[{make_data.HELD_OUT}]" in cmd


def test_search_command_composes(tmp_path):
    """Every override of the search command is a key the config has (Hydra's own check, --cfg job)."""
    import subprocess

    cmd = [*run_example.search_command(tmp_path), "--cfg", "job", "--resolve"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["world"]["model"] == {"source": "gguf", "path": None, "tokenizer": None}
    assert cfg["world"]["tasks"][make_data.HELD_OUT]["type"] == "ner"
    assert cfg["setting"]["targets"] == [make_data.HELD_OUT] and cfg["experiment"]["name"] == "real_model"
    assert set(cfg["method"]) == {"evo_merging", "lorahub", "uniform", "best_single", "base"}
