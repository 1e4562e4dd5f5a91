"""The cluster path on a real SLURM: a single-node cluster on localhost (tests/slurm_cluster.py), the sbatch
templates with the CPU profile, Hydra's submitit launcher, and preemption mid-search.

One uninterrupted run of the smoke experiment (the tiny IE world, seed 0, outside SLURM) is the reference. On the
cluster, each of these is preempted mid-search with ``scancel --signal=USR1``, saves, is requeued, resumes, and
its result.json must equal the reference:

- ``single.sbatch`` (seed 0): the template requeues it;
- ``array.sbatch`` (METHODS=evo, SEEDS="1 0"): task 1 (seed 0), which holds the array's own job id; task 0
  must run exactly once (a requeue by that id would requeue the whole array);
- the submitit launcher (``hydra/launcher=slurm_cpu``, a sweep of one job, seed 0): requeued as a
  preemption, not a timeout, with no traceback in its logs.

Bad input to a template (no experiment, unknown profile) is a one-line error before anything is submitted:
the first job the cluster sees afterwards still gets job id 1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import LocalSlurm, clean_environ, ensure_installed

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
GENERATIONS = 30  # per stage: long enough that a signal at step >= PREEMPT_AT lands mid-search
PREEMPT_AT = 3
RUN = ["+experiment=smoke", "method=evo", "setting.targets=[ner_medicine]",
       f"budget.stage1_generations={GENERATIONS}",
       f"budget.stage2_generations={GENERATIONS}"]
TIMEOUT = 900  # seconds for everything on the cluster to finish


def _venv() -> str:
    if sys.prefix == sys.base_prefix:
        raise AssertionError(f"the tests must run in a virtualenv (the templates activate one): {sys.executable}")
    return sys.prefix


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slurm_work")


@pytest.fixture(scope="module")
def job_env(work) -> dict[str, str]:
    """What every run gets: a world cache and a JAX compilation cache of its own, this checkout first on the
    path, the virtualenv as the active one (VIRTUAL_ENV, no VENV: the templates must find it)."""
    env = clean_environ()
    env.pop("VENV", None)
    env.pop("XLA_FLAGS", None)
    env.update(VIRTUAL_ENV=_venv(), PATH=f"{Path(_venv()) / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=str(ROOT), EVOJAX_MERGE_CACHE=str(work / "world_cache"), WANDB_MODE="offline",
               JAX_COMPILATION_CACHE_DIR=str(work / "jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PLATFORMS="cpu")
    return env


@pytest.fixture(scope="module")
def cluster(work, job_env):
    t0 = time.monotonic()
    installed = ensure_installed()
    with LocalSlurm(work / "cluster") as c:
        c.env = {**job_env, "SLURM_CONF": str(c.conf)}
        c.setup_s = time.monotonic() - t0
        c.installed = installed
        yield c


def _checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in run_dir.glob("checkpoints/*/*") if p.name.isdigit())


def _result(run_dir: Path) -> dict:
    path = run_dir / "result.json"
    assert path.exists(), f"{path} missing; the run directory holds {sorted(p.name for p in run_dir.iterdir())}"
    return json.loads(path.read_text())


class Preemption:
    """Signal ``job`` (a SLURM job id, ``A_i`` for an array task) once ``run_dir`` holds a checkpoint step
    >= PREEMPT_AT, then follow it to the end."""

    def __init__(self, name: str, job: str, run_dir: Path, log: Path):
        self.name, self.job, self.run_dir, self.log = name, job, run_dir, log
        self.signalled_at: int | None = None

    def poll(self, cluster: LocalSlurm) -> None:
        if self.signalled_at is None and (steps := _checkpoint_steps(self.run_dir)) and steps[-1] >= PREEMPT_AT:
            cluster.run(["scancel", "--signal=USR1", self.job])
            self.signalled_at = steps[-1]


def _wait_all(cluster: LocalSlurm, preemptions: list[Preemption], done, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not (done() and all(p.signalled_at is not None for p in preemptions)):
        for p in preemptions:
            p.poll(cluster)
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.log}\n{p.log.read_text()[-3000:] if p.log.exists() else '(none)'}"
                             for p in preemptions)
            raise AssertionError(f"{what} not done within {TIMEOUT}s; queue {cluster.jobs()}\n{logs}")
        time.sleep(0.05)


def _segments(log_text: str) -> list[tuple[str, str]]:
    """(start, end) ISO timestamps of every run of a template job, from the lines the template prints."""
    starts = re.findall(r"^\[(\S+)\] (?:job|task) .*restart", log_text, re.M)
    ends = re.findall(r"^\[(\S+)\] (?:finished|not finished yet)", log_text, re.M)
    return list(zip(starts, ends, strict=False))


def _seconds(segment: tuple[str, str]) -> float:
    from datetime import datetime

    a, b = (datetime.fromisoformat(t) for t in segment)
    return (b - a).total_seconds()


def _assert_preempted_once_and_resumed(p: Preemption) -> None:
    text = p.log.read_text()
    saved = re.findall(r"received SIGUSR1: saved checkpoint step (\d+)", text)
    assert len(saved) == 1, f"{p.name}: expected one stop on SIGUSR1 in {p.log}:\n{text[-4000:]}"
    assert text.count("SIGUSR1") == 1, f"{p.name}: one message about the stop, not more:\n{text[-4000:]}"
    assert PREEMPT_AT <= int(saved[0]) < 2 * GENERATIONS, f"{p.name}: stopped at step {saved[0]}, not mid-search"
    assert "Traceback" not in text, f"{p.name}: traceback in {p.log}:\n{text[-4000:]}"


def test_bad_input_is_one_line_before_submission(cluster, work):
    """No experiment, an unknown experiment, an unknown profile, no virtualenv: exit 2, one line, no job."""
    template = str(ROOT / "slurm" / "single.sbatch")
    no_venv = {k: v for k, v in cluster.env.items() if k != "VIRTUAL_ENV"}
    cases = [([], cluster.env, "no experiment given"),
             (["nosuch"], cluster.env, "unknown experiment 'nosuch'"),
             (["seed=1"], cluster.env, "is an override, not an experiment"),
             (["smoke"], {**cluster.env, "PROFILE": "tpu"}, "unknown profile PROFILE=tpu"),
             (["smoke"], {**no_venv, "PROFILE": "cpu"}, "no virtualenv: set VENV="),
             (["smoke"], {**cluster.env, "PROFILE": "cpu", "VENV": str(work / "nothing")}, "has no bin/activate")]
    for args, env, message in cases:
        proc = subprocess.run(["bash", template, *args], env=env, cwd=work, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stdout == "" and proc.stderr.count("\n") == 1, (args, proc.stderr)
        assert proc.stderr.startswith("error: ") and message in proc.stderr, (args, proc.stderr)
    array = subprocess.run(["bash", str(ROOT / "slurm" / "array.sbatch"), "smoke"], cwd=work, capture_output=True,
                           text=True, timeout=60, env={**cluster.env, "PROFILE": "cpu", "METHODS": "evo nope"})
    assert array.returncode == 2 and "unknown method 'nope'" in array.stderr and array.stderr.count("\n") == 1
    assert cluster.jobs() == {}


def test_templates_and_submitit_resume_preempted_jobs_exactly(cluster, work, job_env):
    t_start = time.monotonic()
    # -- the reference: one uninterrupted run, outside SLURM. It builds the world every job reads; the jobs
    # are submitted once the world is in place, while the reference still runs --------------------------
    ref_dir, world_cache = work / "reference_seed0", Path(job_env["EVOJAX_MERGE_CACHE"])
    with open(work / "reference.log", "w") as log:
        ref = subprocess.Popen([sys.executable, "-m", "evojax_merge.train", *RUN, "seed=0", "progress=false",
                                f"hydra.run.dir={ref_dir}"], env=job_env, cwd=work, stdout=log,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + TIMEOUT
    while not list(world_cache.glob("iezoo-*/manifest.json")):  # the tiny IE world, built (renamed into place)
        assert ref.poll() is None, f"the reference run ended early:\n{(work / 'reference.log').read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no world after {TIMEOUT}s"
        time.sleep(0.2)

    # -- the sbatch templates, CPU profile; the first job the cluster ever sees is job 1 ------------------
    env = {**cluster.env, "PROFILE": "cpu"}
    sub = cluster.run(["bash", str(ROOT / "slurm" / "single.sbatch"), "smoke", *RUN[1:], "seed=0"], env=env, cwd=work)
    single = cluster.submitted_id(sub.stdout)
    assert single == "1", f"a job was submitted before this one (bad input must submit nothing): {sub.stdout}"
    sub = cluster.run(["bash", str(ROOT / "slurm" / "array.sbatch"), "smoke", *RUN[1:]],
                      env={**env, "METHODS": "evo", "SEEDS": "1 0"}, cwd=work)
    array = cluster.submitted_id(sub.stdout)
    single_dir = work / "outputs" / "slurm" / "smoke" / single
    task_dirs = [work / "outputs" / "slurm" / "sweep" / "smoke" / array / "evo" / f"seed{s}" for s in (1, 0)]
    task_logs = [work / f"slurm-evojax-merge-sweep-{array}_{i}.out" for i in (0, 1)]
    # Task 1 (seed 0) is preempted. The last task of an array keeps the array's own job id, so a requeue of
    # "SLURM_JOB_ID" would requeue every task of the array: task 0 must run exactly once.
    template_preemptions = [Preemption("single.sbatch", single, single_dir, work / f"slurm-evojax-merge-{single}.out"),
                            Preemption("array.sbatch task 1", f"{array}_1", task_dirs[1], task_logs[1])]

    # -- the submitit launcher, CPU launcher config: a sweep of one job (seed 0) ---------------------------
    sweep_dir, submitter_log = work / "submitit_sweep", work / "submitit_submitter.log"
    with open(submitter_log, "w") as log:
        submitter = subprocess.Popen(
            [sys.executable, "-m", "evojax_merge.train", "-m", "hydra/launcher=slurm_cpu", *RUN, "seed=0",
             "progress=false", f"hydra.sweep.dir={sweep_dir}", "hydra.launcher.timeout_min=10"],
            env=cluster.env, cwd=work, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    # submitit's folder for the job is named by its job id (a sweep of one job is a plain job, not an array)
    while not (folders := [p.parent for p in (sweep_dir / ".submitit").glob("*/*_submitted.pkl")]):
        assert submitter.poll() is None, f"the submitit sweep ended early:\n{submitter_log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, "the submitit sweep submitted nothing within 120s"
        time.sleep(0.2)
    assert len(folders) == 1, folders
    submitit_log = folders[0] / f"{folders[0].name}_0_log.out"
    submitit_preemption = Preemption("submitit job 0", folders[0].name, sweep_dir / "0", submitit_log)

    preemptions = [*template_preemptions, submitit_preemption]
    _wait_all(cluster, preemptions, lambda: not cluster.jobs() and submitter.poll() is not None
              and ref.poll() is not None, "the jobs")
    assert ref.returncode == 0, (work / "reference.log").read_text()[-4000:]
    assert submitter.returncode == 0, f"the submitit sweep failed:\n{submitter_log.read_text()[-4000:]}"
    total_s = time.monotonic() - t_start
    ref0 = _result(ref_dir)
    # quiet logs: orbax's INFO lines are gone, and so are the saves (DEBUG); one line per finished stage is left
    ref_log = (ref_dir / "train.log").read_text()
    assert "[absl][INFO]" not in ref_log + (work / "reference.log").read_text()
    assert re.findall(r"checkpoint: step \d+ of ", ref_log) == []
    assert re.findall(r": stage (\S+) done \(checkpoint step (\d+),", ref_log) == [
        ("stage1_denoise", str(GENERATIONS)), ("stage2_scale", str(2 * GENERATIONS))]

    # -- each preempted job stopped once mid-search, was requeued once, resumed, and matches --------------
    for p in template_preemptions:
        _assert_preempted_once_and_resumed(p)
        text = p.log.read_text()
        assert re.findall(r"restart (\d+)", text) == ["0", "1"], f"{p.name}: not requeued exactly once:\n{text}"
        assert "not finished yet: requeueing job" in text and "] finished: " in text
        assert _result(p.run_dir) == ref0, f"{p.name}: result.json differs from the uninterrupted run"
    # the array's other task ran once, through
    assert re.findall(r"restart (\d+)", task_logs[0].read_text()) == ["0"], task_logs[0].read_text()[-3000:]
    seed1 = _result(task_dirs[0])
    assert seed1["seed"] == 1 and seed1["best_genome"] != ref0["best_genome"]
    # search time adds up across the restart: the stop and each finished stage log the search seconds so far
    # (to 0.1 s), and they never drop, not even over the restart (the resumed run's clock starts at the
    # preempted step's); the resumed run starts at the step the stop saved
    single_log = (single_dir / "train.log").read_text()
    saves = [(int(a or b), float(t)) for a, b, t in re.findall(
        r"(?:: stopped; saved step (\d+) \(|: stage \S+ done \(checkpoint step (\d+), )search ([\d.]+) s\)",
        single_log)]
    stopped = [step for step, _ in saves if step not in (GENERATIONS, 2 * GENERATIONS)]
    assert len(stopped) == 1 and sorted(saves) == saves, saves
    assert [step for step, _ in saves] == sorted([*stopped, GENERATIONS, 2 * GENERATIONS]), saves
    assert re.findall(r": resuming stage \S+ at generation \d+ \(step (\d+)\)", single_log) == [str(stopped[0])]
    seconds = [t for _, t in saves]
    assert all(b >= a for a, b in zip(seconds, seconds[1:], strict=False)), saves
    cell = json.loads((single_dir / "results.json").read_text())["methods"]["evo_merging"]["per_task"]
    assert next(iter(cell.values()))["search_s"] >= seconds[-1]

    # -- submitit: requeued as a preemption (not a timeout), cleanly, and matches ---------------------------
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0"], \
        "sweep job directories are named by job number"
    _assert_preempted_once_and_resumed(submitit_preemption)
    text = submitit_log.read_text()
    assert text.count("Starting with JobEnvironment") == 2 and "timed-out" not in text, text[-4000:]
    assert "preempted (not a timeout): requeued job" in text, text[-4000:]
    err = submitit_log.with_name(submitit_log.name.replace("_log.out", "_log.err")).read_text()
    assert "Traceback" not in err and "SystemExit" not in err, err[-4000:]
    assert _result(sweep_dir / "0") == ref0, "submitit job 0 (preempted) differs from the uninterrupted run"

    # -- the figures for the record (pytest -s shows them) ------------------------------------------------
    timing = {p.name: [round(_seconds(s), 1) for s in _segments(p.log.read_text())] for p in template_preemptions}
    timing["array.sbatch task 0"] = [round(_seconds(s), 1) for s in _segments(task_logs[0].read_text())]
    print(json.dumps({"apt_installed": cluster.installed, "cluster_setup_s": round(cluster.setup_s, 1),
                      "all_runs_s": round(total_s, 1), "template_job_segments_s": timing,
                      "signalled_at_step": {p.name: p.signalled_at for p in preemptions}}, indent=1))
