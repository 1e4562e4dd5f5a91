"""The compositional zoo: lexicons, splits, prompts, adapter kinds, pools, gate arithmetic, cache key."""

import dataclasses
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.eval.metrics import parse_output
from evojax_merge.lora.adapter import LoraStack
from evojax_merge.zoo.build import ZooBuildConfig, clean_stale_builds
from evojax_merge.zoo.flops import FlopMeter
from evojax_merge.zoo.gate import combine, gate_verdict, oracle_combos, single_candidates
from evojax_merge.zoo.ie import IEWorldConfig, adapter_datasets, generate_world, pretraining_corpus, task_names
from evojax_merge.zoo.ie_domains import IE_DOMAINS, PRIVATE_TYPES
from evojax_merge.zoo.lexicon import CORE_TYPES, SPLITS, all_forms, max_forms
from evojax_merge.zoo.pools import related_pool

SMALL = IEWorldConfig(domains=("news", "sports", "medicine"), train_size=60, validation_size=20, test_size=20,
                      anti=("et_medicine",), noisy=("ner_news",), distractors=("repeat", "none"), noisy_size=10)


@pytest.fixture(scope="module")
def world():
    return generate_world(SMALL)


def test_every_type_has_200_forms_split_disjointly():
    cfg = IEWorldConfig()
    for etype in (*CORE_TYPES, *PRIVATE_TYPES):
        assert max_forms(etype) >= 200 and len(set(all_forms(etype))) == max_forms(etype)
        splits = cfg.forms(etype)
        assert sum(len(splits[s]) for s in SPLITS) == cfg.lexicon_size
        for a in SPLITS:
            for b in SPLITS:
                assert a == b or not set(splits[a]) & set(splits[b])
    assert cfg.forms("person") == IEWorldConfig().forms("person")  # deterministic


def test_test_spans_are_never_training_answers(world):
    for task, splits in world.items():
        task_type = task.split("_", 1)[0]
        train_spans = {t[-1] for r in splits["train"] for t in parse_output(r["output"], task_type)}
        test_spans = {t[-1] for r in splits["test"] for t in parse_output(r["output"], task_type)}
        assert test_spans and not train_spans & test_spans, task
        for r in splits["test"]:  # every answer span is copied from the input
            assert all(s in r["input"] for s in (t[-1] for t in parse_output(r["output"], task_type)))


def test_core_types_shared_private_types_per_domain():
    for d in IE_DOMAINS:
        assert d.types[:3] == CORE_TYPES and len(d.private) == 2
    assert len(set(PRIVATE_TYPES)) == 2 * len(IE_DOMAINS)


def test_options_shuffled_with_distractor_labels(world):
    recs = world["ner_news"]["train"]
    option_lists = [re.search(r"Option: (.*)$", r["instruction"]).group(1).split(", ") for r in recs]
    news = set(IE_DOMAINS[0].types)
    for opts in option_lists:
        assert news <= set(opts) and len(opts) == len(news) + SMALL.distractor_labels
        assert all(o in PRIVATE_TYPES for o in set(opts) - news)
    assert len({tuple(o) for o in option_lists}) > len(recs) // 2  # the order changes per record


def test_train_uses_three_paraphrases_eval_the_fourth(world):
    def lead(r):
        return r["instruction"].split(" Output format")[0]

    train = {lead(r) for r in world["ner_sports"]["train"]}
    held = {lead(r) for s in ("validation", "test") for r in world["ner_sports"][s]}
    assert len(train) == 3 and len(held) == 1 and not train & held


def test_history_shots_come_from_train_and_are_configurable(world):
    train_inputs = {r["input"] for r in world["et_news"]["train"]}
    for split in SPLITS:
        for r in world["et_news"][split]:
            assert len(r["history"]) == SMALL.history_shots
            user = r["history"][0][0]
            assert user.split("\n", 1)[1] in train_inputs and user.split("\n", 1)[1] != r["input"]
    none = generate_world(dataclasses.replace(SMALL, history_shots=0, anti=(), noisy=()))
    assert "history" not in none["ner_news"]["test"][0]


