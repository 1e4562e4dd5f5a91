"""``+experiment=evovlm`` through the one engine at tiny budgets (issue 25): every row, the run contract
(result.json per replicate and at the top, a finished replicate skipped, a rerun without result.json
resuming to the same numbers), exact match and ROUGE-L per cell, and REPORT.md with the VLM sections (the
gate, the example images beside their answers, the PS coefficients)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.train import run

CONF = str(Path(__file__).resolve().parents[1] / "conf")
TINY = ["+world.build.n_train=24", "+world.build.n_validation=12", "+world.build.n_test=12",
        "+world.build.corpus_size=48", "+world.build.batch_size=8", "+world.build.pretrain_steps=3",
        "+world.build.lang_steps=3", "+world.build.vision_steps=3",
        "+world.build.model={hidden_size: 32, num_hidden_layers: 2, intermediate_size: 64, vision_layers: 1}"]
ROWS = ["source_vlm_a", "source_lang_b", "vlm_ta", "vlm_ties", "vlm_ps"]


def _cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=["+experiment=evovlm", "progress=false", "experiment.world_seeds=[]",
                                            f"cache_dir={tmp_path / 'cache'}",
                                            *TINY, "budget.sakana_ps_population_size=4",
                                            "budget.sakana_ps_generations=2", *overrides])


def test_evovlm_smoke_run_contract_report_and_resume(tmp_path):
    cfg = _cfg(tmp_path, "world.allow_failed_gate=true", "experiment.seeds=[0]")
    out = tmp_path / "run"
    res = run(cfg, out)
    assert list(res["methods"]) == ROWS and res["metric"] == "exact match"
    rep = out / "seeds" / "seed_0"
    assert {"config_resolved.json", "results.json", "result.json", "predictions"} <= {p.name for p in rep.iterdir()}
    seed0 = json.loads((rep / "results.json").read_text())
    assert seed0["world"]["kind"] == "vlm" and seed0["world"]["gate"]["split"] == "validation"
    n_test = sum(1 for _ in (rep / "predictions" / "vqa_b" / "vlm_ps.jsonl").open())
    for label in ROWS:
        cell = seed0["methods"][label]["per_task"]["vqa_b"]
        assert 0.0 <= cell["exact_match"] <= 1.0 and 0.0 <= cell["rouge_l"] <= 1.0
        assert cell["rouge_l"] >= cell["exact_match"] - 1e-9  # an exact answer has ROUGE-L 1
    ps = seed0["methods"]["vlm_ps"]["per_task"]["vqa_b"]
    val = seed0["methods"]["vlm_ta"]["per_task"]["vqa_b"]["forward_examples"] // 5  # 4 lambdas + the result's CE
    assert len(ps["density"]) == 2 + 2 and ps["forward_examples"] == (1 + 4 * 2) * val  # x0, then 4 x 2
    searched = json.loads((rep / "result.json").read_text())["searches"]["vqa_b/vlm_ps"]
    assert searched["generations_done"] == 2
    assert json.loads((out / "result.json").read_text())["replicates"] == ["seeds/seed_0"]
    report = (out / "report" / "REPORT.md").read_text()
    assert "## The VLM world (issue 25)" in report and "### Pilot gate" in report and "ROUGE-L" in report
    figures = {p.name for p in (out / "report" / "figures").iterdir()}
    assert "vlm_ps_coefficients.png" in figures and any(f.startswith("vlm_example_") for f in figures)
    assert "![](figures/vlm_example_" in report and n_test > 0
    # a finished replicate is not run again; without its result.json it resumes from its checkpoints
    again = run(cfg, out)
    assert again["methods"]["vlm_ps"]["f1"] == res["methods"]["vlm_ps"]["f1"]
    (rep / "result.json").unlink()
    resumed = run(cfg, out)
    assert json.loads((rep / "result.json").read_text())["searches"]["vqa_b/vlm_ps"]["best_genome"] == \
        searched["best_genome"]
    assert resumed["methods"]["vlm_ps"]["per_task"]["vqa_b"]["per_replicate"][0]["f1"] == ps["f1"]


def test_failed_gate_stops_in_one_line(tmp_path):
    with pytest.raises(EvoMergeInputError, match=r"^world: vlm realization seed 0 failed its pilot gate") as err:
        run(_cfg(tmp_path, "experiment.seeds=[0]"), tmp_path / "bad")
    assert "\n" not in str(err.value)
