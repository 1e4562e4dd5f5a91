"""``+experiment=dam_lora`` through the one engine on the tiny IE world: every row, the forward counts
worked out by hand (each adapter's own training set in DAM's KL term), one run directory per seed, the plots."""

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.methods.dam import DAM
from evojax_merge.runner.build import build_methods
from evojax_merge.train import run

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def _cfg(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=["+experiment=dam_lora", *overrides])


def test_method_configs_instantiate():
    cfg = _cfg()
    made = build_methods(cfg)
    assert isinstance(made["dam"], DAM) and made["dam"].lambda_cos == 0.01 and made["dam"].lr == 1e-3
    assert made["dam"].temperature == 2.0 and made["dam"].epochs == 1 and made["dam"].objective == "kl"
    assert made["dam_no_cos"].lambda_cos == 0.0 and made["dam_no_cos"].objective == "kl"
    assert made["dam_no_kl"].objective == "ce" and made["dam_no_kl"].lambda_cos == 0.01
    # positions: auto is the answer tokens on a LoRA pool, every real token on full fine-tunes
    assert made["dam"].config(0).positions == "answer" and made["dam"].config(0, full=True).positions == "all"
    assert list(cfg.experiment.seeds) == [0, 1, 2]
    with pytest.raises(EvoMergeInputError, match="dam.objective"):
        DAM(objective="mse")


@pytest.mark.slow  # builds the tiny IE world
def test_dam_experiment_on_the_tiny_ie_world(tmp_path):
    cfg = _cfg(f"cache_dir={tmp_path / 'cache'}", "progress=false", "experiment.seeds=[0]",
               "method=[dam,dam_no_kl,uniform,evo_merging]", "budget.population_size=2",
               "budget.stage1_generations=1", "budget.stage2_generations=1",
               "data.validation.batch_size=4", "data.validation.num_batches=2", "method.dam.batch_size=16",
               "method.dam_no_kl.batch_size=4", "experiment.test_examples=4", "experiment.max_new_tokens=8")
    out = tmp_path / "run"
    run(cfg, out)
    seed0 = json.loads((out / "seeds" / "seed_0" / "results.json").read_text())
    rows = {label: next(iter(m["per_task"].values())) for label, m in seed0["methods"].items()}
    assert set(rows) == {"dam", "dam_no_kl", "uniform", "evo_merging"}
    v = 4 * 2  # validation examples per candidate
    # the OOD pool of ner_medicine: ner_news (48 training records), two siblings (12 each), distractor_none (48)
    sizes = {"ner_news": 48, "sib0_ner_medicine": 12, "sib1_ner_medicine": 12, "distractor_none": 48}
    assert sorted(rows["dam"]["sources"]) == sorted(sizes)
    assert rows["uniform"]["forward_examples"] == v
    # two stages of (x0 + population 2 x 1 generation), then the found merge's validation CE once
    assert rows["evo_merging"]["forward_examples"] == 2 * (1 + 2 * 1) * v + v
    # DAM: every source's set cut to the shortest (m = 12) goes once through its source (the logits); the
    # batch is min(16, m) = 12, so one step of 12 examples per source forward and backward; then the merge's CE
    m, n = min(sizes.values()), len(sizes)
    bs = min(16, m)
    steps = m // bs
    assert rows["dam"]["forward_examples"] == n * m + steps * n * bs + v
    assert rows["dam"]["backward_examples"] == steps * n * bs
    assert len(rows["dam"]["train_history"]) == steps
    assert rows["dam_no_kl"]["backward_examples"] == 8  # the target's 8 validation records, 4 per step
    for r in rows.values():
        assert 0.0 <= r["f1"] <= 1.0 and np.isfinite(r["val_ce"]) and r["wall_s"] > 0
    assert (out / "seeds" / "seed_0" / "result.json").is_file() and (out / "result.json").is_file()
    report = (out / "report" / "REPORT.md").read_text()
    assert "## Cost" in report and "| `dam` |" in report
    for png in ("quality_vs_cost.png", "training_dam.png", "coefficients_dam.png", "training_dam_no_kl.png"):
        assert (out / "report" / "figures" / png).read_bytes()[:4] == b"\x89PNG"
