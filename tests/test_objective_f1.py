"""The F1 fitness (evojax_merge/search/fitness_f1.py) and the objective rows evo_merging_f1, evo_merging_ce_all
(evojax_merge/methods/evo_merging_objective.py).

- by hand: a random tiny Llama over the IE world's tokenizer, a random pool, ie_tiny's records and a fake
  generator with known answers; the stage fitness must be ``-F1 + λ · mean|x|`` worked out from the
  InstructUIE counting convention (micro TP / predicted / gold items), on exactly the CE evaluator's records;
- end to end: ``python -m evojax_merge.train +experiment=smoke method=[evo_merging_f1,evo_merging_ce_all,
  evo_merging_resample_candidate]`` on the tiny IE world (world=ie_tiny) runs; the F1 row records its fitness
  by that convention, the CE row searched on every validation record while the cell's batches hold half of
  them, the reference-protocol row on draws of the cell's size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from evojax_merge.data.batching import encode_records
from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import LoraStack, module_path
from evojax_merge.models.llama import LlamaForCausalLM
from evojax_merge.search.evo_merging import stage_fitness
from evojax_merge.search.fitness import MergeEvaluator, ValidationConfig
from evojax_merge.search.fitness_f1 import F1Evaluator
from evojax_merge.search.genome import GenomeLayout
from evojax_merge.zoo.ie_build import base_model_config, load_zoo_config, world_tokenizer
from evojax_merge.zoo.ie_world import generate_world


def _random_pool(n: int, cfg, rank: int = 2) -> LoraStack:
    rng = np.random.default_rng(0)
    A, B = {}, {}
    for layer in range(cfg.num_hidden_layers):
        for proj, (d_out, d_in) in cfg.module_shapes().items():
            A[module_path(layer, proj)] = 0.1 * rng.standard_normal((n, rank, d_in)).astype(np.float32)
            B[module_path(layer, proj)] = 0.1 * rng.standard_normal((n, d_out, rank)).astype(np.float32)
    return LoraStack(A={m: jnp.asarray(a) for m, a in A.items()}, B={m: jnp.asarray(b) for m, b in B.items()},
                     scale=jnp.full((n,), 2.0, jnp.float32))


@pytest.fixture(scope="module")
def tiny():
    zoo = load_zoo_config("conf/zoo/ie_tiny.yaml")
    records = generate_world(zoo.tasks)["ner_medicine"]["validation"][:4]
    tokenizer = world_tokenizer()
    cfg = base_model_config(zoo.model, tokenizer)
    model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
    stack = _random_pool(2, cfg)
    examples = encode_records(records, tokenizer, zoo.model.max_len).arrays
    ce = MergeEvaluator(model, stack, examples, ValidationConfig(batch_size=2, num_batches=1, seed=0))
    return model, tokenizer, records, ce


def test_the_f1_fitness_is_minus_micro_f1_plus_the_l1_penalty_by_hand(tiny):
    model, tokenizer, records, ce = tiny
    calls = []

    def fake_generate(model_, tokenizer_, adapters, recs, max_len, max_new_tokens, chunk=16, **kw):
        calls.append((int(np.asarray(adapters.scale).shape[0]), [r["input"] for r in recs]))
        exact = [r["output"] for r in recs]  # every gold item
        half = [r["output"].split(";")[0] + "; person: nobody" for r in recs]  # one gold item, one wrong
        return [exact, half, ["" for _ in recs]]  # candidate 2 answers nothing

    f1 = F1Evaluator(ce, model, tokenizer, records, "ner", max_len=96, max_new_tokens=8, generate=fake_generate)
    population = np.array([[0.2, -0.4], [1.0, 0.0], [0.0, 0.0]], np.float32)
    fitness = stage_fitness(f1, GenomeLayout("beta", 2, -1.5, 1.5), np.ones(2, np.float32), 0.05)
    got = np.asarray(fitness(population, 0))
    # the CE evaluator's records: the first 2 of the seed-0 permutation of 4 (MergeEvaluator._draw_index)
    picked = np.random.default_rng(0).permutation(4)[:2]
    assert calls == [(3, [records[i]["input"] for i in picked])]
    assert all(len(records[i]["entities"]) == 2 for i in picked)  # 4 gold items in all
    # candidate 0: TP 4 / pred 4 / gold 4 -> F1 1;  candidate 1: TP 2 / pred 4 / gold 4 -> P = R = 1/2, F1 1/2;
    # candidate 2: nothing predicted -> P = 0 (0/0 is 0), R = 0 -> F1 0.  Penalty 0.05 · mean|x|.
    want = np.array([-1.0 + 0.05 * 0.3, -0.5 + 0.05 * 0.5, 0.0 + 0.05 * 0.0], np.float32)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert f1.generated == 3 * 2


def test_the_f1_fitness_follows_resampled_batches(tiny):
    model, tokenizer, records, _ = tiny
    examples = encode_records(records, tokenizer, 96).arrays
    ce = MergeEvaluator(model, _random_pool(2, model.config), examples,
                        ValidationConfig(batch_size=2, num_batches=1, resample=True, seed=3))
    f1 = F1Evaluator(ce, model, tokenizer, records, "ner")
    for g in (0, 1, 5):
        want = np.random.default_rng((3, g)).permutation(4)[:2]
        assert [r["input"] for r in f1.records_at(g)] == [records[i]["input"] for i in want]


def test_the_f1_fitness_refuses_records_that_are_not_the_evaluators(tiny):
    model, tokenizer, records, ce = tiny
    with pytest.raises(EvoMergeInputError, match="3 records, but the CE evaluator holds 4"):
        F1Evaluator(ce, model, tokenizer, records[:3], "ner")


@pytest.mark.slow
def test_the_objective_rows_run_on_the_tiny_world_and_record_their_fitness(tmp_path, smoke_cache):
    out = tmp_path / "run"
    env = {**os.environ, "EVOJAX_MERGE_CACHE": str(smoke_cache), "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "evojax_merge.train", "+experiment=smoke",
         "method=[evo_merging_f1,evo_merging_ce_all,evo_merging_resample_candidate]",
         "data.validation.num_batches=1", "budget.stage1_generations=1", "budget.stage2_generations=1",
         f"hydra.run.dir={out}", "progress=false"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    methods = json.loads((out / "results.json").read_text())["methods"]
    cell = methods["evo_merging_f1"]["per_task"]["ner_medicine"]
    assert cell["fitness"] == "f1" and set(cell["stages"]) == {"stage1_denoise", "stage2_scale"}
    # what stage 2 minimised, by the convention: -F1 on the validation batch + 0.05 · mean|beta|
    want = -cell["val_f1"] + 0.05 * float(np.mean(np.abs(cell["beta"])))
    assert cell["val_fitness"] == pytest.approx(want, abs=1e-6)
    # smoke: 1 batch of 4 records (data.validation.num_batches=1), population 4, 1 + 1 generations (+ x0 each),
    # and the result's F1
    assert cell["generated_examples"] == 4 * (2 * (1 + 4 * 1) + 1)
    assert np.isfinite(cell["val_ce"]) and 0.0 <= cell["f1"] <= 1.0
    # CE on every validation record (ie_tiny: 8, in 2 batches of 4), while the cell's batches hold 4
    ce_all = methods["evo_merging_ce_all"]["per_task"]["ner_medicine"]
    assert ce_all["fitness"] == "ce" and ce_all["validation"]["records"] == 8
    assert ce_all["validation"]["batch_size"] == 4 and ce_all["validation"]["num_batches"] == 2
    assert ce_all["forward_examples"] == 2 * (1 + 4 * 1) * 8 + 4
    # the reference protocol: the cell's batch size and count (1 x 4), a fresh draw for every candidate
    ref = methods["evo_merging_resample_candidate"]["per_task"]["ner_medicine"]
    assert ref["validation"] == {"batch_size": 4, "num_batches": 1, "resample": "candidate", "seed": 0, "records": 4}
    assert ref["forward_examples"] == 2 * (1 + 4 * 1) * 4 + 4


@pytest.mark.parametrize("kw, message", [
    ({"fitness": "accuracy"}, "fitness: 'accuracy' is not one of ce, f1"),
    ({"validation": {"records": 5}}, "validation.records: unknown key"),
    ({"validation": {"num_batches": "most"}}, "validation.num_batches: 'most' is not a positive integer or 'all'"),
    ({"validation": {"resample": "often"}}, "validation.resample: 'often' is not true, false or candidate"),
    ({"fitness": "f1", "validation": {"resample": "candidate"}}, "candidate draws are for the CE fitness"),
])
def test_the_objective_rows_refuse_bad_options(kw, message):
    from evojax_merge.methods.evo_merging_objective import EvoMergingObjective

    with pytest.raises(EvoMergeInputError, match=message):
        EvoMergingObjective(**kw)


def test_the_objective_rows_build_from_their_configs():
    from hydra import compose, initialize_config_dir

    from evojax_merge.methods.evo_merging_objective import EvoMergingObjective
    from evojax_merge.runner.build import build_methods, config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=ood", "method=[evo_merging_f1,evo_merging_ce_all,"
                                                                 "evo_merging_resample_candidate]"])
    methods = build_methods(cfg)
    assert all(isinstance(m, EvoMergingObjective) for m in methods.values())
    assert (methods["evo_merging_f1"].fitness, methods["evo_merging_f1"].validation) == ("f1", {})
    assert (methods["evo_merging_ce_all"].fitness, methods["evo_merging_ce_all"].validation) == (
        "ce", {"num_batches": "all"})
    assert methods["evo_merging_resample_candidate"].validation == {"resample": "candidate"}
    configs = [m.config for m in methods.values()]
    assert configs[0] == configs[1] == configs[2]  # Evo's search, budget and all


def test_candidate_batches_draw_fresh_batches_per_candidate_and_score_them(tiny):
    from evojax_merge.methods.evo_merging_objective import CandidateBatches

    model, tokenizer, records, _ = tiny
    stack = _random_pool(2, model.config)
    examples = encode_records(records, tokenizer, 96).arrays
    inner = MergeEvaluator(model, stack, examples, ValidationConfig(batch_size=2, num_batches=2, seed=5))
    cand = CandidateBatches(inner)
    alpha = np.ones((3, 2), np.float32)
    beta = np.array([[0.5, 0.5], [0.5, 0.5], [1.0, -0.2]], np.float32)
    got = cand.evaluate(alpha, beta, generation=1)
    np.testing.assert_array_equal(got, cand.evaluate(alpha, beta, generation=1))  # deterministic (resume)
    draws = [cand.index(alpha[p], beta[p], 1, p) for p in range(3)]
    assert not np.array_equal(draws[0], draws[1])  # equal genomes, their own batches
    assert not np.array_equal(draws[0], cand.index(alpha[0], beta[0], 2, 0))  # and new ones each generation
    for p in range(3):  # the mean over the candidate's two batches of each batch's CE, scored apart
        per_batch = []
        for rows in draws[p]:
            sub = {k: np.asarray(v)[rows] for k, v in examples.items()}
            one = MergeEvaluator(model, stack, sub, ValidationConfig(batch_size=2, num_batches=1))
            per_batch.append(one.evaluate(alpha[p:p + 1], beta[p:p + 1])[0])
        assert got[p] == pytest.approx(float(np.mean(per_batch)), rel=1e-5)
