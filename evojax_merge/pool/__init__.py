"""Train a pool of LoRA adapters on one base model, many at once: ``python -m evojax_merge.pool train``.

- :mod:`evojax_merge.pool.step`: the vmapped multi-adapter loss, gradients and per-adapter AdamW
  (shared with the zoo's trainer);
- :mod:`evojax_merge.pool.data`: one task per record file, encoded once, batched per step;
- :mod:`evojax_merge.pool.trainer`: chunks of adapters, orbax checkpoints, PEFT adapter directories;
- :mod:`evojax_merge.pool.__main__`: the command line.
"""
