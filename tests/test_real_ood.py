"""The real experiment's driver and config (experiments/real/, conf/experiment/real_ood.yaml) on records the tests
write themselves, in the authors' file names; no test reads ../shared.

Fast: the fixed-seed splits, their one-line errors, the units and their commands, the config as the engine builds
it. Slow: the whole driver end to end (splits, a pool trained by the pool trainer, two OOD targets, the own-adapter
runs, REPORT.md) on a tiny GGUF model, stopped and resumed.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "experiments" / "real"))

import prepare  # noqa: E402
import run as real_run  # noqa: E402

from evojax_merge.errors import EvoMergeInputError  # noqa: E402

NAMES = ["Ann Lee", "Bo Chan", "Cy Park", "Di Roy", "Ed Fox", "Flo Kim", "Gus Orr"]
PLACES = ["Oslo", "Lima", "Rome", "Kiev", "Bonn"]
SMALL = ("conll04", "mit-movie", "wikineural")


def _records(kind: str, n: int) -> list[dict]:
    out = []
    for i in range(n):
        p, loc = NAMES[i % len(NAMES)], PLACES[(3 * i) % len(PLACES)]
        text = f"{p} went to {loc} ."
        if kind == "re":
            answer = f" ({p},live in,{loc})"
            instr = f"Find relations (live in). Text: {text} Answer:"
        else:
            answer = f" person: {p}; location: {loc}"
            instr = f"Find entities (person, location). Text: {text} Answer:"
        out.append({"instruction": instr, "input": text, "output": answer,
                    "history": [[f"Find entities. Text: Al Ma went to {loc} . Answer:", " person: Al Ma"]]})
    return out


def write_sets(root: Path, names=SMALL, n: int = 14) -> Path:
    """The authors' file names (gzip-compressed, as distributed) with a few invented records each."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        stem, kind, _ = prepare.SETS[name]
        with gzip.open(root / f"{stem}.json.gz", "wt") as fh:
            json.dump(_records(kind, n), fh)
    return root


def test_splits_are_fixed_disjoint_and_stated(tmp_path):
    data = write_sets(tmp_path / "sets")
    meta = prepare.prepare(data, tmp_path / "out", (5, 3, 4), seed=0, history="drop", only=SMALL)
    for name in SMALL:
        train = json.loads((tmp_path / "out" / "train" / f"{name}.json").read_text())
        val = json.loads((tmp_path / "out" / name / "validation.json").read_text())
        test = json.loads((tmp_path / "out" / name / "test.json").read_text())
        assert (len(train), len(val), len(test)) == (5, 3, 4)
        keys = [json.dumps(r, sort_keys=True) for r in train + val + test]
        assert len(set(keys)) == 12 and all(r["history"] == [] for r in train + val + test)
        assert meta["sets"][name]["type"] == prepare.SETS[name][1] and meta["sets"][name]["records"] == 14
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*.json")}
    prepare.prepare(data, tmp_path / "out", (5, 3, 4), seed=0, history="drop", only=SMALL)  # same bytes again
    assert before == {p: p.read_bytes() for p in (tmp_path / "out").rglob("*.json")}
    other = prepare.prepare(data, tmp_path / "seed1", (5, 3, 4), seed=1, history="keep", only=SMALL)
    assert other["history"] == "keep"
    assert json.loads((tmp_path / "seed1" / "conll04" / "test.json").read_text()) != json.loads(
        (tmp_path / "out" / "conll04" / "test.json").read_text())
    with pytest.raises(EvoMergeInputError, match="splits.json: written from other inputs"):
        prepare.prepare(data, tmp_path / "out", (5, 3, 4), seed=2, history="drop", only=SMALL)


@pytest.mark.parametrize("change,message", [
    ("no_dir", "data_dir: .*nothing is not a directory"),
    ("no_set", "no FabNER_sample300.json or FabNER_sample300.json.gz"),
    ("too_few", "conll04: 14 records, fewer than validation 10 \\+ test 10 \\+ 1"),
    ("unknown", "--only: unknown set 'ace05'"),
])
def test_bad_input_is_one_line_naming_the_key_or_file(tmp_path, change, message):
    data = write_sets(tmp_path / "sets")
    kw = {"sizes": (5, 3, 4), "only": SMALL}
    if change == "no_dir":
        data = tmp_path / "nothing"
    elif change == "no_set":
        kw["only"] = ("fabner",)
    elif change == "too_few":
        kw["sizes"] = (5, 10, 10)
    else:
        kw["only"] = ("ace05",)
    with pytest.raises(EvoMergeInputError, match=message) as err:
        prepare.prepare(data, tmp_path / "out", **kw)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out" / "splits.json").exists()


