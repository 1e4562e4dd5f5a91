"""Merging methods, one class per method, created from ``conf/method/<name>.yaml`` (``_target_``)."""

from evojax_merge.methods.base import MergeMethod, MergeTask, Outcome

__all__ = ["MergeMethod", "MergeTask", "Outcome"]
