"""The report over world realizations: real run directories written by the project's own writers
(results.json by ``runner.report.write_results``, predictions by ``eval.predictions.write_predictions``),
laid out as ``train`` lays out ``experiment.world_seeds=[0,1,2] experiment.seeds=[0]``.

One task, ``ner_news``, 4 test records per world, each with one gold entity; a method is right on the first
k records and wrong on the rest (one wrong item), so its F1 is 25·k. k per world:

    world  evo  best  lorahub  ties   gate
      0     4    1      3       1     passed
      1     3    1      2       0     passed
      2     4    0      2       1     failed

The unit is the world (t_{0.975, 2} = 4.302653, t_{0.975, 1} = 12.706205):

    evo - best     75  50 100   mean 75,    sd 25,     half 4.302653 · 25 / sqrt 3 = 62.1033 -> [+12.90, +137.10]
    evo - lorahub  25  25  50   mean 33.33, sd 14.434, half 35.8554 -> [-2.52, +69.19]
    lorahub - ties 50  50  25   mean 41.67, sd 14.434, half 35.8554 -> [+5.81, +77.52]
    on the gated worlds 0, 1: evo - best 75 50: mean 62.5, sd 17.678, half 12.706205 · 12.5 = 158.8276
                                                -> [-96.33, +221.33]

The bootstrap inside world 0 (evo right on all 4, best on record 0 only): a resample's difference is
100 - 25·(draws of record 0), Binomial(4, 1/4): P(0 draws) = 0.316, P(4) = 0.004, so its 2.5th and 97.5th
percentiles are 25 and 100. World 1 (evo right on records 0-2, best on 0): 25·(draws of records 1, 2),
Binomial(4, 1/2), P(0) = P(4) = 1/16 > 2.5%: percentiles 0 and 100. World 2: 100 on every resample.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evojax_merge.eval.metrics import task_scores
from evojax_merge.eval.predictions import write_predictions
from evojax_merge.report import build_report
from evojax_merge.report.bootstrap import paired_bootstrap
from evojax_merge.report.runs import find_run_dirs, group_by_replicate, load_run
from evojax_merge.runner.report import write_results
from evojax_merge.runner.run_dir import mean_table

RIGHT = {"evo_merging": (4, 3, 4), "best_single": (1, 1, 0), "lorahub": (3, 2, 2), "ties": (1, 0, 1)}
GATE = (True, True, False)
TASK = "ner_news"


def _records(world: int) -> list[dict]:
    return [{"instruction": "List the entities.", "input": f"w{world} r{i}", "output": f"person: name{world}x{i}"}
            for i in range(4)]


def write_replicate(run_dir: Path, world: int, seed: int, right: dict[str, int], gate: bool | None,
                    predictions: bool = True) -> Path:
    records = _records(world)
    golds = [r["output"] for r in records]
    methods = {}
    for label, k in right.items():
        texts = [g if i < k else "person: zed" for i, g in enumerate(golds)]
        scores = task_scores(texts, golds, "ner")
        methods[label] = {**scores, "per_task": {TASK: {**scores, "val_ce": 1.0}}}
        if predictions:
            write_predictions(run_dir / "predictions", TASK, label, records, texts, "ner")
    # experiment.seeds differs between the jobs of one experiment (a later job may add seeds or worlds): allowed
    # and the world's own seeds differ between worlds (the paper run sets world.build.seed, world.build.tasks.seed)
    config = {"experiment": {"name": "ood", "world_seeds": [0, 1, 2], "seeds": [seed]}, "seed": seed,
              "setting": {"name": "ood"}, "logger": {"name": "none"},
              "world": {"dtype": "float32", "build": {"seed": world, "tasks": {"seed": world, "n": 4}}},
              "world_realization": {"kind": "ie", "seed": world}}
    results = {"methods": methods, "world": {"kind": "ie", "seed": world, "digest": f"d{world}"},
               "setting": {"name": "ood"}, "metric": "F1", "config": config,
               "provenance": {"command": f"python -m evojax_merge.train +experiment=ood seed={seed}",
                              "git_commit": "0123456789abcdef0123", "git_dirty": False}}
    if gate is not None:
        results["zoo"] = {"gate": {"passed": gate, "targets": {}}}
    write_results(run_dir, results, "ood")
    return run_dir


def three_worlds(out: Path, predictions=(True, True, True)) -> list[Path]:
    dirs = [write_replicate(out / "worlds" / f"world_{w}" / "seeds" / "seed_0", w, 0,
                            {k: v[w] for k, v in RIGHT.items()}, GATE[w], predictions[w]) for w in range(3)]
    runs = [json.loads((d / "results.json").read_text()) for d in dirs]
    write_results(out, {**mean_table(runs), "metric": "F1", "replicates": [str(d.relative_to(out)) for d in dirs],
                        "config": runs[0]["config"]}, "ood, mean over 3 replicates")
    return dirs


def _png(path: Path) -> None:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 20


def test_two_worlds_of_one_seed_are_two_replicates(tmp_path):
    dirs = three_worlds(tmp_path / "OUT")
    # the parent's results.json (the mean) stands for its replicates
    assert find_run_dirs([tmp_path / "OUT"]) == [d.resolve() for d in dirs]
    runs = [load_run(d) for d in dirs]
    assert [(r.world, r.seed, r.gate) for r in runs] == [(0, 0, True), (1, 0, True), (2, 0, False)]
    assert list(group_by_replicate(runs)) == [(0, 0), (1, 0), (2, 0)]  # all seed 0: no collision


def test_report_over_worlds_by_hand(tmp_path):
    out = tmp_path / "OUT"
    three_worlds(out)
    text = build_report([out], tmp_path / "report", wandb=False).read_text()
    assert text.startswith("# ood (ood setting): test F1 over 3 worlds\n\n3 worlds × 1 search seed; gate passed on "
                           "2 of 3 (worlds 0, 1, 2; seed 0). ")
    assert "The unit of replication is the world" in text
    assert ("| `evo_merging` | 3 | 91.67 ± 14.43 | +75.00 [+12.90, +137.10] \\* | 91.67 ± 14.43 | 91.67 ± 14.43 |"
            in text)
    assert "| `lorahub` | 3 | 58.33 ± 14.43 | +41.67 [+5.81, +77.52] \\* |" in text
    assert "| `ties` | 3 | 16.67 ± 14.43 | +0.00 [-62.10, +62.10] |" in text  # 0 -25 25: sd 25
    assert "| `best_single` | 3 | 16.67 ± 14.43 |  |" in text
    # the gated worlds 0 and 1
    gated = text.split("## Methods on the worlds that passed the gate (2 of 3)\n\n")[1].split("\n\n")[0]
    assert "| `evo_merging` | 2 | 87.50 ± 17.68 | +62.50 [-96.33, +221.33] |" in gated
    claims = text.split("## The paper's predictions")[1].split("## ")[0]
    assert ("- Evo-Merging at least 10 F1 above the best single adapter: **held** (`evo_merging` − `best_single` = "
            "+75.00 [+12.90, +137.10] over 3 worlds, predicted >= 10: held)." in claims)
    assert ("- Evo-Merging > LoraHub > TA/TIES: **undetermined** (`evo_merging` − `lorahub` = +33.33 [-2.52, +69.19] "
            "over 3 worlds, predicted > 0: undetermined; `lorahub` − `ties` = +41.67 [+5.81, +77.52] over 3 worlds, "
            "predicted > 0: held)." in claims)
    on_gated = claims.split("On the 2 worlds that passed the gate:\n\n")[1]
    assert ("- Evo-Merging at least 10 F1 above the best single adapter: **undetermined** (`evo_merging` − "
            "`best_single` = +62.50 [-96.33, +221.33] over 2 worlds, predicted >= 10: undetermined)." in on_gated)
    per_world = text.split("## Paired differences per world\n\n")[1].split("\n\n")[0]
    assert "| difference | world 0 | world 1 | world 2 (gate failed) | pooled |" in per_world
    assert ("| `evo_merging` − `best_single` | +75.00 [+25.00, +100.00] | +50.00 [+0.00, +100.00] | "
            "+100.00 [+100.00, +100.00] | +75.00 [+12.90, +137.10] \\* |" in per_world)
    assert "B = 1000 resamples (seed 0)" in text and "Left out" not in text
    assert "| method | world 0, seed 0 | world 1, seed 0 | world 2, seed 0 |" in text
    assert "| `evo_merging` | 100.00 | 75.00 | 100.00 |" in text
    assert "| 2 | 0 | `world_2/seeds/seed_0` |" in text  # provenance: world, seed, directory
    figures = tmp_path / "report" / "figures"
    for name in ("forest_evo_vs_best_single.png", "forest_ranking.png", "f1_bars.png"):
        _png(figures / name)
        assert f"(figures/{name})" in text


def test_a_world_without_predictions_is_said_and_skipped(tmp_path):
    out = tmp_path / "OUT"
    three_worlds(out, predictions=(True, False, True))
    text = build_report([out], tmp_path / "report", wandb=False).read_text()
    assert ("- world 1, seed 0 (`seed_0`): no predictions/ directory, so no test-set bootstrap for its methods"
            in text)
    # world 1's difference has no bootstrap interval; the pooled t-interval over worlds is unchanged
    assert ("| `evo_merging` − `best_single` | +75.00 [+25.00, +100.00] | +50.00 | +100.00 [+100.00, +100.00] | "
            "+75.00 [+12.90, +137.10] \\* |" in text)
    _png(tmp_path / "report" / "figures" / "forest_evo_vs_best_single.png")


def test_one_world_combines_the_seeds_and_the_test_records(tmp_path):
    # world 5, seeds 0 and 1 on the same 4 test records: evo right on 4 then 3, best on record 0 both times.
    # d = 75, 50: mean 62.5, sd 17.678; t term 12.706205 · 17.678 / sqrt 2 = 158.8276; the bootstrap SE of the
    # seeds' mean difference is recomputed here from the same counts with the report's function
    out = tmp_path / "OUT"
    dirs = [write_replicate(out / "seeds" / f"seed_{s}", 5, s, {"evo_merging": k, "best_single": 1}, True)
            for s, k in ((0, 4), (1, 3))]
    text = build_report(dirs, tmp_path / "report", wandb=False).read_text()

    def counts(k: int) -> np.ndarray:
        return np.array([[1, 1, 1] if i < k else [0, 1, 1] for i in range(4)], float)

    boot = paired_bootstrap({TASK: np.stack([counts(4), counts(3)])}, {TASK: np.stack([counts(1), counts(1)])})
    assert boot.diff == pytest.approx(62.5) and boot.se > 0
    half = math.sqrt((12.706204736174694 * 12.5) ** 2 + (1.959963984540054 * boot.se) ** 2)
    assert half > 158.8276
    assert f"| `evo_merging` | 2 | 87.50 ± 17.68 | +62.50 [{62.5 - half:+.2f}, {62.5 + half:+.2f}] |" in text
    assert "1 world × 2 search seeds; gate passed on 1 of 1 (world 5; seeds 0, 1)" in text
    assert "With one world the unit of replication is the search seed" in text
    assert "> **Only 2 seeds:**" in text


def test_summary_over_worlds(tmp_path):
    from evojax_merge.report.summary import write_summary

    out = tmp_path / "paper"
    three_worlds(out / "ood")
    report = build_report([out / "ood"], out / "ood" / "report", wandb=False)
    text = write_summary(out, {"ood": [out / "ood"]}, {"ood": str(report)}, [0], 60.0, "cmd").read_text()
    assert "3 worlds × 1 search seed; gate passed on 2 of 3. [REPORT.md](ood/report/REPORT.md)" in text
    assert "- Top two" not in text  # the summary keeps to the tables and the claims
    assert "- Evo-Merging at least 10 F1 above the best single adapter: **held** (" in text
    assert "On the 2 worlds that passed the gate:\n\n- Evo-Merging at least 10 F1 above the best single adapter: " \
           "**undetermined**" in text


def test_worlds_of_another_design_are_not_mixed(tmp_path):
    from evojax_merge.errors import EvoMergeInputError

    dirs = three_worlds(tmp_path / "OUT")
    data = json.loads((dirs[2] / "results.json").read_text())
    data["config"]["world"]["build"]["tasks"]["n"] = 5  # not a seed: another world design
    (dirs[2] / "results.json").write_text(json.dumps(data))
    with pytest.raises(EvoMergeInputError, match=r"config.world.build.tasks.n differs"):
        build_report(dirs, tmp_path / "report", wandb=False)


def test_no_world_passed_the_gate(tmp_path):
    out = tmp_path / "OUT"
    dirs = three_worlds(out)
    for d in dirs[:2]:  # fail worlds 0 and 1 as well
        data = json.loads((d / "results.json").read_text())
        data["zoo"]["gate"]["passed"] = False
        (d / "results.json").write_text(json.dumps(data))
    text = build_report(dirs, tmp_path / "report", wandb=False).read_text()
    assert "gate passed on 0 of 3" in text
    assert "No world passed the gate" in text


def test_the_bootstrap_knob(tmp_path, capsys):
    from evojax_merge.report.__main__ import main

    out = tmp_path / "OUT"
    three_worlds(out)
    assert main([str(out), "--out", str(tmp_path / "r0"), "--no-wandb", "--bootstrap", "0"]) == 0
    text = (tmp_path / "r0" / "REPORT.md").read_text()
    assert "The test-set bootstrap is off (`--bootstrap 0`)." in text
    # the worlds' differences without intervals; the pooled t-interval over worlds is the same
    assert "| `evo_merging` − `best_single` | +75.00 | +50.00 | +100.00 | +75.00 [+12.90, +137.10] \\* |" in text
    assert main([str(out), "--out", str(tmp_path / "r50"), "--no-wandb", "--bootstrap", "50",
                 "--bootstrap-seed", "3"]) == 0
    assert "B = 50 resamples (seed 3)" in (tmp_path / "r50" / "REPORT.md").read_text()
    with pytest.raises(SystemExit):
        main([str(out), "--bootstrap", "1"])
    assert "--bootstrap: 0 (none) or at least 2 resamples" in capsys.readouterr().err
