"""Worlds: what a run merges in (``conf/world/``), opened into backends the engine drives."""
