"""``+experiment=paper``: every table over its seeds through the real entry point, one report per table."""

import json
import os
import subprocess
import sys

import pytest

from evojax_merge.runner.paper import table_overrides


def test_the_tables_inherit_every_override_but_their_own():
    line = ["+experiment=paper", "seed=3", "paper.seeds=[0,1]", "world=ie_full", "logger=none",
            "budget.stage1_generations=2", "hydra.run.dir=/x"]
    assert table_overrides(line) == ["world=ie_full", "logger=none", "budget.stage1_generations=2"]
    assert table_overrides([]) == []


def _train(tmp_path, cache, *overrides):
    env = {**os.environ, "EVOJAX_MERGE_CACHE": str(cache), "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "evojax_merge.train", "+experiment=paper", *overrides,
                           "progress=false", "logger=none"], capture_output=True, text=True, env=env, timeout=600)


def test_the_plan_is_world_major_with_fewer_worlds_for_the_costly_tables():
    from omegaconf import OmegaConf

    from evojax_merge.errors import EvoMergeInputError
    from evojax_merge.runner.paper import plan

    paper = OmegaConf.create({"tables": ["ood", "ablation"], "world_seeds": [4, 7, 9], "max_worlds": {"ablation": 2},
                              "seeds": [0, 1], "only_worlds": None})
    assert plan(paper) == [(4, "ood", 0), (4, "ood", 1), (4, "ablation", 0), (4, "ablation", 1),
                           (7, "ood", 0), (7, "ood", 1), (7, "ablation", 0), (7, "ablation", 1),
                           (9, "ood", 0), (9, "ood", 1)]
    paper.only_worlds = [9]  # one SLURM array task: the third world, past ablation's two
    assert plan(paper) == [(9, "ood", 0), (9, "ood", 1)]
    paper.only_worlds = [5]
    with pytest.raises(EvoMergeInputError, match=r"^paper.only_worlds: 5 is not in paper.world_seeds"):
        plan(paper)
    paper.only_worlds, paper.tables = None, ["ood"]  # a subset of the tables: the others' max_worlds do not matter
    assert plan(paper) == [(w, "ood", s) for w in (4, 7, 9) for s in (0, 1)]


@pytest.mark.slow
def test_paper_runs_each_table_per_world_reports_and_resumes(tmp_path, smoke_cache):
    out = tmp_path / "paper"
    args = ["paper.tables=[smoke]", "paper.world_seeds=[0,1]", "paper.seeds=[0]", "paper.protocol=[]",
            "paper.table_overrides={}", "paper.max_worlds={}", "method=[uniform,task_arithmetic]"]
    proc = _train(tmp_path, smoke_cache, *args, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for world in (0, 1):
        run = out / "smoke" / "worlds" / f"world_{world}" / "seeds" / "seed_0"
        res = json.loads((run / "results.json").read_text())
        assert res["world"]["seed"] == world and set(res["methods"]) == {"uniform", "task_arithmetic"}
        assert res["config"]["world"]["build"]["seed"] == world == res["config"]["world"]["build"]["tasks"]["seed"]
    report = (out / "smoke" / "report" / "REPORT.md").read_text()
    assert "2 worlds" in report
    for d in (out, out / "smoke" / "worlds" / "world_0" / "seeds" / "seed_0"):  # the run contract everywhere
        assert (d / "config_resolved.json").is_file() and (d / "result.json").is_file(), sorted(d.iterdir())
    summary = (out / "SUMMARY.md").read_text()
    assert "## smoke" in summary and "smoke/report/REPORT.md" in summary and "`uniform`" in summary
    # a rerun in the same directory skips the finished runs and rebuilds the reports only
    before = (out / "smoke" / "worlds" / "world_0" / "seeds" / "seed_0" / "results.json").stat().st_mtime_ns
    again = _train(tmp_path, smoke_cache, *args, f"hydra.run.dir={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "smoke" / "worlds" / "world_0" / "seeds" / "seed_0" / "results.json").stat().st_mtime_ns == before
    assert "done before, skipped" in again.stderr + again.stdout
    # one array task: its own run contract in its directory, the runs under the shared root
    task = _train(tmp_path, smoke_cache, *args, "paper.only_worlds=[1]", f"paper.root={out}",
                  f"hydra.run.dir={tmp_path / 'task1'}")
    assert task.returncode == 0, task.stderr[-3000:]
    assert (tmp_path / "task1" / "result.json").is_file() and not (tmp_path / "task1" / "smoke").exists()


@pytest.mark.slow
def test_an_unknown_table_is_a_one_line_error_before_any_run(tmp_path):
    proc = _train(tmp_path, tmp_path / "cache", "paper.tables=[nonesuch]", f"hydra.run.dir={tmp_path / 'o'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: paper.tables: 'nonesuch'")
    assert not (tmp_path / "cache").exists()
