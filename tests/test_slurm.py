"""The SLURM templates parse, and the Hydra launcher configs compose without warnings."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((ROOT / "slurm").glob("*.sbatch"))


def test_all_templates_present():
    assert {p.name for p in TEMPLATES} >= {"single.sbatch", "array.sbatch", "multinode.sbatch"}


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_sbatch_template_parses(template):
    proc = subprocess.run(["bash", "-n", str(template)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = template.read_text()
    assert text.startswith("#!/bin/bash") and "#SBATCH --signal=USR1@" in text and "#SBATCH --requeue" in text
    assert "python -m evojax_merge.train" in text and "resume=true" in text


def test_multinode_template_initialises_jax_distributed():
    assert "distributed=true" in (ROOT / "slurm" / "multinode.sbatch").read_text()


@pytest.mark.parametrize("launcher,target", [
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ("local", "hydra._internal.core_plugins.basic_launcher.BasicLauncher"),
])
def test_launcher_config_composes(launcher, target):
    if launcher == "slurm":
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no schema-matching or version_base deprecation warnings
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name=None, overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == target
    if launcher == "slurm":
        assert cfg.hydra.launcher.signal_delay_s == 90 and cfg.hydra.launcher.max_num_timeout > 0
