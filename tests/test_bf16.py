"""bf16 end to end (base, pool, activations in bf16, the loss in f32) against float32, on the tiny IE world
(conf/zoo/ie_tiny.yaml): the population's fitnesses rank the same."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from transformers import AutoTokenizer

from evojax_merge.data.batching import encode_examples
from evojax_merge.lora.pool import load_pool
from evojax_merge.models.io import load_model
from evojax_merge.search.fitness import MergeEvaluator, ValidationConfig
from evojax_merge.zoo.ie_build import build_ie_zoo, load_zoo_config

pytestmark = pytest.mark.slow  # builds the tiny IE world


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    cfg = load_zoo_config("conf/zoo/ie_tiny.yaml", ["gate.targets=[]"])  # no gate: it is not under test here
    return build_ie_zoo(cfg, cache_dir=tmp_path_factory.mktemp("zoo"), progress=False)


def test_bf16_population_fitness_ranks_like_f32(zoo):
    target = zoo.task_names[0]
    tokenizer = AutoTokenizer.from_pretrained(zoo.base_dir)
    examples = encode_examples(zoo.records(target)["validation"], tokenizer, max_len=128)
    rng = np.random.default_rng(0)
    fitness = {}
    for dtype in ("float32", "bfloat16"):
        model = load_model(zoo.base_dir, dtype=dtype)
        pool = load_pool(str(zoo.root / "adapters" / "*"), model.config, dtype=dtype)
        m = pool.modules[0]
        assert model.model.layers[0].self_attn.q_proj.weight[...].dtype == jnp.dtype(dtype)
        assert pool.stack.A[m].dtype == jnp.dtype(dtype)
        if dtype == "float32":
            n = pool.num_adapters
            alpha = rng.uniform(0.2, 1.0, (24, n)).astype(np.float32)
            beta = rng.uniform(-1.5, 1.5, (24, n)).astype(np.float32) / n
            beta[:8] = np.eye(n, dtype=np.float32)[rng.integers(0, n, 8)]  # some single adapters: a wide spread
        ev = MergeEvaluator(model, pool.stack, examples, ValidationConfig(batch_size=8, num_batches=4))
        fitness[dtype] = ev.evaluate(alpha, beta)
        assert fitness[dtype].dtype == np.float32 and np.isfinite(fitness[dtype]).all()
    f32, bf16 = fitness["float32"], fitness["bfloat16"]
    rho = spearman(f32, bf16)
    print(f"bf16 vs f32 on {target}: Spearman {rho:.4f}, max |diff| {np.abs(f32 - bf16).max():.4f}, "
          f"f32 spread {np.ptp(f32):.4f}")
    assert np.ptp(f32) > 0.02  # the candidates really differ
    assert rho >= 0.9
    assert np.abs(f32 - bf16).max() < np.ptp(f32) / 4  # bf16 error well below the population's spread
    assert not np.array_equal(f32, bf16)  # really a different precision
