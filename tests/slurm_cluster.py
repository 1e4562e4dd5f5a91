"""A real single-node SLURM cluster on localhost, for tests: munged, slurmctld and slurmd, all state in one
directory, on free ports. It installs ``slurm-wlm`` and ``munge`` with apt when they are missing (as root)
and stops only the daemons it started. Every failure to get there is an ``AssertionError`` saying why.

    with LocalSlurm(tmp_dir) as cluster:
        job = cluster.sbatch_id(proc_stdout)
        cluster.run(["squeue", "-h"])
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

COMMANDS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo", "srun")
APT_PACKAGES = ("slurm-wlm", "munge")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"])

# Declared to SLURM (SlurmdParameters=config_overrides: declared, not probed): room for four 4-CPU, 16 GB jobs
# of the CPU profile at once, on any host. Nothing enforces them without cgroups.
NODE_CPUS = 16
NODE_MEMORY_MB = 65536


def _tail(text: str, n: int = 2000) -> str:
    return text[-n:].strip()


def which(command: str) -> str | None:
    return shutil.which(command, path=SEARCH_PATH)


def ensure_installed() -> list[str]:
    """Install slurm-wlm and munge with apt when a command is missing; returns what was missing."""
    missing = [c for c in COMMANDS if which(c) is None]
    if not missing:
        return []
    if os.geteuid() != 0:
        raise AssertionError(f"SLURM/munge commands {missing} are missing and installing {' '.join(APT_PACKAGES)} "
                             "with apt-get needs root")
    if which("apt-get") is None:
        raise AssertionError(f"SLURM/munge commands {missing} are missing and there is no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise AssertionError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): "
                                 f"{_tail(proc.stdout + proc.stderr)}")
    still = [c for c in COMMANDS if which(c) is None]
    if still:
        raise AssertionError(f"apt-get installed {' '.join(APT_PACKAGES)} but {still} are still not on the PATH")
    return missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_environ() -> dict[str, str]:
    """os.environ without anything of an enclosing SLURM job or submitit, so the tests talk to this cluster only."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SUBMITIT_"))}


class LocalSlurm:
    """A single-node cluster: node = this host (its short hostname), partition ``debug``, state under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.host = socket.gethostname().split(".")[0]
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**clean_environ(), "SLURM_CONF": str(self.conf)}

    # -- start / stop -----------------------------------------------------------------------------------
    def __enter__(self) -> LocalSlurm:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _daemon(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = open(self.root / "log" / f"{name}.out", "w")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def _log(self, name: str) -> str:
        texts = [p.read_text(errors="replace") for p in sorted((self.root / "log").glob(f"{name}*")) if p.is_file()]
        return _tail("\n".join(texts))

    def start(self) -> None:
        for d in ("state", "spool", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        key, sock = self.root / "munge.key", self.root / "munge.sock"
        proc = subprocess.run([which("mungekey"), "--create", "--keyfile", str(key)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise AssertionError(f"mungekey failed: {_tail(proc.stderr)}")
        r = self.root
        self._daemon("munged", [which("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={sock}",
                                f"--pid-file={r / 'munged.pid'}", f"--log-file={r / 'log' / 'munged.log'}",
                                f"--seed-file={r / 'munged.seed'}"])
        self._wait(lambda: sock.exists(), 30, "munged did not create its socket", "munged")
        self.conf.write_text(self._slurm_conf(sock, free_port(), free_port()))
        self._daemon("slurmctld", [which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self.run(["scontrol", "ping"], check=False).stdout.count("UP") >= 1, 60,
                   "slurmctld did not answer `scontrol ping`", "slurmctld")
        self._daemon("slurmd", [which("slurmd"), "-D", "-f", str(self.conf), "-N", self.host])
        self._wait(lambda: self.run(["sinfo", "-h", "-o", "%T"], check=False).stdout.strip() == "idle", 60,
                   "the node did not come up idle", "slurmd")

    def _slurm_conf(self, sock: Path, ctld_port: int, d_port: int) -> str:
        r = self.root
        return "\n".join([
            "ClusterName=evojaxtest",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={d_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
            f"AuthInfo=socket={sock},cred_expire=5",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "MailProg=/bin/true",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=bf_interval=1,sched_interval=2",
            "JobCompType=jobcomp/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobRequeue=1",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            "KillWait=10",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    def stop(self) -> None:
        """Cancel this cluster's jobs, then stop the daemons this object started (by their process ids)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            ids = self.run(["squeue", "-h", "-o", "%i"], check=False).stdout.split()
            if ids:
                self.run(["scancel", *ids], check=False)
                deadline = time.monotonic() + 60
                while self.run(["squeue", "-h"], check=False).stdout.strip() and time.monotonic() < deadline:
                    time.sleep(1)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)

    def _wait(self, ready, timeout: float, what: str, daemon: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            proc = self.procs.get(daemon)
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"{daemon} exited with {proc.returncode}: {what}\n{self._log(daemon)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} within {timeout:.0f}s\n{self._log(daemon)}")
            time.sleep(0.2)

    # -- using it -------------------------------------------------------------------------------------
    def run(self, cmd: list[str], check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("env", self.env)
        proc = subprocess.run([which(cmd[0]) or cmd[0], *cmd[1:]], capture_output=True, text=True,
                              timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): "
                                 f"{_tail(proc.stdout + proc.stderr)}")
        return proc

    def jobs(self) -> dict[str, str]:
        """``{job id: state}`` of every job the controller still lists (array tasks as ``<array id>_<task>``)."""
        out = self.run(["squeue", "-h", "-o", "%i %T"], check=False).stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    @staticmethod
    def submitted_id(stdout: str) -> str:
        m = re.search(r"Submitted batch job (\d+)", stdout)
        assert m, f"no job id in sbatch's output: {stdout!r}"
        return m.group(1)


@contextmanager
def venv_cluster(work: Path, root: Path, **extra_env: str) -> Iterator[LocalSlurm]:
    """A started cluster whose jobs run this virtualenv's Python on the repo at ``root``, on CPU, with a cache
    under ``work``; ``cluster.env`` is the job environment (plus ``extra_env``) and ``cluster.work`` is ``work``."""
    if sys.prefix == sys.base_prefix:
        raise AssertionError(f"the tests must run in a virtualenv (the templates activate one): {sys.executable}")
    env = clean_environ()
    env.pop("VENV", None)
    env.pop("XLA_FLAGS", None)
    env.update(VIRTUAL_ENV=sys.prefix, PATH=f"{Path(sys.prefix) / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=str(root), EVOJAX_MERGE_CACHE=str(work / "cache"), WANDB_MODE="offline",
               JAX_PLATFORMS="cpu", **extra_env)
    ensure_installed()
    with LocalSlurm(work / "cluster") as c:
        c.env = {**env, "SLURM_CONF": str(c.conf), "PROFILE": "cpu"}
        c.work = work
        yield c
