"""``python -m evojax_merge.report RUN_DIR... [--out DIR] [--wandb | --no-wandb]``.

Each RUN_DIR is a run directory of ``python -m evojax_merge.train`` (it holds results.json) or a
folder above several of them, such as a Hydra multirun directory.
"""

from __future__ import annotations

import argparse
import sys

from evojax_merge.errors import EvoMergeInputError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m evojax_merge.report", description=__doc__.split("\n\n")[1])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--out", default=None, help="output folder (default: report/ next to the runs)")
    parser.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                        help="log the report to W&B (offline unless WANDB_MODE says otherwise); "
                             "default: when the runs' config has a W&B logger")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    from evojax_merge.report.build import build_report

    try:
        path = build_report(args.run_dirs, args.out, args.wandb, argv)
    except EvoMergeInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    methods = path.read_text(encoding="utf-8").split("## Methods\n\n", 1)[-1].split("\n\n", 1)[0]
    print(f"{methods}\n\nreport written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
