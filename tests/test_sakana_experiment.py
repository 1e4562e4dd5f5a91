"""``+experiment=dam`` through the one engine on the Sakana world (tiny budgets, two seeds): every row,
the forward counts worked out by hand, one run directory per seed with the run contract, and the report.

The world is the default Sakana world, built once per cache (shared with test_sakana_world.py).
"""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.train import run

pytestmark = pytest.mark.slow  # builds (or reuses) the Sakana world

CONF = str(Path(__file__).resolve().parents[1] / "conf")
V = 8  # validation examples


def _cfg(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=["+experiment=dam", "logger=none", "progress=false", *overrides])


def test_dam_experiment_rows_costs_and_report(tmp_path):
    cfg = _cfg("experiment.seeds=[0,1]", "method=[dam,dam_no_kl,soup,sakana_ta,sakana_ps]",
               f"world.val_examples={V}", "experiment.test_examples=8",
               "method.sakana_ps.population_size=4", "method.sakana_ps.generations=1",
               "method.dam.examples_per_source=8", "method.dam_no_kl.batch_size=4")
    out = tmp_path / "run"
    res = run(cfg, out)
    assert list(res["methods"]) == ["dam", "dam_no_kl", "soup", "sakana_ta", "sakana_ps"]
    for seed in (0, 1):  # every replicate is a whole run directory
        d = out / "seeds" / f"seed_{seed}"
        assert {"config_resolved.json", "results.json", "results.md", "result.json", "predictions"} <= {
            p.name for p in d.iterdir()}
    seed0 = json.loads((out / "seeds" / "seed_0" / "results.json").read_text())
    assert seed0["config"]["seed"] == 0 and seed0["world"]["kind"] == "sakana"
    cells = {label: next(iter(m["per_task"].values())) for label, m in seed0["methods"].items()}
    # by hand: the soup is one grid point, TA three lambdas, PS x0 then 4 candidates x 1 generation,
    # each scored on the V validation examples
    assert cells["soup"]["forward_examples"] == 1 * V
    assert cells["sakana_ta"]["forward_examples"] == 3 * V
    assert cells["sakana_ps"]["forward_examples"] == (1 + 4 * 1) * V
    # DAM: 2 sources x 8 examples through the sources once (their logits), then 8 / 4 = 2 steps of
    # 2 sources x 4 examples forward and backward, then the merged model's validation CE
    assert cells["dam"]["forward_examples"] == 2 * 8 + 2 * 2 * 4 + V
    assert cells["dam"]["backward_examples"] == 2 * 2 * 4
    assert len(cells["dam"]["train_history"]) == 2 and set(cells["dam"]["sources"]) == {"lang", "skill"}
    # w/o KL: CE on the target's V validation records, 4 per step
    assert cells["dam_no_kl"]["backward_examples"] == V
    assert cells["sakana_ps"]["stages"]["cmaes"]["history"][0]["best"] > 0
    done = json.loads((out / "result.json").read_text())
    assert done["replicates"] == ["seeds/seed_0", "seeds/seed_1"]
    ps = json.loads((out / "seeds" / "seed_0" / "result.json").read_text())["searches"]["skill_b/sakana_ps"]
    assert ps["generations_done"] == 1 and len(ps["best_genome"]) > 0
    report = (out / "report" / "REPORT.md").read_text()
    assert "## Cost" in report and "| `sakana_ps` |" in report
    figures = {p.name for p in (out / "report" / "figures").iterdir()}
    assert {"coefficients_dam.png", "training_dam.png", "quality_vs_cost.png", "fitness_sakana_ps.png"} <= figures


def test_a_lora_method_on_full_finetunes_is_a_one_line_error(tmp_path):
    with pytest.raises(EvoMergeInputError, match="method.evo_merging: needs lora_pool, .*world 'sakana'"):
        run(_cfg("method=[dam,evo_merging]"), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
