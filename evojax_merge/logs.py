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
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

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

