"""Cooperative preemption: a signal sets a flag, the search saves at the end of the generation and stops.

SLURM announces the end of a job with a signal (``--signal=USR1@90`` before the time limit, SIGTERM when
the job is preempted or cancelled). Doing real work inside a signal handler is unsafe (it runs between
two bytecodes, possibly in the middle of a checkpoint write), so the handler only sets a flag; the
checkpointing runner polls it after every generation, saves, waits for the save to be on disk and
raises :class:`Preempted`. The entry point turns that into a clean exit 0, and the requeued job
resumes from the checkpoint.

Ctrl-C (SIGINT) is a stop request too: the first one says so in one line and sets the same flag (no
KeyboardInterrupt, no traceback), the search saves and the run exits as after SIGTERM; a second Ctrl-C
kills the process at once (the default action), losing only what ran since the last checkpoint.

    with PreemptionGuard() as guard:
        runner = CheckpointRunner(ckpt_dir, preemption=guard)
        try:
            result = evo_merging_search(..., runner=runner)
        except Preempted as stop:
            print(stop)
            sys.exit(0)
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import types
from collections.abc import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

# What the first Ctrl-C prints (the terminal has echoed "^C" on the current line, a progress bar's maybe).
INTERRUPT_NOTICE = ("\nstop requested (Ctrl-C): the search saves a checkpoint after this generation (or step) "
                    "and the run exits; Ctrl-C again quits at once\n")

Handler = Callable[[int, types.FrameType | None], object] | int | None


class Preempted(Exception):
    """The run was asked to stop by a signal; its state is saved at ``step`` in ``directory``."""

    def __init__(self, signum: int | None, step: int, directory: str):
        self.signum = None if signum is None else int(signum)
        self.step = int(step)
        self.directory = str(directory)
        # signum is None on a host of a multi-host job that did not see the signal itself
        name = "a stop request" if signum is None else signal.Signals(self.signum).name
        # what to do next depends on the entry point (rerun, requeue): it adds that, once
        super().__init__(f"received {name}: saved checkpoint step {self.step} in {self.directory}")


class PreemptionGuard:
    """Installs flag-setting handlers for ``signals`` while active and restores the previous ones on exit.

    ``requested`` is the flag; ``signum`` the first signal received. With ``forward=True`` and a previous
    handler that is a Python callable (e.g. submitit's requeue handler), that handler is called with the
    received signal after the guard exits, so an outer framework still sees the preemption, but only
    once the checkpoint is safely written. SIGINT is never forwarded (Python's handler would raise
    KeyboardInterrupt); the first one prints :data:`INTERRUPT_NOTICE` and restores SIGINT's default
    action, so that a second Ctrl-C ends the process at once.
    """

    def __init__(self, signals: Sequence[int] = DEFAULT_SIGNALS, forward: bool = True):
        self.signals = tuple(int(s) for s in signals)
        self.forward = forward
        self.signum: int | None = None
        self._previous: dict[int, Handler] = {}
        self._installed = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Set the flag as a signal would (tests, or an entry point with its own stop condition)."""
        if self.signum is None:
            self.signum = int(signum)

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        # only the flag: the one message about the stop comes from the entry point once the save is on disk
        self.request(signum)
        if signum == signal.SIGINT:  # someone at a terminal: say that it was heard, and how to quit now
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.write(2, INTERRUPT_NOTICE.encode())  # not print(): the handler may run inside a write to stderr

    def install(self) -> PreemptionGuard:
        if threading.current_thread() is not threading.main_thread():
            # signal.signal only works on the main thread; the run still works, it just cannot be preempted
            log.warning("PreemptionGuard: not on the main thread, signal handlers not installed")
            return self
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)
        self._installed = True
        return self

    def restore(self) -> None:
        """Put the previous handlers back (a handler installed outside Python reads as None: use SIG_DFL)."""
        if not self._installed:
            return
        for s, previous in self._previous.items():
            signal.signal(s, previous if previous is not None else signal.SIG_DFL)
        self._installed = False

    def __enter__(self) -> PreemptionGuard:
        return self.install()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.restore()
        previous = self._previous.get(self.signum) if self.signum is not None else None
        if self.forward and callable(previous) and previous is not signal.default_int_handler:
            previous(self.signum, None)  # may raise (submitit requeues and exits); that is its contract


def any_process(flag: bool) -> bool:
    """True when ``flag`` is set on any JAX process: all hosts must stop after the same generation.

    Signals reach the hosts of a multi-node job at slightly different times; without this agreement one
    host could stop while the others wait in a collective of the next generation.
    """
    import jax

    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))
