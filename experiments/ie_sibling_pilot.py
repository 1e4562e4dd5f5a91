"""Sibling pilot of the IE world: retrain only the adapters on an already built base, run the gate.

    PYTHONPATH=$PWD python experiments/ie_sibling_pilot.py ZOO_DIR CONF.yaml [key=value ...]

The base model and tokenizer come from ZOO_DIR (a built ``iezoo-*`` directory); the adapters'
world and recipe from CONF.yaml plus overrides (only ``tasks``, ``adapters`` and ``gate`` may
differ from the zoo's: the base's pretraining does not depend on them). Prints the gate and
each candidate's validation/test F1. This is a pilot tool: it writes nothing.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from transformers import AutoTokenizer

from evojax_merge.models.io import load_model
from evojax_merge.zoo.gate import format_gate, run_gate
from evojax_merge.zoo.ie_build import _adapter_batches, _stack_training_sets, load_zoo_config
from evojax_merge.zoo.ie_world import adapter_datasets, generate_world
from evojax_merge.zoo.trainer import init_lora_stack, train_adapters


def main(argv: list[str]) -> int:
    root, conf, overrides = Path(argv[0]), argv[1], argv[2:]
    cfg = load_zoo_config(conf, overrides)
    model = load_model(root / "base")
    tokenizer = AutoTokenizer.from_pretrained(root / "base")
    t0 = time.perf_counter()
    data = generate_world(cfg.tasks)
    datasets = adapter_datasets(cfg.tasks, data)
    names = sorted(datasets)
    adapters = {n: {"task": datasets[n]["task"], "kind": datasets[n]["kind"]} for n in names}
    train, counts = _stack_training_sets([datasets[n]["train"] for n in names], tokenizer, cfg.model.max_len)
    a = cfg.adapters
    stack = init_lora_stack(model, len(names), a.rank, a.lora_alpha, jax.random.key(cfg.seed + 1), init=a.lora_init)
    stack, curve = train_adapters(model, stack, _adapter_batches(train, counts, a.batch_size, cfg.seed), a.steps,
                                  a.lr, progress=False)
    print(f"adapters trained in {time.perf_counter() - t0:.0f} s; final loss",
          {n: round(float(curve[-10:, i].mean()), 3) for i, n in enumerate(names)}, flush=True)
    gate = run_gate(model, tokenizer, stack, names, adapters, data, cfg.gate.targets, cfg.gate.examples,
                    cfg.model.max_len)
    for t, c in gate["targets"].items():
        print(t, "singles", {k: round(100 * v, 1) for k, v in c["single_f1"].items()})
        for cand in c["candidates"]:
            print(f"  pick {100 * cand['pick_f1']:5.1f} report {100 * cand['report_f1']:5.1f}  {cand['recipe']}")
    print(format_gate(gate))
    print(json.dumps({"overrides": overrides, "gate": {t: {k: c[k] for k in ("best_single", "best_single_f1",
                                                                             "oracle_f1", "gap", "passed")}
                                                       for t, c in gate["targets"].items()}}))
    return 0 if gate["passed"] else 1


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    raise SystemExit(main(sys.argv[1:]))
