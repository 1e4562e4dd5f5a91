"""val_size cells: nested subsets of one permutation, each scoring exactly the size on its label (issue 23)."""

from __future__ import annotations

import numpy as np

from evojax_merge.search.fitness import ValidationConfig
from evojax_merge.setting.cells import nested_subset


def test_sizes_are_nested_and_exact():
    records = [{"i": i} for i in range(200)]
    val = ValidationConfig(batch_size=15, num_batches=4, seed=3)
    subsets = {}
    for size in (25, 50, 200):
        recs, cfg = nested_subset(records, size, val)
        assert len(recs) == size == cfg.batch_size * cfg.num_batches  # the fitness sees every one of them
        subsets[size] = [r["i"] for r in recs]
    assert subsets[50][:25] == subsets[25] and subsets[200][:50] == subsets[50]
    assert sorted(subsets[200]) == list(range(200))
    assert subsets[25] != list(range(25))  # a permutation, not the split's prefix
    assert subsets[25] == np.random.default_rng(3).permutation(200)[:25].tolist()


def test_batches_divide_the_size():
    records = [{"i": i} for i in range(60)]
    val = ValidationConfig(batch_size=15, num_batches=4, seed=0)
    assert [(c.batch_size, c.num_batches) for c in (nested_subset(records, n, val)[1] for n in (25, 50, 7, 45, 60))] \
        == [(5, 5), (10, 5), (7, 1), (15, 3), (15, 4)]
    assert nested_subset(records, 7, ValidationConfig(batch_size=5))[1].num_batches == 7  # a prime above the batch
