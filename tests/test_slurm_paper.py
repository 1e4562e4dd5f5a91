"""The paper's replicated run as a SLURM array on a real single-node SLURM (tests/slurm_cluster.py):
``slurm/paper_array.sbatch`` runs one world realization per array task into one shared directory; each task
finishes once with its own run contract, and the tables' report covers both worlds."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from slurm_cluster import venv_cluster

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RUN = ["paper.tables=[smoke]", "paper.protocol=[]", "paper.table_overrides={}", "paper.max_worlds={}",
       "method=[uniform,task_arithmetic]"]
TIMEOUT = 900


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("slurm_paper")
    with venv_cluster(work, ROOT, WORLD_SEEDS="0 1", OUT=str(work / "paper"), ARRAY_PARALLEL="1") as c:
        yield c


def test_one_world_per_array_task_each_finishes_once(cluster):
    work = cluster.work
    sub = cluster.run(["bash", str(ROOT / "slurm" / "paper_array.sbatch"), "paper", *RUN], env=cluster.env, cwd=work)
    job = cluster.submitted_id(sub.stdout)
    deadline = time.monotonic() + TIMEOUT
    while any(j.startswith(job) for j in cluster.jobs()):
        assert time.monotonic() < deadline, f"array {job} not done in {TIMEOUT}s"
        time.sleep(1)
    out = work / "paper"
    for task, world in ((0, 0), (1, 1)):
        text = (work / f"slurm-evojax-merge-paper-{job}_{task}.out").read_text()
        assert len(re.findall(r"^\[\S+\] task \d+ \(job", text, re.M)) == 1, f"requeued:\n{text[-3000:]}"
        assert re.search(r"^\[\S+\] finished: ", text, re.M) and "Traceback" not in text, text[-3000:]
        own = out / "array" / f"world_{world}"
        assert (own / "config_resolved.json").is_file() and (own / "result.json").is_file()
        run = out / "smoke" / "worlds" / f"world_{world}" / "seeds" / "seed_0"
        res = json.loads((run / "results.json").read_text())
        assert res["world"]["seed"] == world and set(res["methods"]) == {"uniform", "task_arithmetic"}
    report = (out / "smoke" / "report" / "REPORT.md").read_text()
    assert "2 worlds" in report  # the last task to finish reported over both
