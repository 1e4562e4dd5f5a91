"""The benchmarks, one command: ``python -m evojax_merge.bench [--plan MODEL | --sakana | --dam | --stream-memory]``.

- :mod:`.cli`: the command line; the first flag picks the benchmark, the rest are its own flags.
- :mod:`.population`: the batched population call against a loop of single calls and the PyTorch/PEFT
  reference; the random weights, pools and genomes the other benchmarks and tests reuse.
- :mod:`.plan`: ``--plan``, the compile-time plan (memory, FLOPs, projected H100 time) on abstract shapes.
- :mod:`.sakana`: ``--sakana``, a PS / DFS population in one call against a per-candidate loop.
- :mod:`.dam`: ``--dam``, the DAM training step against a PyTorch reference.
- :mod:`.stream_memory`: ``--stream-memory``, the streamed peak memory of the merge methods at 8B shapes.

Every benchmark times through the one timer, :func:`evojax_merge.perf.best_time`. Inside the package the
imports go one way: ``cli`` -> the benchmarks; ``plan``, ``dam`` -> ``population``; nothing imports ``cli``.
This module imports nothing, so ``import evojax_merge.bench.plan`` loads only the plan.
"""
