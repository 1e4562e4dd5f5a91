"""A tiny DAM training under a CheckpointRunner, run in a subprocess by test_dam_resume.py (and its models).

    python tests/dam_driver.py --dir D [--sleep 0.2]

Three random LoRA adapters on tests/search_driver.py's random Llama, random answer-only data per source,
``train_dam`` with ``D/checkpoints`` saved every step; prints ``RESUMED_FROM <step|None>``, writes
``D/result.json`` (coefficients and loss history) and exits 0, also when stopped by a signal.
``--sleep`` waits after every step (the numbers are unchanged) to give the test time to kill it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from search_driver import CFG, random_examples, random_stack

from evojax_merge.merge.dam import DamParts
from evojax_merge.models import LlamaForCausalLM
from evojax_merge.search.checkpoint import CheckpointRunner
from evojax_merge.search.dam import DamConfig, FullDamModel, LoraDamModel, _hf_name, train_dam
from evojax_merge.search.preemption import Preempted
from evojax_merge.slurm import stop_guard

NAMES = ("a", "b", "c")
CONFIG = DamConfig(lr=3e-2, batch_size=2, epochs=2, seed=4)  # 8 examples per source: 8 steps


def lora_model() -> LoraDamModel:
    return LoraDamModel(LlamaForCausalLM(CFG, rngs=nnx.Rngs(0)), random_stack(len(NAMES)), NAMES)


def full_model() -> FullDamModel:
    """Three "fine-tunes": the random Llama plus a small random update each (every tensor stacked)."""
    template = LlamaForCausalLM(CFG, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    stacked = {}
    for path, v in nnx.to_flat_state(nnx.split(template)[1]):
        w = np.asarray(v.value)
        stacked[_hf_name(path)] = jnp.asarray(
            np.stack([w + 0.02 * rng.standard_normal(w.shape).astype(w.dtype) for _ in NAMES]))
    return FullDamModel(template, stacked, NAMES, DamParts())


def source_data() -> list[dict[str, np.ndarray]]:
    return [random_examples(8, seed=10 + i) for i in range(len(NAMES))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args(argv)
    out = Path(args.dir)
    model, data = lora_model(), source_data()

    def slow(row: dict) -> None:
        print(f"STEP {row['step']}", flush=True)
        time.sleep(args.sleep)

    with stop_guard() as guard:
        runner = CheckpointRunner(out / "checkpoints", preemption=guard, progress=False)
        print(f"RESUMED_FROM {runner.resumed_from}", flush=True)
        try:
            with runner:
                res = train_dam(model, CONFIG, data, runner=runner, on_step=slow)
        except Preempted as stop:
            print(f"PREEMPTED {stop.step}: {stop}", flush=True)
            return 0
    result = {"coefficients": {k: v.tolist() for k, v in res.coefficients.items()}, "history": res.history}
    (out / "result.json").write_text(json.dumps(result))
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
