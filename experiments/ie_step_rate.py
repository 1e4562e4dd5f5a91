"""Pretraining FLOP rate of an IE world's base for a model shape, without building the world.

    python experiments/ie_step_rate.py STEPS [key=value ...]     e.g. 80 model.hidden_size=128

Runs STEPS pretraining steps of ``conf/zoo/ie.yaml`` (plus the overrides) on the real batches through
the build's FlopMeter, then prints XLA's FLOPs over the call time, as a share of the f32 matmul peak
measured in the same process, and a checksum of the losses (equal checksums: bit-identical training).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
from flax import nnx

from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.perf import matmul_peak
from evojax_merge.zoo.flops import FlopMeter
from evojax_merge.zoo.ie_build import _pretrain_batches, base_model_config, load_zoo_config, world_tokenizer
from evojax_merge.zoo.trainer import pretrain

CONF = Path(__file__).resolve().parents[1] / "conf" / "zoo" / "ie.yaml"


def main(argv: list[str]) -> int:
    if not argv or not argv[0].isdigit():
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    steps, overrides = int(argv[0]), argv[1:]
    cfg = load_zoo_config(CONF, overrides)
    tokenizer = world_tokenizer()  # as the build makes it
    model = LlamaForCausalLM(base_model_config(cfg.model, tokenizer), rngs=nnx.Rngs(cfg.seed))
    meter = FlopMeter()
    _, losses = pretrain(model, _pretrain_batches(cfg, tokenizer, np.random.default_rng(cfg.seed)), steps,
                         cfg.pretrain.lr, progress=False, meter=meter,
                         compiler_options=cfg.compiler_options)
    rate = meter.summary()["pretrain"]
    peak = matmul_peak() / 1e9
    digest = hashlib.sha256(np.asarray(losses, np.float32).tobytes()).hexdigest()[:16]
    print(f"{' '.join(overrides) or 'conf/zoo/ie.yaml'}: {rate['gflops_per_s']:.1f} GFLOP/s = "
          f"{100 * rate['gflops_per_s'] / peak:.1f}% of {peak:.0f} GFLOP/s peak; {rate['seconds']:.1f} s for "
          f"{steps} steps; losses sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
