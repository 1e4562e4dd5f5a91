"""Pure merge math: Evo-Merging, LoraHub and the task-vector baselines (docs/methods.md §1-3).

Every function here is a pure function of arrays (no I/O), jit- and vmap-able; static arguments
(prune mode, sign method, rank) are plain Python values.
"""

from evojax_merge.merge.evo import PRUNE_MODES, PruneMode, evo_merge
from evojax_merge.merge.lorahub import lorahub_merge
from evojax_merge.merge.sparsify import (
    keep_count,
    keep_threshold,
    sorted_magnitudes,
    sparsify,
    stack_magnitudes,
)
from evojax_merge.merge.task_vectors import (
    adapter_delta,
    dare,
    dare_masks,
    dare_prune,
    dare_ties,
    dare_ties_with_masks,
    dare_with_masks,
    disjoint_merge,
    linear,
    magnitude_prune,
    majority_sign_mask,
    module_key,
    task_arithmetic,
    task_vectors,
    ties,
    to_low_rank,
    trim_count,
)

__all__ = [
    "PRUNE_MODES",
    "PruneMode",
    "adapter_delta",
    "dare",
    "dare_masks",
    "dare_prune",
    "dare_ties",
    "dare_ties_with_masks",
    "dare_with_masks",
    "disjoint_merge",
    "evo_merge",
    "keep_count",
    "keep_threshold",
    "linear",
    "lorahub_merge",
    "magnitude_prune",
    "majority_sign_mask",
    "module_key",
    "sorted_magnitudes",
    "sparsify",
    "stack_magnitudes",
    "task_arithmetic",
    "task_vectors",
    "ties",
    "to_low_rank",
    "trim_count",
]
