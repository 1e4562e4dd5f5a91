"""The Hydra entry point end to end on the smoke experiment (the tiny IE world, world=ie_tiny), and its one-line
errors. The engine's requires/provides and unknown-key refusals are in tests/test_engine.py."""

import json
import os
import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.slow
ALL_METHODS = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "conf", "method", "all.yaml")))[
    "defaults"]


def _train(tmp_path, *overrides, cache=None):
    env = {**os.environ, "EVOJAX_MERGE_CACHE": str(cache or tmp_path / "cache"), "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "evojax_merge.train", *overrides, "progress=false"],
        capture_output=True, text=True, env=env, timeout=600,
    )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, smoke_cache):
    tmp = tmp_path_factory.mktemp("smoke")
    out = tmp / "run"
    proc = _train(tmp, "+experiment=smoke", f"hydra.run.dir={out}", cache=smoke_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_smoke_writes_results_for_every_method(smoke_run):
    out, proc = smoke_run
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == set(ALL_METHODS)
    for res in results["methods"].values():
        assert set(res) >= {"precision", "recall", "f1", "per_task"}
        assert set(res["per_task"]) == {"ner_medicine"}  # setting.targets empty: the world's gate target
        assert all(0.0 <= res[k] <= 1.0 for k in ("precision", "recall", "f1"))
    evo = results["methods"]["evo_merging"]["per_task"]
    for cell in evo.values():
        assert len(cell["alpha"]) == cell["pool_size"] == 4  # ie_tiny: 5 adapters, OOD pool of 4
        assert set(cell["stages"]) == {"stage1_denoise", "stage2_scale"}
    assert results["world"]["kind"] == "ie" and results["setting"]["name"] == "ood"
    assert "ner_medicine" in results["zoo"]["gate"]["targets"]
    assert (out / "results.md").read_text().count("|") > 20
    assert "test score x100" in proc.stdout
    merged = sorted(p.name for p in (out / "merged_adapters").iterdir())  # the three searches' merges
    assert merged == [f"ner_medicine__{m}" for m in ("evo_merging", "lorahub", "lorahub_original")]
    assert all((out / "merged_adapters" / m / "adapter_config.json").is_file() for m in merged)
    assert json.loads((out / "result.json").read_text())["seed"] == 0  # written last: the run is done


@pytest.mark.parametrize("overrides, message", [
    (["method.evo_merging.population_size=1"], "error: method.evo_merging: population_size must be >= 2"),
    (["method=nope"], "error: method: unknown option 'nope'"),
    (["method.ties._target_=evojax_merge.methods.nowhere.Ties"],
     "error: method.ties._target_: evojax_merge.methods.nowhere.Ties does not import (No module named "),
    (["+method.ties.learning_rate=0.1"], "error: method.ties.learning_rate: unknown key for evojax_merge.methods."),
    (["population_chunk=0"], "error: population_chunk: 0 is not auto, null or a positive integer"),
])
def test_impossible_config_is_one_line_error(tmp_path, overrides, message):
    run_dir = tmp_path / "run"
    proc = _train(tmp_path, "+experiment=smoke", *overrides, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(message), last
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()  # refused before any build
    assert not (run_dir / "results.json").exists()


def test_unknown_target_names_the_key(tmp_path, smoke_run):
    out, _ = smoke_run
    cache = json.loads((out / "results.json").read_text())["zoo"]["zoo_root"]
    proc = _train(tmp_path, "+experiment=smoke", "setting.targets=[ner_nowhere]",
                  f"hydra.run.dir={tmp_path / 'run'}", cache=os.path.dirname(cache))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: setting.targets: unknown task 'ner_nowhere'"


def test_remote_run_through_a_real_service(tmp_path, smoke_run):
    """world=remote: the same search over HTTP on 127.0.0.1; no weights on the client side (its catalog, the
    records and which adapter is whose, is the tiny IE world's config: world@world.catalog=ie_tiny)."""
    from pathlib import Path

    from evojax_merge.service.app import create_app
    from evojax_merge.service.provider import load_provider
    from evojax_merge.service.server import ServerThread
    from evojax_merge.service.settings import ServiceSettings

    out, _ = smoke_run
    local = json.loads((out / "results.json").read_text())
    zoo_root = Path(local["zoo"]["zoo_root"])
    key = "test-key-0123456789abcdef"
    provider = load_provider(zoo_root / "base", {"default": str(zoo_root / "adapters" / "*")})
    with ServerThread(create_app(provider, ServiceSettings(api_keys=(key,)))) as srv:
        run_dir = tmp_path / "remote"
        env_cache = tmp_path / "empty-cache"  # the client never builds or reads the zoo's weights
        proc = subprocess.run(
            [sys.executable, "-m", "evojax_merge.train", "+experiment=smoke", "world=remote",
             "world@world.catalog=ie_tiny", f"world.service.url={srv.url}", "method=black_box",
             f"hydra.run.dir={run_dir}", "progress=false"],
            capture_output=True, text=True, timeout=600,
            env={**os.environ, "EVOJAX_MERGE_API_KEY": key, "EVOJAX_MERGE_CACHE": str(env_cache)},
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not env_cache.exists()
    remote = json.loads((run_dir / "results.json").read_text())
    assert set(remote["methods"]) == {"evo_merging", "lorahub", "uniform"}
    assert remote["world"]["kind"] == "remote" and remote["world"]["catalog"]["digest"] == local["world"]["digest"]
    for method in ("evo_merging", "uniform"):
        for target, cell in remote["methods"][method]["per_task"].items():
            ref = local["methods"][method]["per_task"][target]
            assert abs(cell["val_fitness"] - ref["val_fitness"]) < 1e-4, (method, target, cell, ref)
    assert key not in (run_dir / "config_resolved.json").read_text()
    for method in ("evo_merging", "uniform"):  # the same merges answer the test questions alike
        for target, cell in remote["methods"][method]["per_task"].items():
            assert cell["f1"] == local["methods"][method]["per_task"][target]["f1"]


def test_report_on_the_smoke_run(smoke_run, tmp_path):
    """The seeded report reads a real run: provenance, adapter names, fitness, genome and cost figures."""
    from evojax_merge.report import build_report

    out, _ = smoke_run
    results = json.loads((out / "results.json").read_text())
    assert results["provenance"]["command"].startswith("python -m evojax_merge.train +experiment=smoke")
    assert len(results["provenance"]["git_commit"]) == 40
    for cell in results["methods"]["evo_merging"]["per_task"].values():
        assert len(cell["adapters"]) == 4 and len(set(cell["adapters"])) == 4 and "ner_medicine" not in cell["adapters"]
    text = build_report([out], tmp_path / "report", wandb=False).read_text()
    assert "**Only 1 seed:**" in text and "| `evo_merging` | 1 |" in text
    assert results["provenance"]["git_commit"][:12] in text
    figures = {p.name for p in (tmp_path / "report" / "figures").iterdir()}
    # every engine cell has its cost (wall time, examples forwarded): the quality-against-cost figure
    assert figures == {"f1_bars.png", "quality_vs_cost.png", *(f"{kind}_{m}.png" for kind in ("fitness", "genome")
                                                               for m in ("evo_merging", "lorahub", "lorahub_original"))}