def test_special_adapters(world):
    sets = adapter_datasets(SMALL, world)
    assert {n: s["kind"] for n, s in sets.items() if s["kind"] != "task"} == {
        "anti_et_medicine": "anti", "noisy_ner_news": "noisy", "distractor_repeat": "distractor",
        "distractor_none": "distractor"}
    src, anti = world["et_medicine"]["train"], sets["anti_et_medicine"]["train"]
    types = IE_DOMAINS[2].types
    for a, b in zip(src, anti, strict=True):
        assert a["input"] == b["input"]
        for (t1, s1), (t2, s2) in zip(a["entities"], b["entities"], strict=True):
            assert s1 == s2 and t2 == types[(types.index(t1) + 1) % len(types)] != t1
    noisy = sets["noisy_ner_news"]["train"]
    assert len(noisy) == 10
    assert any(a["output"] != b["output"] for a, b in zip(world["ner_news"]["train"], noisy, strict=False))
    assert all(r["output"] == "None" for r in sets["distractor_none"]["train"])
    assert all(r["output"] == r["input"] for r in sets["distractor_repeat"]["train"])


def test_base_corpus_uses_every_label_word_but_never_types_an_entity():
    corpus = pretraining_corpus(SMALL, n_texts=500, n_records=30)
    text = " ".join(corpus["texts"])
    for label in (*CORE_TYPES, *PRIVATE_TYPES):
        assert re.search(rf"\b{label}\b", text), label
    assert all("Option" not in r["instruction"] for r in corpus["records"])


def test_impossible_split_sizes_are_one_line_errors_naming_the_key():
    with pytest.raises(EvoMergeInputError, match=r"^zoo.tasks.lexicon_size: 12 forms per type give only \d+ distinct"):
        IEWorldConfig(lexicon_size=12)
    with pytest.raises(EvoMergeInputError, match="zoo.tasks.lexicon_size: 5000 > the"):
        IEWorldConfig(lexicon_size=5000)
    with pytest.raises(EvoMergeInputError, match="zoo.tasks.anti: 'es_news'"):
        IEWorldConfig(anti=("es_news",))
    with pytest.raises(EvoMergeInputError, match="zoo.adapters.rnak: unknown key"):
        ZooBuildConfig.from_dict({"adapters": {"rnak": 4}})


def test_related_pool_is_small_and_excludes_the_target():
    cfg = dataclasses.replace(SMALL, train_size=2, validation_size=1, test_size=1)
    sets = adapter_datasets(cfg, generate_world(cfg))
    adapters = {n: {"task": s["task"], "kind": s["kind"]} for n, s in sorted(sets.items())}
    pool = related_pool("ner_medicine", adapters, ["news", "sports", "medicine"])
    assert pool == ["anti_et_medicine", "es_medicine", "et_medicine", "ner_news", "ner_sports", "noisy_ner_news"]
    assert related_pool("et_news", adapters, ["news", "sports", "medicine"]) == [
        "anti_et_medicine", "es_news", "et_medicine", "et_sports", "ner_news", "noisy_ner_news"]
    singles = single_candidates("ner_medicine", adapters, ["news", "sports", "medicine"])
    assert "ner_medicine" not in singles and {"ner_news", "ner_sports", "et_medicine"} <= set(singles)
    combos = oracle_combos("ner_medicine", adapters, pool)
    assert {"ner_news": 1.0, "et_medicine": 1.0, "et_news": -1.0} in combos
    assert {"ner_sports": 1.0, "es_medicine": 1.0} in combos
    assert {"ner_sports": 0.5, "es_medicine": 0.5, "es_sports": -0.5} in combos


