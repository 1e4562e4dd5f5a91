"""Quiet library logs: a run's log holds what the run did, not what orbax did to write it.

orbax-checkpoint logs through absl at INFO: about 37 lines for every checkpoint it saves (handler
registration, tmp directories, renames, thread joins, throughput). With a save per generation that is
most of a job's log, and on SLURM (``--open-mode=append``) it grows with every requeue. The checkpoint
runner writes one INFO line per save itself (``evojax_merge.search.checkpoint``), so the libraries are
cut back to warnings and errors, which still come through.

    from evojax_merge.logs import quiet_library_logs
    quiet_library_logs()      # once, after the logging handlers are set up (Hydra: inside main)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

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
    previous = {}
    for name in names:
        logger = logging.getLogger(name)
        previous[name] = logger.level
        if logger.getEffectiveLevel() < level:
            logger.setLevel(level)
    return previous
