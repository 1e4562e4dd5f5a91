"""Multi-host start-up: one call before anything touches a device.

Under SLURM (``srun``, one task per GPU), ``jax.distributed.initialize()`` reads the coordinator
address, the process count and this process's rank from the SLURM environment, and gives each process
the local GPU numbered ``SLURM_LOCALID``. Afterwards ``jax.devices()`` lists the devices of every host,
so the population mesh of ``evojax_merge.search.fitness`` spans the whole job with no other change.
"""

from __future__ import annotations

import logging
from typing import Any

import jax

log = logging.getLogger(__name__)


def maybe_initialize_distributed(enabled: bool, **kwargs: Any) -> tuple[int, int]:
    """Call ``jax.distributed.initialize(**kwargs)`` when ``enabled`` (once); return (process index, count).

    Call it first thing: JAX refuses to initialise once any computation or ``jax.devices()`` has run.

    ``kwargs`` (coordinator_address, num_processes, process_id, ...) are only needed outside SLURM or the
    other clusters JAX detects by itself.
    """
    if enabled and not jax.distributed.is_initialized():
        jax.distributed.initialize(**kwargs)
    index, count = jax.process_index(), jax.process_count()
    if enabled:
        log.info("jax.distributed: process %d of %d, %d local / %d global devices (%s)", index, count,
                 jax.local_device_count(), jax.device_count(), jax.default_backend())
    return index, count
