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
    parser.add_argument("--bootstrap", type=int, default=None, metavar="B",
                        help="resamples of the paired test-set bootstrap (default 1000; 0: none)")
    parser.add_argument("--bootstrap-seed", type=int, default=None, metavar="SEED",
                        help="seed of the bootstrap's generator (default 0)")
    args = parser.parse_args(argv)
    if args.bootstrap is not None and args.bootstrap != 0 and args.bootstrap < 2:
        parser.error("--bootstrap: 0 (none) or at least 2 resamples")
    import matplotlib

    matplotlib.use("Agg")
    from evojax_merge.report.bootstrap import BOOT_SEED, N_BOOT
    from evojax_merge.report.build import build_report

    n_boot = N_BOOT if args.bootstrap is None else args.bootstrap
    seed = BOOT_SEED if args.bootstrap_seed is None else args.bootstrap_seed
    try:
        path = build_report(args.run_dirs, args.out, args.wandb, argv, n_boot=n_boot, boot_seed=seed)
    except EvoMergeInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    methods = path.read_text(encoding="utf-8").split("## Methods\n\n", 1)[-1].split("\n\n", 1)[0]
    print(f"{methods}\n\nreport written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
