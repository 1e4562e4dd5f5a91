"""The method x world matrix: which method config can run on which world, from the configs themselves.

    python experiments/method_world_matrix.py            # a Markdown table

Each ``conf/method/<name>.yaml`` (a single method, not a list) is instantiated, each ``conf/world/<name>.yaml``
composed (not opened: nothing is built), and the method's ``missing(world.provides)`` decides the cell: ``yes``,
or what the world lacks (the one-line error ``python -m evojax_merge.train`` gives before anything is built).
"""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from evojax_merge.runner.build import build_methods
from evojax_merge.world.registry import register_configs

CONF = Path(__file__).resolve().parents[1] / "conf"
WORLDS = ("ie", "sakana", "files", "remote")


def main() -> None:
    register_configs()
    names = sorted(p.stem for p in (CONF / "method").glob("*.yaml") if "_target_" in p.read_text())
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        methods = build_methods(compose("config", overrides=[f"method=[{','.join(names)}]"]))
        provides = {}
        for w in WORLDS:
            extra = ["world.model.path=/x", "world.adapters=/x/*"] if w == "files" else []
            cfg = compose("config", overrides=[f"world={w}", *extra])
            from hydra.utils import get_class

            provides[w] = get_class(cfg.world._target_).provides
    print("| method | " + " | ".join(WORLDS) + " |")
    print("|---|" + "---|" * len(WORLDS))
    for label, m in methods.items():
        cells = [("yes" if not m.missing(provides[w]) else "no: needs " + ", ".join(sorted(m.missing(provides[w]))))
                 for w in WORLDS]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
