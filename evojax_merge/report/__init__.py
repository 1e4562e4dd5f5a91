"""A seeded report over run directories: ``python -m evojax_merge.report RUN_DIR... [--out DIR]``.

Groups the runs of one experiment by seed and writes REPORT.md (mean ± std over seeds, gaps marked
beyond two standard errors, provenance) and PNG figures; optionally the same to W&B.
"""

from evojax_merge.report.build import build_report

__all__ = ["build_report"]
