"""Merged results written out and read back: the files of the methods whose results need search/ or merge/ types.

- :mod:`.dam_io`: DAM's full sources read from HF directories; the merged model, the merged adapter
  and the learned coefficients written back.
- :mod:`.dfs_io`: a DFS model (Sakana's data-flow merge) as an HF directory plus its path and scales.

It sits above models/, merge/ and search/ (it imports their types); nothing below imports it.
The plain HF / PEFT readers and writers stay where they are: ``models/io.py`` and ``lora/export.py``.
"""
