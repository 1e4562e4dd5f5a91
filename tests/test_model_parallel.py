"""The base and the pool split over a "model" mesh axis next to the population axis: a 2 x 2 mesh
of 4 virtual CPU devices gives the losses of one device.

XLA_FLAGS must be set before JAX initialises its backend, so the check runs in a fresh subprocess
with 4 host devices; the one-device reference is a 1 x 1 mesh in the same process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a subprocess on 4 devices

DRIVER = r'''
import json, sys
import jax, numpy as np
from evojax_merge.bench.population import random_examples, random_genomes, random_stack
from evojax_merge.models.config import ModelConfig
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.search.fitness import ValidationConfig
from evojax_merge.sharding import ShardedEvaluator, make_mesh
from flax import nnx

cfg = ModelConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16)
model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
stack = random_stack(cfg, 6, 4)
data = random_examples(cfg, 8, 24)
val = ValidationConfig(batch_size=4, num_batches=2)
out = {"devices": len(jax.devices())}
two = ShardedEvaluator(model, stack, data, make_mesh(2, 2), val)
one = ShardedEvaluator(model, stack, data, make_mesh(1, 1), val)
q = two.params["model"]["layers"][0]["self_attn"]["q_proj"]["weight"][...]
down = two.params["model"]["layers"][1]["mlp"]["down_proj"]["weight"][...]
out["q_shards"] = sorted({tuple(s.data.shape) for s in q.addressable_shards})
out["down_shards"] = sorted({tuple(s.data.shape) for s in down.addressable_shards})
out["q_devices"] = len(q.sharding.device_set)
b = two.stack.B["layers.0.self_attn.q_proj"]
out["b_shards"] = sorted({tuple(s.data.shape) for s in b.addressable_shards})
for p in (8, 5):
    alpha, beta = random_genomes(6, p, seed=p)
    out[f"two_{p}"] = two.evaluate(alpha, beta).tolist()
    out[f"one_{p}"] = one.evaluate(alpha, beta).tolist()
print(json.dumps(out))
'''


def test_two_by_two_mesh_equals_one_device():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, "-c", DRIVER], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    import json

    import numpy as np

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4 and out["q_devices"] == 4
    assert out["q_shards"] == [[32, 64]]  # q_proj [64, 64]: d_out split over "model" (2)
    assert out["down_shards"] == [[64, 48]]  # down_proj [64, 96]: d_in split
    assert out["b_shards"] == [[6, 32, 4]]  # LoRA B of q_proj follows its d_out
    for p in (8, 5):  # 5 does not divide the pop axis: padded, the pad's losses dropped
        two, one = np.asarray(out[f"two_{p}"]), np.asarray(out[f"one_{p}"])
        assert two.shape == one.shape == (p,) and np.ptp(one) > 0
        np.testing.assert_allclose(two, one, rtol=0, atol=2e-5)


def test_bad_mesh_is_a_one_line_error():
    from evojax_merge.errors import EvoMergeInputError
    from evojax_merge.sharding import make_mesh, param_spec

    with pytest.raises(EvoMergeInputError, match="needs 8 devices"):
        make_mesh(4, 2)
    from jax.sharding import PartitionSpec as P

    assert param_spec("model.layers.0.self_attn.k_proj.weight", (8, 6), 4) == P("model", None)
    assert param_spec("model.layers.0.self_attn.k_proj.weight", (6, 8), 4) == P(None, None)  # 6 % 4: replicated
    assert param_spec("model.layers.0.mlp.down_proj.weight", (8, 12), 4) == P(None, "model")
    assert param_spec("model.norm.weight", (8,), 4) == P()
