"""Every experiment config composes, with Hydra's own check (`--cfg job`), and no deprecation warning."""

import subprocess
import sys

import pytest
import yaml

EXPERIMENTS = ["ood", "id", "distractors", "pool_size", "val_size", "ablation", "smoke", "paper"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(experiment):
    proc = subprocess.run([sys.executable, "-m", "evojax_merge.train", f"+experiment={experiment}", "--cfg", "job"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "eprecat" not in proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["experiment"]["name"] == experiment
    # the paper's search settings stay the defaults underneath the experiment's budget
    assert cfg["strategy"]["evo_merging"]["population_size"] in (20, 4)
    assert cfg["strategy"]["evo_merging"]["sigma0"] == 0.05
    assert cfg["strategy"]["evo_merging"]["l1_weight"] == 0.05
    if experiment == "ablation":
        assert "no_denoise" in cfg["experiment"]["variants"] and cfg["method"]["names"] == ["evo_merging"]
    if experiment == "distractors":
        assert len(cfg["experiment"]["extra_adapters"]) == 6 and len(cfg["experiment"]["experts"]) <= 10
    if experiment == "paper":
        assert cfg["experiment"]["seeds"] == [0, 1, 2] and len(cfg["experiment"]["suite"]) == 6


def test_defaults_are_the_papers():
    proc = subprocess.run([sys.executable, "-m", "evojax_merge.train", "--cfg", "job"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = yaml.safe_load(proc.stdout)
    evo = cfg["strategy"]["evo_merging"]
    assert (evo["population_size"], evo["sigma0"], evo["stage1_generations"], evo["stage2_generations"]) == (
        20, 0.05, 20, 40)
    assert evo["alpha_bounds"] == [0.0, 1.0] and evo["beta_bounds"] == [-1.5, 1.5]
    assert cfg["data"]["validation"] == {"batch_size": 15, "num_batches": 20, "resample": False, "seed": 0}
    assert cfg["strategy"]["lorahub"]["population_size"] * cfg["strategy"]["lorahub"]["generations"] == 40
    assert cfg["strategy"]["grid"]["lambdas"] == [0.1, 0.3, 0.5, 0.7, 1.0]
    assert cfg["strategy"]["grid"]["densities"] == [0.5, 0.7, 0.9, 1.0]
