"""slurm/pool_array.sbatch: checks and submission on a login node, and one array task's job step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_pool_trainer import TASKS, world  # noqa: F401  (the tiny model and record files)

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "slurm" / "pool_array.sbatch"


def _template(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if k not in ("VENV", "VIRTUAL_ENV", "PROFILE", "SLURM_JOB_ID", "MODEL", "DATA", "OUT", "CHUNK")}
    return subprocess.run(["bash", str(TEMPLATE), *args], cwd=cwd, capture_output=True, text=True,
                          env={**base, **env}, timeout=300)


def _bin(tmp_path: Path, **tools: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in tools.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def test_template_parses_and_asks_for_no_fixed_resources():
    assert subprocess.run(["bash", "-n", str(TEMPLATE)], capture_output=True).returncode == 0
    text = TEMPLATE.read_text()
    assert "#SBATCH --signal=USR1@" in text and "#SBATCH --requeue" in text and "slurm/common.sh" in text
    assert "python -m evojax_merge.pool train" in text and "--chunk-index" in text
    header = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert not any(r in line for line in header for r in ("--gres", "--gpus", "--cpus-per-task", "--mem"))
    assert os.access(TEMPLATE, os.X_OK)


@pytest.mark.parametrize("args, env, message", [
    ([], {"DATA": "d", "OUT": "o"}, "error: MODEL is not set"),
    ([], {"MODEL": "m", "OUT": "o"}, "error: DATA is not set"),
    ([], {"MODEL": "m", "DATA": "d", "OUT": "o", "CHUNK": "0"}, "error: CHUNK: '0' is not a positive number"),
    (["oops"], {"MODEL": "m", "DATA": "d", "OUT": "o"}, "error: 'oops' is not an sbatch option"),
    ([], {"MODEL": "m", "DATA": "missing.json", "OUT": "o"}, "error: --data: missing.json: file not found"),
])
def test_bad_input_is_one_line_and_submits_nothing(args, env, message, tmp_path):
    path = _bin(tmp_path, sbatch='#!/bin/bash\necho submitted > "$(dirname "$0")/../submitted"\n')
    submit = tmp_path / "submit"
    submit.mkdir()
    proc = _template(args, submit, PROFILE="cpu", VENV=sys.prefix, PATH=path, **env)
    assert proc.returncode == 2 and proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "submitted").exists() and list(submit.iterdir()) == []


def test_login_node_submits_one_array_task_per_chunk(world, tmp_path):  # noqa: F811
    root, _, _ = world
    path = _bin(tmp_path, sbatch='#!/bin/bash\nprintf "%s\\n" "$@"\n')
    proc = _template(["--time=01:00:00", "--", "--lr", "2e-4"], tmp_path, PROFILE="cpu", VENV=sys.prefix, PATH=path,
                     MODEL=str(root / "model"), DATA=str(root / "data"), OUT="adapters", CHUNK="2")
    assert proc.returncode == 0, proc.stderr
    args = proc.stdout.splitlines()
    assert args == ["--cpus-per-task=4", "--mem=16G", "--array=0-1%4", "--time=01:00:00", str(TEMPLATE), "--",
                    "--lr", "2e-4"]


@pytest.mark.slow  # the job step trains one chunk in a Python subprocess
def test_array_task_trains_its_chunk_or_is_requeued(world, tmp_path):  # noqa: F811
    """Task 1 of CHUNK=2 trains re_c (the second chunk) and writes its summary; a step that comes back without
    the summary (stopped) is requeued by its own array id."""
    root, _, _ = world
    run_srun = '#!/bin/bash\n[[ "$1" == --kill-on-bad-exit=1 ]] || exit 3\nshift\nexec "$@"\n'
    path = _bin(tmp_path, srun=run_srun, scontrol='#!/bin/bash\necho "$@" >> "$(dirname "$0")/../scontrol"\n')
    env = dict(PROFILE="cpu", VENV=sys.prefix, PATH=path, MODEL=str(root / "model"), DATA=str(root / "data"),
               OUT=str(tmp_path / "adapters"), CHUNK="2", SLURM_JOB_ID="41", SLURM_ARRAY_JOB_ID="40",
               SLURM_ARRAY_TASK_ID="1", SLURM_SUBMIT_DIR=str(tmp_path), EVOJAX_ROOT=str(ROOT))
    proc = _template(["--", "--batch-size", "4"], tmp_path, **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == [".slurm", "re_c"]
    assert (tmp_path / "adapters" / ".slurm" / "chunk_1.json").is_file() and not (tmp_path / "scontrol").exists()
    assert "finished: chunk 1" in proc.stdout
    path = _bin(tmp_path, srun="#!/bin/bash\nexit 0\n")  # a step that stopped before finishing
    proc = _template(["--", "--batch-size", "4"], tmp_path, **{**env, "PATH": path})
    assert proc.returncode == 0 and (tmp_path / "scontrol").read_text() == "requeue 40_1\n"
    assert not (tmp_path / "adapters" / ".slurm" / "chunk_1.json").exists()
    assert len(TASKS) == 3
