"""What a run does when a cluster tells it to stop: save, then come back.

Two ways a run lands on SLURM, and what happens after the search saved its checkpoint and raised
:class:`~evojax_merge.search.preemption.Preempted`:

- **the sbatch templates** (``slurm/*.sbatch``): the process prints one line and exits 0; the template
  sees no ``result.json`` and requeues the job, which resumes in the same run directory.
- **Hydra's submitit launcher** (``hydra/launcher=slurm_cpu|slurm_gpu``): submitit's own handler for its
  signal (``SUBMITIT_PREEMPT_SIGNAL``, USR2 unless set) would ``sys.exit`` wherever the signal lands,
  in the middle of an orbax save for instance. So the run's guard catches that signal too (besides
  SIGTERM and SIGUSR1), and once the checkpoint is on disk:

  * at the time limit (SLURM's time left <= the launcher's ``signal_delay_s`` + a margin) submitit's
    handler is called as if the signal had just arrived: it re-pickles the job, counts one of
    ``max_num_timeout``'s retries and requeues;
  * otherwise it is a preemption (``scancel --signal``, a higher-priority job): ``scontrol requeue``
    without touching submitit's timeout count, then a clean exit.

    with stop_guard() as guard:     # in train.main, before anything slow
        ...
    except Preempted as stop:
        exit_after_stop(stop, out_dir, signal_delay_s)
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

from evojax_merge.search.preemption import DEFAULT_SIGNALS, Preempted, PreemptionGuard

log = logging.getLogger(__name__)

# A stop this close to the time limit is the time limit (the signal came signal_delay_s before it, and the
# generation in flight plus the save took some of the rest).
TIMEOUT_MARGIN_S = 60.0


def in_submitit_job() -> bool:
    """True inside a job that submitit runs on SLURM (its runner sets both variables)."""
    return bool(os.environ.get("SUBMITIT_FOLDER")) and os.environ.get("SUBMITIT_EXECUTOR") == "slurm"


def submitit_signal() -> signal.Signals:
    """The signal submitit asks SLURM for before the time limit (submitit reads the same variable)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper()
    try:
        return signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    except KeyError:
        from evojax_merge.errors import EvoMergeInputError

        raise EvoMergeInputError(f"SUBMITIT_PREEMPT_SIGNAL={name!r} is not a signal name (e.g. USR2)") from None


def stop_signals() -> tuple[int, ...]:
    """SIGTERM, SIGUSR1 and SIGINT (Ctrl-C), plus submitit's signal inside a submitit job."""
    signals = list(DEFAULT_SIGNALS)
    if in_submitit_job() and submitit_signal() not in signals:
        signals.append(submitit_signal())
    return tuple(int(s) for s in signals)


def stop_guard() -> PreemptionGuard:
    """The run's guard: sets a flag on any stop signal; :func:`exit_after_stop` decides what follows."""
    return PreemptionGuard(stop_signals(), forward=False)


def parse_slurm_duration(text: str) -> float | None:
    """SLURM's ``[days-]hours:minutes:seconds`` (also ``minutes:seconds``, ``minutes``) in seconds;
    ``None`` for UNLIMITED, NOT_SET, INVALID or anything else that is not a duration."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if m is None:
        return None
    days, a, b, c = m.groups()
    if days is not None:  # d-h, d-h:m, d-h:m:s
        h, mi, s = int(a), int(b or 0), int(c or 0)
    elif c is not None:  # h:m:s
        h, mi, s = int(a), int(b), int(c)
    elif b is not None:  # m:s
        h, mi, s = 0, int(a), int(b)
    else:  # m
        h, mi, s = 0, int(a), 0
    return float(((int(days or 0) * 24 + h) * 60 + mi) * 60 + s)


def slurm_time_left_s(job_id: str) -> float | None:
    """Seconds until ``job_id`` hits its time limit, from ``squeue`` (None if SLURM does not say)."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%L"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.split()
    return parse_slurm_duration(lines[0]) if lines else None


def is_time_limit(time_left_s: float | None, signal_delay_s: float) -> bool:
    """A stop within ``signal_delay_s`` + :data:`TIMEOUT_MARGIN_S` of the time limit is the time limit.
    Unknown time left counts as the time limit, so that submitit's retry budget still bounds requeues."""
    return time_left_s is None or time_left_s <= signal_delay_s + TIMEOUT_MARGIN_S


def slurm_job_id() -> str:
    """This job's id as scontrol and scancel take it: ``<array job id>_<task id>`` for an array task. (The
    plain SLURM_JOB_ID of one task of an array equals the array's id, and that means every task.)"""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def _requeue_submitit(stop: Preempted, signal_delay_s: float) -> NoReturn:
    job_id = slurm_job_id()
    if int(os.environ.get("SLURM_PROCID", "0")) != 0:  # rank 0 requeues the job; the others just leave
        raise SystemExit(0)
    left = slurm_time_left_s(job_id)
    sig = submitit_signal()
    handler = signal.getsignal(sig)
    if is_time_limit(left, signal_delay_s) and callable(handler):
        print(f"{stop}; the time limit: submitit requeues job {job_id} and counts a timeout", flush=True)
        handler(int(sig), None)  # submitit: re-pickle, countdown - 1, scontrol requeue, sys.exit
        raise SystemExit(0)  # a handler that returned (not submitit's) leaves the job to end here
    proc = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        print(f"{stop}; scontrol requeue {job_id} failed ({proc.stderr.strip() or proc.returncode}): "
              "resubmit the sweep with the same hydra.sweep.dir to resume", file=sys.stderr, flush=True)
        raise SystemExit(1)
    print(f"{stop}; preempted (not a timeout): requeued job {job_id}, it resumes from there", flush=True)
    raise SystemExit(0)


def exit_after_stop(stop: Preempted, out_dir: Path, signal_delay_s: float = 90.0) -> NoReturn:
    """The one message a stopped run prints, then the exit that gets it resumed (see the module doc)."""
    if in_submitit_job():
        _requeue_submitit(stop, signal_delay_s)
    print(f"{stop}; rerun in {out_dir} to resume", flush=True)
    raise SystemExit(0)
