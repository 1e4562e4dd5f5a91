"""The cluster path without a cluster: templates, profiles, launcher configs, the stop/requeue policy, quiet
checkpoint logs and search time across resumes. tests/test_slurm_cluster.py runs all of it on a real SLURM."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jax
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.logs import quiet_library_logs
from evojax_merge.search.checkpoint import CheckpointRunner
from evojax_merge.search.cmaes import StageSpec
from evojax_merge.search.genome import GenomeLayout
from evojax_merge.search.preemption import Preempted, PreemptionGuard
from evojax_merge.slurm import (
    exit_after_stop,
    is_time_limit,
    parse_slurm_duration,
    slurm_job_id,
    stop_guard,
    stop_signals,
)

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = sorted((ROOT / "slurm").glob("*.sbatch"))
PROFILES = sorted((ROOT / "slurm" / "profiles").glob("*.sh"))


def test_all_templates_and_profiles_present():
    assert {p.name for p in TEMPLATES} == {"single.sbatch", "array.sbatch", "multinode.sbatch", "paper_array.sbatch",
                                           "pool_array.sbatch"}
    assert {p.stem for p in PROFILES} >= {"cpu", "gpu"}


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_sbatch_template_parses_and_asks_for_no_fixed_resources(template):
    proc = subprocess.run(["bash", "-n", str(template)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = template.read_text()
    assert text.startswith("#!/bin/bash") and "#SBATCH --signal=USR1@" in text and "#SBATCH --requeue" in text
    assert "slurm/common.sh" in text
    if template.name == "pool_array.sbatch":  # the LoRA-pool trainer resumes from its own checkpoints in --out
        assert "python -m evojax_merge.pool train" in text
    else:
        assert "python -m evojax_merge.train" in text and "resume=true" in text
    header = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    for resource in ("--gres", "--gpus", "--cpus-per-task", "--mem", "--ntasks-per-node"):  # the profile's job
        assert not any(resource in line for line in header), f"{template.name}: fixed {resource} in {header}"
    assert os.access(template, os.X_OK), f"{template.name} is not executable"


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_profile_defines_resources(profile):
    script = f'set -euo pipefail; source "{profile}"; printf "%s\\n" "${{PROFILE_SBATCH[@]}}" -- ' \
             f'"${{PROFILE_MULTINODE_SBATCH[@]}}" "JAX_PLATFORMS=${{JAX_PLATFORMS:-}}"'
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert proc.returncode == 0, proc.stderr
    single, rest = proc.stdout.split("--\n")
    multinode, platforms = rest.splitlines()[:-1], rest.splitlines()[-1]
    assert single.split() and multinode and all(o.startswith("--") and "=" in o for o in single.split() + multinode)
    has_gpu = any("gpu" in o for o in single.split())
    assert has_gpu == (profile.stem == "gpu")
    assert platforms == ("JAX_PLATFORMS=cpu" if profile.stem == "cpu" else "JAX_PLATFORMS=")


def _template(args, tmp_path, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("VENV", "VIRTUAL_ENV", "PROFILE", "SLURM_JOB_ID")}
    return subprocess.run(["bash", str(ROOT / "slurm" / args[0]), *args[1:]], cwd=tmp_path, capture_output=True,
                          text=True, env={**base, **env}, timeout=60)


@pytest.mark.parametrize("args,env,message", [
    (["single.sbatch"], {"VENV": "/"}, "error: no experiment given (usage: single.sbatch"),
    (["single.sbatch", "--time=1:00:00"], {"VENV": "/"}, "error: no experiment given"),
    (["multinode.sbatch", "nosuch"], {}, "error: unknown experiment 'nosuch' (conf/experiment has: "),
    (["single.sbatch", "seed=3"], {}, "error: 'seed=3' is an override, not an experiment"),
    (["single.sbatch", "smoke"], {"PROFILE": "tpu"}, "error: unknown profile PROFILE=tpu (slurm/profiles has: cpu gpu"),
    (["single.sbatch", "smoke"], {"PROFILE": "../cpu"}, "error: unknown profile PROFILE=../cpu"),
    (["single.sbatch", "smoke"], {"PROFILE": "cpu"},
     "error: no virtualenv: set VENV=/path/to/venv or activate the virtualenv before submitting"),
    (["single.sbatch", "smoke"], {"PROFILE": "cpu", "VIRTUAL_ENV": "/nonexistent"},
     "error: the active virtualenv (VIRTUAL_ENV)=/nonexistent has no bin/activate"),
    (["array.sbatch", "smoke"], {"METHODS": "evo nope"}, "error: METHODS: unknown method 'nope'"),
    (["array.sbatch", "smoke"], {"SEEDS": "0 x"}, "error: SEEDS: 'x' is not a seed"),
])
def test_template_bad_input_is_one_line_before_sbatch(args, env, message, tmp_path):
    proc = _template(args, tmp_path, **env)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == "" and proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing submitted


FAKE_SRUN = """#!/bin/bash
# the job step, composed instead of run: Hydra checks every override the template passes
[[ "$1" == --kill-on-bad-exit=1 ]] || { echo "srun: no --kill-on-bad-exit=1" >&2; exit 3; }
shift
printf '%s\\n' "$@" > "$FAKE_SRUN_ARGS"
exec "$@" --cfg job --resolve > "$FAKE_SRUN_CFG"
"""


@pytest.mark.slow  # each template's job step composes its config in a Python subprocess
@pytest.mark.parametrize("template, experiment, env, expected", [
    ("single.sbatch", "sakana", {"SLURM_JOB_ID": "41"},
     {"run_dir": "outputs/slurm/sakana/41", "job": "41", "seed": 0, "seeds": [0, 1, 2], "distributed": False}),
    ("array.sbatch", "sakana", {"SLURM_JOB_ID": "41", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "1",
                                "SEEDS": "0 5", "METHODS": "base sakana_ps"},
     {"run_dir": "outputs/slurm/sweep/sakana/40/base/seed5", "job": "40_1", "seed": 5, "seeds": [],
      "methods": ["base"], "distributed": False}),
    ("multinode.sbatch", "smoke", {"SLURM_JOB_ID": "41"},
     {"run_dir": "outputs/slurm/multinode/smoke/41", "job": "41", "seed": 0, "seeds": [], "distributed": True}),
], ids=["single", "array", "multinode"])
def test_template_job_step_composes_and_requeues_an_unfinished_run(template, experiment, env, expected, tmp_path):
    """Inside the job (SLURM_JOB_ID set): the template's ``python -m evojax_merge.train`` command composes (srun
    is a stand-in that runs it with ``--cfg job``), and without result.json the job is requeued by its own id."""
    import yaml

    assert sys.prefix != sys.base_prefix and (Path(sys.prefix) / "bin" / "activate").is_file(), sys.prefix
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "scontrol").write_text('#!/bin/bash\necho "$@" >> "$FAKE_SCONTROL"\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    submit = tmp_path / "submit"
    submit.mkdir()
    fake = {"FAKE_SRUN_ARGS": str(tmp_path / "args"), "FAKE_SRUN_CFG": str(tmp_path / "cfg.yaml"),
            "FAKE_SCONTROL": str(tmp_path / "scontrol")}
    proc = _template([template, experiment, "logger=none"], submit, PROFILE="cpu", VENV=sys.prefix,
                     EVOJAX_ROOT=str(ROOT), SLURM_SUBMIT_DIR=str(submit),
                     PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **fake, **env)
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-3000:])
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:4] == ["python", "-m", "evojax_merge.train", f"+experiment={experiment}"], args
    assert f"hydra.run.dir={expected['run_dir']}" in args and "resume=true" in args and args[-1] == "logger=none"
    cfg = yaml.safe_load((tmp_path / "cfg.yaml").read_text())
    assert cfg["experiment"]["name"] == experiment and cfg["resume"] is True and cfg["progress"] is False
    assert (cfg["seed"], cfg["experiment"]["seeds"], cfg["distributed"]) == (
        expected["seed"], expected["seeds"], expected["distributed"])
    if "methods" in expected:
        assert list(cfg["method"]) == expected["methods"]
    assert (tmp_path / "scontrol").read_text() == f"requeue {expected['job']}\n"  # no result.json: not done
    assert f"not finished yet: requeueing job {expected['job']}" in proc.stdout


@pytest.mark.parametrize("launcher,target", [
    ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ("slurm_gpu", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ("slurm_cpu", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
    ("local", "hydra._internal.core_plugins.basic_launcher.BasicLauncher"),
])
def test_launcher_config_composes(launcher, target):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no schema-matching or version_base deprecation warnings
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    launch = cfg.hydra.launcher
    assert launch._target_ == target
    # short sweep directories: the job number, not every override
    assert OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"] == "${hydra.job.num}"
    if launcher.startswith("slurm"):
        assert launch.signal_delay_s == 90 and launch.max_num_timeout > 0
        if launcher == "slurm_cpu":
            assert launch.gpus_per_node is None and launch.gres is None and list(launch.setup) == [
                "export JAX_PLATFORMS=cpu"]
        else:
            assert launch.gpus_per_node == 1


# -- the stop / requeue policy -------------------------------------------------------------------------


@pytest.mark.parametrize("text,seconds", [
    ("1-02:03:04", 93784.0), ("02:03:04", 7384.0), ("03:04", 184.0), ("5", 300.0), ("0:00", 0.0),
    ("1-02", 93600.0), ("1-02:03", 93780.0), (" 9:30\n", 570.0),
    ("UNLIMITED", None), ("INVALID", None), ("NOT_SET", None), ("", None), ("1:2:3:4", None),
])
def test_parse_slurm_duration(text, seconds):
    assert parse_slurm_duration(text) == seconds


def test_time_limit_or_preemption():
    assert is_time_limit(None, 90) and is_time_limit(150.0, 90) and is_time_limit(0.0, 90)
    assert not is_time_limit(151.0, 90) and not is_time_limit(570.0, 90)


def test_slurm_job_id_names_one_array_task(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    assert slurm_job_id() == "42"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "42")  # the array's last task has the array's own id
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm_job_id() == "42_3"


def test_stop_signals_add_submitits_signal_inside_a_submitit_job(monkeypatch):
    for name in ("SUBMITIT_FOLDER", "SUBMITIT_EXECUTOR", "SUBMITIT_PREEMPT_SIGNAL"):
        monkeypatch.delenv(name, raising=False)
    assert stop_signals() == (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    monkeypatch.setenv("SUBMITIT_FOLDER", "/x")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert stop_signals() == (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGUSR2)
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    assert stop_signals() == (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "NOPE")
    with pytest.raises(EvoMergeInputError, match="SUBMITIT_PREEMPT_SIGNAL='NOPE'"):
        stop_signals()


def test_stop_guard_flags_and_does_not_forward(monkeypatch):
    monkeypatch.delenv("SUBMITIT_FOLDER", raising=False)
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda s, f: seen.append(s))
    try:
        with stop_guard() as guard:
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.01)
            assert guard.requested and guard.signum == signal.SIGUSR1
        assert seen == []  # the run decides what follows (exit_after_stop), not the previous handler
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_one_stop_message_outside_submitit(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("SUBMITIT_FOLDER", raising=False)
    with pytest.raises(SystemExit) as exit_:
        exit_after_stop(Preempted(signal.SIGUSR1, 7, str(tmp_path / "checkpoints" / "t")), tmp_path)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out == f"received SIGUSR1: saved checkpoint step 7 in {tmp_path / 'checkpoints' / 't'}; " \
                  f"rerun in {tmp_path} to resume\n"


# -- quiet checkpoint logs, search time across resumes ---------------------------------------------------

SPEC = StageSpec("s", GenomeLayout("alpha", 3, 0.0, 1.0), (0.5, 0.5, 0.5), 0.1, 4, 6)
SLEEP = 0.05


def _fitness(population, generation):
    time.sleep(SLEEP)
    return ((population - 0.3) ** 2).sum(axis=1)


@pytest.fixture
def quiet():
    names = ("absl", "orbax", "jax._src.xla_bridge")
    levels = {n: logging.getLogger(n).level for n in names}
    yield
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)


def test_saves_log_at_debug_and_a_stage_once_at_info(tmp_path, caplog, quiet):
    caplog.set_level(logging.INFO)  # root at INFO, as under Hydra: orbax's INFO lines would all come through
    caplog.set_level(logging.DEBUG, logger="evojax_merge.search.checkpoint")  # to see the saves themselves
    quiet_library_logs()
    with CheckpointRunner(tmp_path / "ckpt", progress=False) as runner:
        runner(SPEC, lambda p, g: ((p - 0.3) ** 2).sum(axis=1), jax.random.key(0))
    ours = [r for r in caplog.records if r.name == "evojax_merge.search.checkpoint"]
    saves = [r for r in ours if r.levelno == logging.DEBUG]
    assert [r.getMessage().split(" (")[0] for r in saves] == [f"checkpoint: step {s} of {tmp_path.name}/ckpt"
                                                              for s in range(1, 7)]
    # the console (INFO) gets one line for the stage, after its progress bar, not one per save
    assert [r.getMessage().split(" (")[0] for r in ours if r.levelno >= logging.INFO] == [
        f"{tmp_path.name}/ckpt: stage s done"]
    # (orbax's warnings still come through, e.g. a benign "Metadata file does not exist" race on the last save)
    assert [r for r in caplog.records if (r.name == "absl" or r.name.startswith("orbax"))
            and r.levelno < logging.WARNING] == []
    logging.getLogger("absl").warning("a failed save")  # warnings still come through
    assert caplog.records[-1].getMessage() == "a failed save"


def test_search_time_adds_up_across_a_preemption(tmp_path):
    guard = PreemptionGuard()  # not installed: request() stands in for the signal

    def stop_at_3(spec, state, step):
        if step == 3:
            guard.request(signal.SIGUSR1)

    first = CheckpointRunner(tmp_path, preemption=guard, on_generation=stop_at_3, progress=False)
    with pytest.raises(Preempted), first:
        first(SPEC, _fitness, jax.random.key(0))
    assert first.prior_elapsed_s == 0.0
    with CheckpointRunner(tmp_path, progress=False) as second:
        assert second.resumed_from == 3
        assert 3 * SLEEP <= second.prior_elapsed_s < first.elapsed_s  # the first segment's time up to its save
        t0 = time.perf_counter()
        second(SPEC, _fitness, jax.random.key(0))
        own = time.perf_counter() - t0
        assert second.elapsed_s >= second.prior_elapsed_s + own >= 6 * SLEEP