def test_driver_units_and_their_commands(tmp_path):
    data = write_sets(tmp_path / "sets")
    with pytest.raises(EvoMergeInputError, match="real.data_dir: .* is not a directory"):
        real_run.Driver(tmp_path / "work", tmp_path / "missing")
    with pytest.raises(EvoMergeInputError, match="--targets: 'nyt' is not among the sets"):
        real_run.Driver(tmp_path / "work", data, targets=("nyt",), sets=SMALL)
    assert real_run.default_data_dir() == (REPO / ".." / "shared" / "data" / "bmm-ie").resolve()
    d = real_run.Driver(tmp_path / "work", data, targets=("conll04", "mit-movie"), sets=SMALL,
                        report=tmp_path / "report")
    units = dict(d.units())
    assert list(units) == ["splits", "adapter/conll04", "own/conll04", "adapter/mit-movie", "own/mit-movie",
                           "adapter/wikineural", "own/wikineural", "ood/conll04", "ood/mit-movie", "report"]
    assert units["adapter/mit-movie"][units["adapter/mit-movie"].index("--chunk-index") + 1] == "1"
    ood = units["ood/mit-movie"]
    assert "+experiment=real_ood" in ood and "setting.targets=[mit-movie]" in ood and "~world.tasks.conll04" in ood
    adapters = next(a for a in ood if a.startswith("world.adapters="))
    assert all(f"adapters/{s}" in adapters for s in SMALL)  # the engine's OOD setting leaves the target's own out
    own = units["own/wikineural"]
    assert "setting=id" in own and "method=[base,best_single]" in own
    assert next(a for a in own if a.startswith("world.adapters=")).endswith("adapters/wikineural]")
    assert not d.done("splits") and not d.complete("ood/conll04")
    gpu = dict(real_run.Driver(tmp_path / "w2", data, profile="gpu", model="/models/llama", sets=SMALL,
                               targets=("conll04",)).units())
    assert "budget.stage2_generations=40" in gpu["ood/conll04"] and "world=files" in gpu["ood/conll04"]
    with pytest.raises(EvoMergeInputError, match="--profile: 'tpu'"):
        real_run.Driver(tmp_path / "work", data, profile="tpu")


def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    from evojax_merge.world.registry import register_configs

    register_configs()  # world/files_tasks, as the train entry registers it
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_the_config_builds_the_rows_and_the_budget_it_states(tmp_path):
    from evojax_merge.runner import build

    d = real_run.Driver(tmp_path / "work", write_sets(tmp_path / "sets"), sets=SMALL, targets=("mit-movie",))
    cmd = dict(d.units())["ood/mit-movie"]
    overrides = [a for a in cmd[cmd.index("+experiment=real_ood"):] if not a.startswith("hydra.")]
    cfg = _compose(*overrides)
    spec, world, setting = build.experiment_spec(cfg), build.build_world(cfg), build.build_setting(cfg)
    assert (spec.name, spec.test_examples, spec.max_len, spec.test_batch_size) == ("real_ood", 50, 384, 8)
    assert set(build.build_methods(cfg)) == {"base", "best_single", "uniform", "task_arithmetic", "ties", "dare",
                                             "breadcrumbs", "della", "lorahub", "evo_merging"}
    assert list(world.tasks) == ["mit-movie"] and setting.targets == ("mit-movie",)
    val = build.validation_config(cfg)
    assert (val.batch_size, val.num_batches, val.by_length, val.bucket_step) == (4, 4, True, 16)
    assert cfg.data.prompt == "llamafactory" and cfg.budget.population_size == 4
    own = dict(d.units())["own/wikineural"]
    own_cfg = _compose(*[a for a in own[own.index("+experiment=real_ood"):] if not a.startswith("hydra.")])
    own_setting = build.build_setting(own_cfg)
    assert own_setting.experts == ("wikineural",) and not own_setting.multitask
    assert set(build.build_methods(own_cfg)) == {"base", "best_single"}
    default = _compose("+experiment=real_ood")  # alone: the CoNLL04 target on the default work directory
    assert list(build.build_world(default).tasks) == ["conll04"]


