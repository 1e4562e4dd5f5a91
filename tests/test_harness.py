"""The research harness around the smoke experiment (world=ie_tiny): W&B offline history, multirun sweeps,
result.json."""

import json
import os
import subprocess
import sys

import pytest
from wandb_offline import history_rows

pytestmark = pytest.mark.slow


@pytest.fixture
def train(smoke_cache):
    def run(*overrides, env=None):
        return subprocess.run(
            [sys.executable, "-m", "evojax_merge.train", *overrides, "progress=false"],
            capture_output=True, text=True, timeout=900,
            env={**os.environ, "EVOJAX_MERGE_CACHE": str(smoke_cache), **(env or {})},
        )

    return run


def test_wandb_offline_history_has_one_row_per_generation(tmp_path, train):
    run_dir = tmp_path / "run"
    proc = train("+experiment=smoke", "logger=wandb", "method=black_box", f"hydra.run.dir={run_dir}",
                 env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    rows = history_rows(files[0])
    result = json.loads((run_dir / "result.json").read_text())
    # smoke: 1 target (ie_tiny's gate target) x (Evo-Merging 2 + 2 generations, LoraHub 2 generations)
    assert len(rows) == result["generations_done"] == 6
    assert set(result["searches"]) == {"ner_medicine/evo_merging", "ner_medicine/lorahub"}
    for row in rows:
        stats = [k for k in row if k.endswith(("/best", "/mean", "/std", "/sigma"))]
        assert len(stats) == 4
        assert any(k.endswith(("/alpha/_type", "/beta/_type")) for k in row)  # the genome histogram
    alpha_rows = [r for r in rows if any("stage1_denoise/alpha" in k for k in r)]
    assert len(alpha_rows) == 2  # stage 1's 2 generations


def test_wandb_takes_the_merged_adapters_of_pool_and_validation_size_cells(tmp_path, train):
    """Labels such as ``evo_merging@N=2@V=8`` name W&B artifacts (which allow only letters, digits, - _ .)."""
    from evojax_merge.tracking import artifact_name

    assert artifact_name("ner_medicine-evo_merging@N=3@V=25") == "ner_medicine-evo_merging-N-3-V-25"
    assert artifact_name("id-evo_merging[no_scale]") == "id-evo_merging-no_scale"
    assert artifact_name("a/b c.d_e-f") == "a-b-c.d_e-f"
    run_dir = tmp_path / "run"
    proc = train("+experiment=smoke", "logger=wandb", "method=[evo_merging]", "setting.targets=[ner_medicine]",
                 "setting.pool_sizes=[2]", "setting.val_sizes=[8]", f"hydra.run.dir={run_dir}",
                 env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    [adapter] = (run_dir / "merged_adapters").iterdir()
    assert adapter.name == "ner_medicine__evo_merging@N=2@V=8" and (adapter / "adapter_config.json").is_file()
    assert len(list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))) == 1


def test_multirun_sweep_over_two_seeds(tmp_path, train):
    sweep = tmp_path / "sweep"
    proc = train("-m", "+experiment=smoke", "method=evo", "seed=0,1", f"hydra.sweep.dir={sweep}",
                  "hydra/launcher=local")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent for p in sweep.rglob("results.json"))
    assert len(runs) == 2
    genomes = []
    for run in runs:
        results = json.loads((run / "results.json").read_text())
        assert set(results["methods"]) == {"evo_merging"}
        assert (run / ".hydra" / "config.yaml").is_file()  # the resolved config is kept with each run
        genomes.append(json.loads((run / "result.json").read_text())["best_genome"])
    assert genomes[0] != genomes[1]  # different seeds searched differently
    assert "Deprecat" not in proc.stderr
