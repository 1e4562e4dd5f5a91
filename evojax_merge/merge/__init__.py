"""Pure merge math: Evo-Merging, LoraHub, generalized task arithmetic, the unified-vector and the
singular-subspace merges (docs/methods.md §1-3).

Every function here is a pure function of arrays (no I/O), jit- and vmap-able; static arguments
(prune mode, sparsifier, consensus, rank) are plain hashable Python values. No module here names a
merge method: the methods are configurations of these parts (evojax_merge/methods, conf/method).
"""

from evojax_merge.merge.consensus import Consensus, SignElection, Sum, disjoint_merge, majority_sign_mask
from evojax_merge.merge.evo import PRUNE_MODES, PruneMode, evo_merge
from evojax_merge.merge.lorahub import lorahub_merge
from evojax_merge.merge.sparsifiers import (
    Sparsifier,
    bernoulli_masks,
    drop_rescale,
    keep_all,
    magnitude_band,
    magnitude_prune,
    random_drop,
    ranked_drop,
    sparsifier,
    task_keys,
    trim_count,
)
from evojax_merge.merge.sparsify import (
    keep_count,
    keep_threshold,
    sorted_magnitudes,
    sparsify,
    stack_magnitudes,
)
from evojax_merge.merge.task_vectors import (
    adapter_delta,
    linear,
    merge_module,
    merge_module_factors,
    merge_task_vectors,
    module_key,
    task_vectors,
    to_low_rank,
)

__all__ = [
    "PRUNE_MODES",
    "Consensus",
    "PruneMode",
    "SignElection",
    "Sparsifier",
    "Sum",
    "adapter_delta",
    "bernoulli_masks",
    "disjoint_merge",
    "drop_rescale",
    "evo_merge",
    "keep_all",
    "keep_count",
    "keep_threshold",
    "linear",
    "lorahub_merge",
    "magnitude_band",
    "magnitude_prune",
    "majority_sign_mask",
    "merge_module",
    "merge_module_factors",
    "merge_task_vectors",
    "module_key",
    "random_drop",
    "ranked_drop",
    "sorted_magnitudes",
    "sparsifier",
    "sparsify",
    "stack_magnitudes",
    "task_keys",
    "task_vectors",
    "to_low_rank",
    "trim_count",
]