@pytest.mark.slow  # subprocesses: the trainer and the engine
def test_the_driver_end_to_end_on_a_tiny_model_resumes_and_reports(tmp_path):
    from gguf_files import byte_level_vocab, write_tiny_gguf
    from hf_oracles import build_hf_model

    hf = build_hf_model("llama", tmp_path / "hf", vocab_size=len(byte_level_vocab()[0]), intermediate_size=128)
    gguf = write_tiny_gguf(hf, tmp_path / "tiny.gguf")
    data = write_sets(tmp_path / "sets", n=20)
    work, report = tmp_path / "work", tmp_path / "report"
    tiny = ["experiment.test_examples=4", "experiment.max_new_tokens=8", "experiment.test_batch_size=3",
            "budget.population_size=3", "budget.stage1_generations=1", "budget.stage2_generations=1",
            "data.validation.batch_size=2", "data.validation.num_batches=2", "budget.grid_lambdas=[1.0]"]
    cmd = [sys.executable, str(REPO / "experiments/real/run.py"), str(work), "--data-dir", str(data), "--model",
           str(gguf), "--sets", ",".join(SMALL), "--targets", "conll04,mit-movie", "--report", str(report),
           "--with-adapters", "--sizes", "6,4,4", "--", *tiny]
    env = {**os.environ, "WANDB_MODE": "offline"}
    first = subprocess.run([*cmd[:3], "--only", "adapter/conll04", *cmd[3:]], capture_output=True, text=True,
                           env=env, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (work / "adapters" / "conll04" / "adapter_model.safetensors").is_file()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "adapter/conll04: done before, skipped" in proc.stdout and "splits: done before, skipped" in proc.stdout
    text = (report / "REPORT.md").read_text()
    assert "Targets finished: 2 of 6" in text and "Evo-Merging" in text and "own adapter (ID reference)" in text
    summary = json.loads((report / "summary.json").read_text())
    assert set(summary["per_target"]) == {"conll04", "mit-movie"} and set(summary["own"]) == set(SMALL)
    ood = json.loads((work / "runs" / "ood" / "conll04" / "results.json").read_text())
    assert ood["methods"]["evo_merging"]["per_task"]["conll04"]["pool_size"] == 2  # the pool minus its own adapter
    assert ood["memory"]["peak_rss_gb"] > 0 and "padding" in ood["methods"]["base"]["per_task"]["conll04"]["prompt"]
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done before, skipped") == 9
    # the report directory alone (results, predictions, unit records, adapters) resumes in an empty WORK
    assert {p.name for p in (report / "adapters").iterdir()} == set(SMALL)
    assert (report / "conll04" / "predictions" / "conll04" / "evo_merging.jsonl").is_file()
    fresh = [*cmd[:2], str(tmp_path / "work2"), "--restore", str(report), *cmd[3:]]
    moved = subprocess.run(fresh, capture_output=True, text=True, env=env, timeout=600)
    assert moved.returncode == 0, moved.stdout[-2000:] + moved.stderr[-2000:]
    assert moved.stdout.count("done before, skipped") == 8 and "splits: started" in moved.stdout
    assert "restored from" in moved.stdout and "ood/conll04" in moved.stdout.splitlines()[0]
    rebuilt = json.loads((report / "summary.json").read_text())
    assert rebuilt["average_f1"] == summary["average_f1"]  # the same table from the restored WORK
    # without the adapters they are trained again, and must be the ones the restored results were made with
    bare = tmp_path / "bare"
    shutil.copytree(report, bare, ignore=shutil.ignore_patterns("adapters"))
    retrain = [*cmd[:2], str(tmp_path / "work3"), "--restore", str(bare), *cmd[3:]]
    again = subprocess.run(retrain, capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert again.stdout.count("done before, skipped") == 5 and "adapter/wikineural: started" in again.stdout
    sums = json.loads((bare / "adapters.sha256.json").read_text())
    sums["conll04"] = "0" * 64  # a pool that is not the one the results were made with
    (bare / "adapters.sha256.json").write_text(json.dumps(sums))
    shutil.rmtree(tmp_path / "work3" / "runs")
    (tmp_path / "work3" / "units" / "ood__conll04.json").unlink()
    wrong = subprocess.run(retrain, capture_output=True, text=True, env=env, timeout=600)
    assert wrong.returncode == 2 and "differs from the adapter the restored results were made with" in wrong.stderr
    assert wrong.stderr.strip().count("\n") == 0  # one line
