"""Sakana's experiment on a real SLURM (the single-node cluster of tests/slurm_cluster.py): submitted with
``slurm/single.sbatch`` and the CPU profile, it must finish once — write result.json and the rest of the run
contract, and not be requeued. (Before the one engine, the Sakana driver wrote no result.json, so the
template requeued the job forever.)"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from slurm_cluster import venv_cluster

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RUN = ["method=[base,sakana_ps,sakana_dfs]", "budget.sakana_ps_generations=2", "budget.sakana_dfs_generations=2",
       "budget.sakana_dfs_population_size=4", "world.val_examples=8", "experiment.test_examples=8",
       "experiment.seeds=[0]"]
TIMEOUT = 900


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("slurm_sakana")
    with venv_cluster(work, ROOT) as c:
        yield c


def test_sakana_job_finishes_once_with_the_run_contract(cluster):
    work = cluster.work
    sub = cluster.run(["bash", str(ROOT / "slurm" / "single.sbatch"), "sakana", *RUN], env=cluster.env, cwd=work)
    job = cluster.submitted_id(sub.stdout)
    log = work / f"slurm-evojax-merge-{job}.out"
    deadline = time.monotonic() + TIMEOUT
    while job in cluster.jobs():
        assert time.monotonic() < deadline, f"job {job} not done in {TIMEOUT}s:\n{log.read_text()[-3000:]}"
        time.sleep(1)
    text = log.read_text()
    run_dir = work / "outputs" / "slurm" / "sakana" / job
    assert len(re.findall(r"^\[\S+\] job \S+ restart", text, re.M)) == 1, f"requeued:\n{text[-3000:]}"
    assert re.search(r"^\[\S+\] finished: ", text, re.M), text[-3000:]
    assert "not finished yet" not in text and "Traceback" not in text, text[-3000:]
    done = json.loads((run_dir / "result.json").read_text())
    assert done["replicates"] == ["seeds/seed_0"]
    seed0 = run_dir / "seeds" / "seed_0"
    assert (seed0 / "config_resolved.json").is_file() and (seed0 / "result.json").is_file()
    searches = json.loads((seed0 / "result.json").read_text())["searches"]
    assert set(searches) == {"skill_b/sakana_ps", "skill_b/sakana_dfs"}
    assert all(s["generations_done"] == 2 for s in searches.values())
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["methods"]) == {"base", "sakana_ps", "sakana_dfs"}
    assert (run_dir / "report" / "REPORT.md").is_file()
