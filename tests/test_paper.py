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


@pytest.mark.slow
def test_paper_runs_each_table_per_seed_reports_and_resumes(tmp_path, smoke_cache):
    out = tmp_path / "paper"
    proc = _train(tmp_path, smoke_cache, "paper.tables=[smoke]", "paper.seeds=[0,1]",
                  "method=[uniform,task_arithmetic]", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for seed in (0, 1):
        res = json.loads((out / "smoke" / f"seed_{seed}" / "results.json").read_text())
        assert res["config"]["seed"] == seed and set(res["methods"]) == {"uniform", "task_arithmetic"}
    report = (out / "smoke" / "report" / "REPORT.md").read_text()
    assert "n=2" in report or "± " in report
    for d in (out, out / "smoke" / "seed_0"):  # the run contract, at the top and for every (table, seed)
        assert (d / "config_resolved.json").is_file() and (d / "result.json").is_file(), sorted(d.iterdir())
    summary = (out / "SUMMARY.md").read_text()
    assert summary.startswith("# The paper's tables: 1 tables x 2 seeds (0, 1)")
    assert "## smoke" in summary and "[REPORT.md](smoke/report/REPORT.md) — runs: " in summary
    assert "`uniform`" in summary and "the runs themselves took" in summary
    # a rerun in the same directory skips the finished runs and rebuilds the reports only
    before = (out / "smoke" / "seed_0" / "results.json").stat().st_mtime_ns
    again = _train(tmp_path, smoke_cache, "paper.tables=[smoke]", "paper.seeds=[0,1]",
                   "method=[uniform,task_arithmetic]", f"hydra.run.dir={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "smoke" / "seed_0" / "results.json").stat().st_mtime_ns == before
    assert "done before, skipped" in again.stderr + again.stdout or "report written" in again.stdout


@pytest.mark.slow
def test_an_unknown_table_is_a_one_line_error_before_any_run(tmp_path):
    proc = _train(tmp_path, tmp_path / "cache", "paper.tables=[nonesuch]", f"hydra.run.dir={tmp_path / 'o'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: paper.tables: 'nonesuch'")
    assert not (tmp_path / "cache").exists()
