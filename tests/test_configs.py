"""Every experiment config composes, with Hydra's own check (`--cfg job`), and no deprecation warning; its world,
setting and methods build (nothing is trained or loaded), and the world provides what each method requires."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow  # subprocesses

CONF = Path(__file__).resolve().parent.parent / "conf"
EXPERIMENTS = ["ood", "id", "distractors", "distractors_adversarial",
               "pool_size", "val_size", "ablation", "smoke", "dam", "dam_lora", "sakana",
               "paper", "sakana_fair", "dam_fair", "real_ood", "evovlm"]
IE, SAKANA = "evojax_merge.world.specs.IEWorld", "evojax_merge.world.specs.SakanaWorld"
OOD, ID = "evojax_merge.setting.cells.OOD", "evojax_merge.setting.cells.InDomain"
CROSS = "evojax_merge.setting.cells.CrossDomain"
FILES = "evojax_merge.world.specs.FilesWorld"
VLM = "evojax_merge.world.vlm.VlmWorldSpec"
# experiment -> (its world, its setting)
WORLDS = {"ood": (IE, OOD), "id": (IE, ID), "distractors": (IE, ID), "distractors_adversarial": (IE, ID),
          "pool_size": (IE, OOD), "val_size": (IE, OOD),
          "ablation": (IE, OOD), "smoke": (IE, OOD), "dam_lora": (IE, OOD), "paper": (IE, OOD),
          "dam": (SAKANA, CROSS), "sakana": (SAKANA, CROSS), "sakana_fair": (SAKANA, CROSS),
          "dam_fair": (SAKANA, CROSS), "real_ood": (FILES, OOD), "evovlm": (VLM, CROSS)}
SAKANA_TABLE = {"base", "source_lang", "source_skill", "best_single", "sakana_ta", "sakana_ties", "sakana_dare_ties",
                "sakana_ps", "sakana_ps_acc", "sakana_dfs", "sakana_dfs_acc", "sakana_ps_dfs"}


def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    from evojax_merge.world.registry import register_configs

    register_configs()  # world/files_tasks, as the train entry registers it (world=files and world=gguf)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_every_experiment_file_is_listed():
    assert sorted(EXPERIMENTS) == sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(experiment):
    proc = subprocess.run([sys.executable, "-m", "evojax_merge.train", f"+experiment={experiment}", "--cfg", "job",
                           "--resolve"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "eprecat" not in proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["experiment"]["name"] == experiment
    assert (cfg["world"]["_target_"], cfg["setting"]["_target_"]) == WORLDS[experiment]
    # every selected method names its class; Evo's own settings stay the paper's under the budget
    assert cfg["method"] and all("_target_" in m for m in cfg["method"].values())
    if "evo_merging" in cfg["method"]:
        evo = cfg["method"]["evo_merging"]
        assert evo["sigma0"] == 0.05 and evo["l1_weight"] == 0.05
    else:
        assert experiment in ("dam", "sakana", "dam_fair", "sakana_fair", "evovlm")  # full models: no LoRA search
    if experiment == "ablation":
        assert set(cfg["method"]) == {"evo_merging", "evo_no_denoise", "evo_no_scale", "evo_no_sign_flip",
                                      "evo_neither", "evo_prune_B", "evo_prune_both"}
        assert cfg["method"]["evo_prune_B"]["prune"] == "B" and not cfg["method"]["evo_no_denoise"]["denoise"]
    if experiment == "distractors":
        assert cfg["setting"]["name"] == "distractors"
        assert cfg["setting"]["distractor_kinds"] == ["unrelated"] and cfg["setting"]["num_distractors"] == 5
        assert len(cfg["setting"]["experts"]) <= 10
    if experiment == "sakana":
        assert set(cfg["method"]) == SAKANA_TABLE and cfg["experiment"]["seeds"] == [0, 1, 2]
    if experiment == "dam":
        assert set(cfg["method"]) == {"dam", "dam_no_cos", "dam_no_kl", "soup", "sakana_ta", "sakana_ties",
                                      "sakana_ps"}
    if experiment == "evovlm":
        assert set(cfg["method"]) == {"source_vlm_a", "source_lang_b", "vlm_ta", "vlm_ties", "vlm_ps"}
        assert cfg["experiment"]["world_seeds"] == [0, 1, 2] and cfg["experiment"]["test_examples"] is None
    if experiment == "dam_lora":
        assert set(cfg["method"]) == {"dam", "dam_no_cos", "dam_no_kl", "uniform", "task_arithmetic", "ties",
                                      "evo_merging"}
        assert cfg["world"]["build"]["tasks"]["task_types"] == ["ner"]  # the tiny IE world
        assert cfg["experiment"]["seeds"] == [0, 1, 2]
    if experiment == "smoke":
        assert cfg["world"]["build"]["tasks"]["task_types"] == ["ner"] and cfg["world"]["build"]["gate"]["targets"] \
            == ["ner_medicine"]
    if experiment == "paper":
        paper = cfg["paper"]
        assert paper["tables"] == ["ood", "id", "distractors", "distractors_adversarial", "ablation", "pool_size",
                                   "val_size"]
        assert paper["world_seeds"] == list(range(10)) and paper["seeds"] == [0]
        assert paper["max_worlds"] == {"ablation": 5, "pool_size": 5, "val_size": 5}
        assert {"budget.stage2_generations=40", "world.allow_failed_gate=true"} <= set(paper["protocol"])
        assert paper["table_overrides"]["ood"] == ["setting.leave_one_out=true"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_builds_and_its_world_serves_its_methods(experiment):
    """runner/build.py as run() calls it, before anything is built: world, setting, methods, requires/provides."""
    from evojax_merge.runner import build
    from evojax_merge.runner.engine import check_methods

    cfg = _compose(f"+experiment={experiment}")
    tables = list(cfg.paper.tables) if cfg.get("paper") is not None else [experiment]
    for table in tables:  # the paper run composes each of its tables as its own command line would
        sub = _compose(f"+experiment={table}") if table != experiment else cfg
        spec, world, setting = build.experiment_spec(sub), build.build_world(sub), build.build_setting(sub)
        methods = build.build_methods(sub)
        assert spec.name == table and set(methods) == set(sub.method)
        assert (f"{type(world).__module__}.{type(world).__name__}", f"{type(setting).__module__}."
                f"{type(setting).__name__}") == WORLDS[table]
        check_methods(methods, world.provides, world.kind)  # raises (one line) if the world cannot serve one
        build.validation_config(sub)


def test_defaults_are_the_papers():
    proc = subprocess.run([sys.executable, "-m", "evojax_merge.train", "--cfg", "job", "--resolve"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = yaml.safe_load(proc.stdout)
    assert (cfg["world"]["_target_"], cfg["setting"]["_target_"]) == (IE, OOD)
    m = cfg["method"]
    evo = m["evo_merging"]
    assert (evo["population_size"], evo["sigma0"], evo["stage1_generations"], evo["stage2_generations"]) == (
        20, 0.05, 20, 40)
    assert evo["alpha_bounds"] == [0.0, 1.0] and evo["beta_bounds"] == [-1.5, 1.5] and evo["prune"] == "A"
    assert cfg["data"]["validation"] == {"batch_size": 15, "num_batches": 20, "resample": False, "seed": 0,
                                         "by_length": False}
    # the paper's LoraHub row is Evo's stage 2 alone with Evo's budget; the original is a row of its own
    assert m["lorahub"]["_target_"] == evo["_target_"] and m["lorahub"]["denoise"] is False
    assert m["lorahub"]["stage2_generations"] == 40 and m["lorahub"]["population_size"] == 20
    orig = m["lorahub_original"]
    assert orig["population_size"] * orig["generations"] == 40 and orig["num_modules"] == 20
    assert m["ties"]["lambdas"] == [0.1, 0.3, 0.5, 0.7, 1.0] and m["ties"]["densities"] == [0.5, 0.7, 0.9, 1.0]


def test_every_method_config_builds_its_class():
    """Each conf/method/<name>.yaml creates its classes through _target_, and some world provides what each needs."""
    from evojax_merge.methods.base import MergeMethod
    from evojax_merge.runner.build import build_methods
    from evojax_merge.world.specs import FilesWorld, IEWorld, RemoteWorld, SakanaWorld
    from evojax_merge.world.vlm import VlmWorldSpec

    worlds = (IEWorld, SakanaWorld, FilesWorld, RemoteWorld, VlmWorldSpec)
    for path in sorted((CONF / "method").glob("*.yaml")):
        methods = build_methods(_compose(f"method={path.stem}"))
        assert methods and all(isinstance(m, MergeMethod) for m in methods.values()), path.name
        for label, method in methods.items():
            assert any(not method.missing(w.provides) for w in worlds), (path.name, label, method.requires)