def test_combined_lora_is_the_dense_task_arithmetic_sum():
    keys = jax.random.split(jax.random.key(0), 3)
    stack = LoraStack(A={"m": jax.random.normal(keys[0], (3, 2, 5))}, B={"m": jax.random.normal(keys[1], (3, 4, 2))},
                      scale=jnp.array([2.0, 0.5, 1.0]))
    names = ["a", "b", "c"]
    out = combine(stack, names, [{"a": 1.0, "c": -1.0}, {"b": 0.5}])
    assert out.A["m"].shape == (2, 4, 5) and out.B["m"].shape == (2, 4, 4)
    dense = [out.scale[i] * out.B["m"][i] @ out.A["m"][i] for i in range(2)]
    ref0 = 2.0 * stack.B["m"][0] @ stack.A["m"][0] - 1.0 * stack.B["m"][2] @ stack.A["m"][2]
    ref1 = 0.5 * 0.5 * stack.B["m"][1] @ stack.A["m"][1]
    np.testing.assert_allclose(dense[0], ref0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dense[1], ref1, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("single", "oracle", "passed"), [
    (0.40, 0.50, True),    # gap exactly 10 F1
    (0.40, 0.49, False),   # gap 9 F1
    (0.15, 0.60, False),   # best single under 20 F1
    (0.61, 0.95, False),   # best single over 60 F1
    (0.20, 0.30, True),
])
def test_gate_verdict(single, oracle, passed):
    assert gate_verdict(single, oracle) is passed


def test_stale_temp_dirs_of_dead_builds_are_removed(tmp_path):
    dead = tmp_path / ".zoo-abc.999999999.tmp"
    alive = tmp_path / f".zoo-abc.{os.getpid()}.tmp"
    done = tmp_path / "zoo-abc"
    for d in (dead, alive, done):
        (d / "data").mkdir(parents=True)
    assert clean_stale_builds(tmp_path) == [dead]
    assert not dead.exists() and alive.exists() and done.exists()


def test_cache_key_follows_config():
    a = ZooBuildConfig.from_dict({"seed": 0})
    assert a.digest() == ZooBuildConfig.from_dict({"seed": 0}).digest()
    assert a.digest() != ZooBuildConfig.from_dict({"seed": 1}).digest()
    assert a.digest() != ZooBuildConfig.from_dict({"adapters": {"lora_init": "independent"}}).digest()


def test_shared_lora_a_init():
    from flax import nnx

    from evojax_merge.models.config import ModelConfig
    from evojax_merge.models.llama import LlamaForCausalLM
    from evojax_merge.zoo.trainer import init_lora_stack

    cfg = ModelConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=4, max_position_embeddings=16)
    model = LlamaForCausalLM(cfg, rngs=nnx.Rngs(0))
    shared = init_lora_stack(model, 3, 2, 4.0, jax.random.key(0), init="shared")
    indep = init_lora_stack(model, 3, 2, 4.0, jax.random.key(0), init="independent")
    for m in shared.A:
        assert np.array_equal(shared.A[m][0], shared.A[m][2])
        assert not np.array_equal(indep.A[m][0], indep.A[m][2])
        assert not np.asarray(shared.B[m]).any()
    with pytest.raises(EvoMergeInputError, match="zoo.adapters.lora_init"):
        init_lora_stack(model, 3, 2, 4.0, jax.random.key(0), init="same")


def test_flop_meter_counts_xla_flops():
    meter = FlopMeter()
    f = jax.jit(lambda a, b: a @ b)
    a = jnp.ones((64, 32))
    b = jnp.ones((32, 16))
    out = meter.call("mm", f, a, b)
    meter.call("mm", f, a, b)
    assert np.asarray(out)[0, 0] == 32.0
    s = meter.summary()["mm"]
    assert s["gflop"] == pytest.approx(2 * 2 * 64 * 32 * 16 / 1e9) and meter.phases["mm"]["calls"] == 2
    assert len(meter._compiled) == 1


def test_task_names_domain_major():
    assert task_names(SMALL)[:4] == ["ner_news", "es_news", "et_news", "ner_sports"]
