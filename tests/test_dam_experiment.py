"""The dam experiment end to end on the smoke zoo: every row, the forward counts by hand, the plots."""

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.methods.dam import DAM
from evojax_merge.methods.registry import build_methods
from evojax_merge.runner.dam import run_dam, summarize

pytestmark = pytest.mark.slow  # builds the smoke zoo

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def _cfg(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=["+experiment=dam_lora", *overrides])


def test_method_configs_instantiate():
    cfg = _cfg()
    made = build_methods(OmegaConf.to_container(cfg.method, resolve=True))
    assert isinstance(made["dam"], DAM) and made["dam"].lambda_cos == 0.01 and made["dam"].lr == 1e-3
    assert made["dam"].temperature == 2.0 and made["dam"].epochs == 1 and made["dam"].objective == "kl"
    assert made["dam_no_cos"].lambda_cos == 0.0 and made["dam_no_cos"].objective == "kl"
    assert made["dam_no_kl"].objective == "ce" and made["dam_no_kl"].lambda_cos == 0.01
    assert list(cfg.dam.seeds) == [0, 1, 2]
    with pytest.raises(EvoMergeInputError, match="dam.objective"):
        DAM(objective="mse")


def test_summary_by_hand():
    rows = [{"method": "a", "f1": 0.5, "val_ce": 1.0, "wall_s": 2.0, "forward_examples": 10, "backward_examples": 0},
            {"method": "a", "f1": 0.3, "val_ce": 3.0, "wall_s": 4.0, "forward_examples": 30, "backward_examples": 0}]
    s = summarize(rows)["a"]
    assert s["f1"] == {"mean": 0.4, "std": pytest.approx(0.1)} and s["val_ce"]["mean"] == 2.0
    assert s["forward_examples"]["mean"] == 20 and s["cells"] == 2


def test_dam_experiment_on_the_smoke_zoo(tmp_path):
    cfg = _cfg(f"cache_dir={tmp_path / 'cache'}", "progress=false", "experiment.num_targets=1", "dam.seeds=[0]",
               "dam.methods=[dam,dam_no_kl,uniform,evo_merging]", "budget.population_size=2",
               "budget.stage1_generations=1", "budget.stage2_generations=1",
               "data.validation.batch_size=4", "data.validation.num_batches=2", "method.dam.batch_size=16",
               "method.dam_no_kl.batch_size=16", "experiment.test_examples=4", "experiment.max_new_tokens=8")
    out = tmp_path / "run"
    res = run_dam(cfg, out)
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"dam", "dam_no_kl", "uniform", "evo_merging"}
    v = 4 * 2  # validation examples per candidate
    n, m = 8, 64  # smoke zoo: OOD pool of 8 adapters, 64 train records each
    assert rows["uniform"]["forward_examples"] == v
    # two stages of (x0 + population 2 x 1 generation), then the found merge's validation CE once
    assert rows["evo_merging"]["forward_examples"] == 2 * (1 + 2 * 1) * v + v
    steps = m // 16
    assert rows["dam"]["forward_examples"] == n * m + steps * n * 16 + v
    assert rows["dam"]["backward_examples"] == steps * n * 16
    assert rows["dam"]["details"]["steps"] == steps and len(rows["dam"]["details"]["history"]) == steps
    assert rows["dam_no_kl"]["backward_examples"] == (32 // 16) * 16  # the target's 32 validation records
    for r in rows.values():
        assert 0.0 <= r["f1"] <= 1.0 and np.isfinite(r["val_ce"]) and r["wall_s"] > 0
    saved = json.loads((out / "dam_results.json").read_text())
    assert set(saved["summary"]) == set(rows)
    assert "| dam |" in (out / "dam_results.md").read_text()
    # the report command's tables and figures, from one run directory per seed
    report = (out / "report" / "REPORT.md").read_text()
    assert "## Cost" in report and "| `dam` |" in report
    for png in ("quality_vs_cost.png", "training_dam.png", "coefficients_dam.png", "training_dam_no_kl.png"):
        assert (out / "report" / "figures" / png).read_bytes()[:4] == b"\x89PNG"
    seed0 = json.loads((out / "seeds" / "seed_0" / "results.json").read_text())
    assert seed0["config"]["seed"] == 0 and seed0["methods"]["dam"]["per_task"]
    cell = next(iter(seed0["methods"]["dam"]["per_task"].values()))
    assert cell["forward_examples"] == rows["dam"]["forward_examples"] and len(cell["coefficients"]) > 0
    with pytest.raises(EvoMergeInputError, match="dam.methods: unknown method 'nope'"):
        run_dam(_cfg(f"cache_dir={tmp_path / 'cache'}", "progress=false", "experiment.num_targets=1",
                     "dam.seeds=[0]", "dam.methods=[nope]"), tmp_path / "bad")
