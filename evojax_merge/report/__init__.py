"""A seeded report over run directories: ``python -m evojax_merge.report RUN_DIR... [--out DIR]``.

Groups the runs of one experiment by replicate (world, search seed) and writes REPORT.md (mean ± std
over worlds, or over seeds with one world; paired gaps with 95% t-intervals, plus the test-set bootstrap;
the paper's claims held, not held or undetermined; the gate over the worlds; provenance) and PNG figures,
forest plots per claim among them; optionally the same to W&B.
"""

from evojax_merge.report.build import build_report

__all__ = ["build_report"]
