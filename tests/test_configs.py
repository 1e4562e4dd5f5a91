"""Every experiment config composes, with Hydra's own check (`--cfg job`), and no deprecation warning."""

import subprocess
import sys

import pytest
import yaml

pytestmark = pytest.mark.slow  # subprocesses

EXPERIMENTS = ["ood", "id", "distractors", "pool_size", "val_size", "ablation", "smoke", "dam", "sakana"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(experiment):
    proc = subprocess.run([sys.executable, "-m", "evojax_merge.train", f"+experiment={experiment}", "--cfg", "job",
                           "--resolve"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "eprecat" not in proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["experiment"]["name"] == experiment
    # every selected method names its class; Evo's own settings stay the paper's under the budget
    assert cfg["method"] and all("_target_" in m for m in cfg["method"].values())
    evo = cfg["method"]["evo_merging"]
    assert evo["sigma0"] == 0.05 and evo["l1_weight"] == 0.05
    if experiment == "ablation":
        assert set(cfg["method"]) == {"evo_merging", "evo_no_denoise", "evo_no_scale", "evo_no_sign_flip",
                                      "evo_neither", "evo_prune_B", "evo_prune_both"}
        assert cfg["method"]["evo_prune_B"]["prune"] == "B" and not cfg["method"]["evo_no_denoise"]["denoise"]
    if experiment == "distractors":
        assert cfg["experiment"]["distractor_kinds"] == ["distractor", "anti"]
        assert len(cfg["experiment"]["experts"]) <= 10


def test_defaults_are_the_papers():
    proc = subprocess.run([sys.executable, "-m", "evojax_merge.train", "--cfg", "job", "--resolve"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = yaml.safe_load(proc.stdout)
    m = cfg["method"]
    evo = m["evo_merging"]
    assert (evo["population_size"], evo["sigma0"], evo["stage1_generations"], evo["stage2_generations"]) == (
        20, 0.05, 20, 40)
    assert evo["alpha_bounds"] == [0.0, 1.0] and evo["beta_bounds"] == [-1.5, 1.5] and evo["prune"] == "A"
    assert cfg["data"]["validation"] == {"batch_size": 15, "num_batches": 20, "resample": False, "seed": 0}
    # the paper's LoraHub row is Evo's stage 2 alone with Evo's budget; the original is a row of its own
    assert m["lorahub"]["_target_"] == evo["_target_"] and m["lorahub"]["denoise"] is False
    assert m["lorahub"]["stage2_generations"] == 40 and m["lorahub"]["population_size"] == 20
    orig = m["lorahub_original"]
    assert orig["population_size"] * orig["generations"] == 40 and orig["num_modules"] == 20
    assert m["ties"]["lambdas"] == [0.1, 0.3, 0.5, 0.7, 1.0] and m["ties"]["densities"] == [0.5, 0.7, 0.9, 1.0]


def test_every_method_config_builds_its_class():
    """Each conf/method/<name>.yaml that is one method creates its class through _target_."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from evojax_merge.methods.base import MergeMethod
    from evojax_merge.methods.registry import build_methods

    conf = Path(__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        for path in sorted((conf / "method").glob("*.yaml")):
            cfg = compose("config", overrides=[f"method={path.stem}"])
            methods = build_methods(OmegaConf.to_container(cfg.method, resolve=True))
            assert methods and all(isinstance(m, MergeMethod) for m in methods.values()), path.name
