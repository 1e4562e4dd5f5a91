"""``python -m evojax_merge.bench``: the benchmarks' one command (:func:`evojax_merge.bench.cli.main`).

A bad input (an unknown ``--plan`` model, a missing config.json) is one line on stderr, exit status 2.
"""

from __future__ import annotations

import sys

from evojax_merge.bench.cli import main
from evojax_merge.errors import EvoMergeInputError

if __name__ == "__main__":
    try:
        main()
    except EvoMergeInputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
