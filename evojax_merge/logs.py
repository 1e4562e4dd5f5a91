"""Quiet library logs: a run's log holds what the run did, not what orbax did to write it.

orbax-checkpoint logs through absl at INFO: about 37 lines for every checkpoint it saves (handler
registration, tmp directories, renames, thread joins, throughput). With a save per generation that is
most of a job's log, and on SLURM (``--open-mode=append``) it grows with every requeue. The checkpoint
runner logs its saves at DEBUG and one INFO line per resume, stop and finished stage
(``evojax_merge.search.checkpoint``), so the console shows the progress bars; the libraries are cut back
to warnings and errors, which still come through.

transformers (used for tokenizers only) warns at import that "PyTorch was not found. Models won't be
available..." wherever torch is not installed: true, and irrelevant to a JAX project. Importing
``evojax_merge`` drops that one record (:func:`drop_torch_advice`); its other warnings stay.

    from evojax_merge.logs import quiet_library_logs
    quiet_library_logs()      # once, after the logging handlers are set up (Hydra: inside main)

Progress bars (:func:`progress_bar`, :func:`progress_iter`) are tqdm bars only where stderr is a
terminal. Redirected to a file (SLURM, ``nohup``, ``2> log``), a bar would write carriage returns and
cursor-up sequences into the log on every update; there each phase logs one line when it ends instead
(``stage1_denoise: 20/20 in 41.3 s (best=0.8123, sigma=0.0312)``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
progress_log = logging.getLogger("evojax_merge.progress")

TORCH_ADVICE = "PyTorch was not found."  # how transformers' advisory warning starts

# Logger names the libraries log through at INFO without anything a user acts on.
NOISY_LOGGERS: tuple[str, ...] = (
    "absl",  # orbax-checkpoint (absl.logging -> the "absl" Python logger)
    "orbax",  # orbax modules that use Python logging directly
    "jax._src.xla_bridge",  # "Unable to initialize backend 'cuda'" and friends on CPU hosts
)


def quiet_library_logs(names: Iterable[str] = NOISY_LOGGERS, level: int = logging.WARNING) -> dict[str, int]:
    """Raise the level of the ``names`` loggers to ``level``; returns their previous levels.

    Idempotent. Warnings and errors of those libraries (a failed save, a corrupt checkpoint) still
    reach the log; this project's own loggers (``evojax_merge.*``) are left as they are.
    """
    drop_torch_advice()
    previous = {}
    for name in names:
        logger = logging.getLogger(name)
        previous[name] = logger.level
        if logger.getEffectiveLevel() < level:
            logger.setLevel(level)
    return previous


class _DropTorchAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TORCH_ADVICE)


def drop_torch_advice() -> None:
    """Drop transformers' "PyTorch was not found" warning; idempotent. It is logged once, when transformers
    is imported, through the ``transformers`` logger: so call this before that (``evojax_merge/__init__``)."""
    logger = logging.getLogger("transformers")
    if not any(isinstance(f, _DropTorchAdvice) for f in logger.filters):
        logger.addFilter(_DropTorchAdvice())



class PhaseLine:
    """A progress bar's stand-in off a terminal: silent while the phase runs, one INFO line when it ends.

    The same calls as a tqdm bar (``update``, ``set_postfix``, ``close``); ``close`` is idempotent."""

    def __init__(self, total: int | None, desc: str, initial: int = 0):
        self.total, self.desc, self.n, self.initial = total, desc, int(initial), int(initial)
        self.postfix: dict[str, object] = {}
        self.t0 = time.perf_counter()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += int(n)

    def set_postfix(self, **values: object) -> None:
        self.postfix = dict(values)

    def line(self) -> str:
        """``desc: n/total in s`` (plus ``, from k`` when resumed, and the postfix)."""
        done = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        resumed = f", from {self.initial}" if self.initial else ""
        extra = f" ({', '.join(f'{k}={v}' for k, v in self.postfix.items())})" if self.postfix else ""
        return f"{self.desc}: {done} in {time.perf_counter() - self.t0:.1f} s{resumed}{extra}"

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            progress_log.info("%s", self.line())


class _NoBar:
    """``progress=False``: nothing at all."""

    def update(self, n: int = 1) -> None: ...

    def set_postfix(self, **values: object) -> None: ...

    def close(self) -> None: ...


def stderr_is_terminal() -> bool:
    """Whether progress bars may draw: stderr (where tqdm writes) is a terminal."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def progress_bar(total: int | None, desc: str, enabled: bool = True, initial: int = 0, *,
                 terminal: bool | None = None):
    """A tqdm bar on a terminal, a :class:`PhaseLine` otherwise, nothing when not ``enabled``.

    ``terminal`` overrides the check of stderr (tests)."""
    if not enabled:
        return _NoBar()
    if terminal if terminal is not None else stderr_is_terminal():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)
    return PhaseLine(total, desc, initial)


def progress_iter(items: Iterable[T], desc: str, enabled: bool = True, *, terminal: bool | None = None
                  ) -> Iterator[T]:
    """Iterate ``items`` under a :func:`progress_bar` (closed when the loop ends, normally or not)."""
    items = list(items)
    bar = progress_bar(len(items), desc, enabled, terminal=terminal)
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()
