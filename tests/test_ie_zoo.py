"""The compositional IE world (zoo/ie_world.py): lexicons, splits, options, siblings, shared-A init, gate."""

import dataclasses
import os
import re
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.eval.metrics import parse_output
from evojax_merge.fileio import cached_build, clean_stale_builds
from evojax_merge.lora.adapter import LoraStack
from evojax_merge.zoo.flops import FlopMeter
from evojax_merge.zoo.gate import combine, gate_verdict, oracle_combos, single_candidates
from evojax_merge.zoo.ie_build import ZooBuildConfig, load_zoo_config
from evojax_merge.zoo.ie_domains import IE_DOMAINS, IE_DOMAINS_BY_NAME, PRIVATE_TYPES
from evojax_merge.zoo.ie_world import (
    IEWorldConfig,
    adapter_datasets,
    generate_world,
    pretraining_corpus,
    sibling_confusion,
    task_names,
)
from evojax_merge.zoo.lexicon import CORE_TYPES, SPLITS, all_forms, max_forms

SMALL = IEWorldConfig(domains=("news", "sports", "medicine"), train_size=60, validation_size=20, test_size=20,
                      anti=("et_medicine",), siblings=("ner_medicine",), sibling_count=3, sibling_size=12,
                      distractors=("repeat", "none"), history_shots=1)


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


def test_test_spans_are_never_training_answers_and_are_copied_from_the_input(world):
    for task, splits in world.items():
        task_type = task.split("_", 1)[0]
        train_spans = {t[-1] for r in splits["train"] for t in parse_output(r["output"], task_type)}
        test_spans = {t[-1] for r in splits["test"] for t in parse_output(r["output"], task_type)}
        assert test_spans and not train_spans & test_spans, task
        for r in splits["test"]:
            assert all(s in r["input"] for s in (t[-1] for t in parse_output(r["output"], task_type)))


def test_core_types_shared_private_types_per_domain():
    for d in IE_DOMAINS:
        assert d.types[:3] == CORE_TYPES and len(d.private) == 2
    assert len(set(PRIVATE_TYPES)) == 2 * len(IE_DOMAINS)


def test_options_shuffled_per_record_with_distractor_labels(world):
    recs = world["ner_news"]["train"]
    option_lists = [re.search(r"Option: (.*)$", r["instruction"]).group(1).split(", ") for r in recs]
    news = set(IE_DOMAINS_BY_NAME["news"].types)
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
    none = generate_world(dataclasses.replace(SMALL, history_shots=0, anti=(), siblings=()))
    assert "history" not in none["ner_news"]["test"][0]


def test_sibling_confusions_leave_every_label_right_in_a_majority():
    types = IE_DOMAINS_BY_NAME["medicine"].types
    maps = [sibling_confusion(types, j, 1, offset=2) for j in range(4)]
    assert maps[0] == {"organization": "disease"} and maps[1] == {"disease": "drug"}
    assert maps[3] == {"person": "location"}
    for t in types:  # each label is renamed by at most one of the four siblings
        assert sum(t in m for m in maps) <= 1
    pairs = [sibling_confusion(types, j, 2) for j in range(5)]
    assert pairs[1] == {"organization": "disease", "disease": "person"}
    for t in types:  # two siblings rename each label, to two different labels: 3 right votes of 5
        wrong = [m[t] for m in pairs if t in m]
        assert len(wrong) == 2 and len(set(wrong)) == 2 and t not in wrong


def test_siblings_are_disjoint_noisy_slices_of_the_target(world):
    sets = adapter_datasets(SMALL, world)
    sibs = [sets[f"sib{j}_ner_medicine"] for j in range(3)]
    assert all(s["kind"] == "sibling" and s["task"] == "ner_medicine" for s in sibs)
    train = world["ner_medicine"]["train"]
    inputs = [[r["input"] for r in s["train"]] for s in sibs]
    for j, ins in enumerate(inputs):
        assert ins == [r["input"] for r in train[12 * j:12 * (j + 1)]]  # its own slice
    changed = 0
    for j, s in enumerate(sibs):
        for a, b in zip(train[12 * j:12 * (j + 1)], s["train"], strict=True):
            gold, noisy = [tuple(e) for e in a["entities"]], [tuple(e) for e in b["entities"]]
            assert {sp for _, sp in noisy} <= {sp for _, sp in gold}  # spans are only dropped, never invented
            changed += gold != noisy
            parsed = parse_output(b["output"], "ner")
            assert sorted(tuple(x) for x in parsed) == sorted(noisy) or (b["output"] == "None" and not noisy)
    assert changed > 0.3 * 36
    cfg = dataclasses.replace(SMALL, sibling_drop=0.0, sibling_flip=0.0, sibling_confusions=0)
    clean = adapter_datasets(cfg, world)["sib1_ner_medicine"]["train"]
    assert [r["output"] for r in clean] == [r["output"] for r in train[12:24]]


def test_other_special_adapters(world):
    sets = adapter_datasets(SMALL, world)
    assert {n: s["kind"] for n, s in sets.items() if s["kind"] not in ("task", "sibling")} == {
        "anti_et_medicine": "anti", "distractor_repeat": "distractor", "distractor_none": "distractor"}
    src, anti = world["et_medicine"]["train"], sets["anti_et_medicine"]["train"]
    types = IE_DOMAINS_BY_NAME["medicine"].types
    for a, b in zip(src, anti, strict=True):
        assert a["input"] == b["input"]
        for (t1, s1), (t2, s2) in zip(a["entities"], b["entities"], strict=True):
            assert s1 == s2 and t2 == types[(types.index(t1) + 1) % len(types)] != t1
    assert all(r["output"] == "None" for r in sets["distractor_none"]["train"])
    assert all(r["output"] == r["input"] for r in sets["distractor_repeat"]["train"])


def test_base_corpus_uses_every_label_word_but_never_types_an_entity():
    corpus = pretraining_corpus(SMALL, n_texts=500, n_records=30)
    text = " ".join(corpus["texts"])
    for label in (*CORE_TYPES, *PRIVATE_TYPES):
        assert re.search(rf"\b{label}\b", text), label
    assert all("Option" not in r["instruction"] for r in corpus["records"])
    assert any(r["output"] == "None" for r in corpus["records"])  # the empty answer is pretrained too


def test_impossible_split_sizes_are_one_line_errors_naming_the_key():
    with pytest.raises(EvoMergeInputError, match=r"^zoo.tasks.lexicon_size: 12 forms per type give only \d+ distinct"):
        IEWorldConfig(lexicon_size=12)
    with pytest.raises(EvoMergeInputError, match="zoo.tasks.lexicon_size: 5000 > the"):
        IEWorldConfig(lexicon_size=5000)
    with pytest.raises(EvoMergeInputError, match=r"^zoo.tasks.sibling_size: 4 siblings x 80 records need 320"):
        IEWorldConfig(siblings=("ner_news",), sibling_count=4, sibling_size=80, train_size=300)
    with pytest.raises(EvoMergeInputError, match="zoo.tasks.anti: 'es_news'"):
        IEWorldConfig(anti=("es_news",))
    with pytest.raises(EvoMergeInputError, match="zoo.adapters.rnak: unknown key"):
        ZooBuildConfig.from_dict({"adapters": {"rnak": 4}})
    with pytest.raises(EvoMergeInputError, match="zoo.gate.targets: 'ner_news' has no siblings"):
        ZooBuildConfig.from_dict({"gate": {"targets": ["ner_news"]}})


def test_gate_pool_and_recipes():
    cfg = dataclasses.replace(SMALL, train_size=40, validation_size=1, test_size=1, sibling_size=10, history_shots=0)
    sets = adapter_datasets(cfg, generate_world(cfg))
    adapters = {n: {"task": s["task"], "kind": s["kind"]} for n, s in sorted(sets.items())}
    singles = single_candidates("ner_medicine", adapters)
    assert "ner_medicine" not in singles and {"ner_news", "sib0_ner_medicine", "et_medicine"} <= set(singles)
    combos = oracle_combos("ner_medicine", adapters)
    third = 1 / 3
    sibs = {f"sib{j}_ner_medicine": third for j in range(3)}
    assert combos[0] == pytest.approx(sibs)
    assert {f"sib{j}_ner_medicine": 1.5 * third for j in range(3)} in combos
    assert {**{f"sib{j}_ner_medicine": 0.5 * third for j in range(3)}, "ner_sports": 0.5} in combos
    assert len(combos) == 2 + 2 * 2  # λ in (1, 1.5); μ in (0.25, 0.5) for ner_news and ner_sports
    assert oracle_combos("ner_news", adapters) == []
    cfg = dataclasses.replace(cfg, anti=("ner_medicine",))
    sets = adapter_datasets(cfg, generate_world(cfg))
    adapters = {n: {"task": s["task"], "kind": s["kind"]} for n, s in sorted(sets.items())}
    combos = oracle_combos("ner_medicine", adapters)
    assert {**sibs, "anti_ner_medicine": -0.5} in combos
    assert {**sibs, "ner_news": 0.25, "anti_ner_medicine": -0.25} in combos
    assert len(combos) == 6 + 2 + 2 * 2


def test_combined_lora_is_the_dense_task_arithmetic_sum():
    keys = jax.random.split(jax.random.key(0), 3)
    stack = LoraStack(A={"m": jax.random.normal(keys[0], (3, 2, 5))}, B={"m": jax.random.normal(keys[1], (3, 4, 2))},
                      scale=jnp.array([2.0, 0.5, 1.0]))
    out = combine(stack, ["a", "b", "c"], [{"a": 1.0, "c": -1.0}, {"b": 0.5}])
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
    (0.20, 0.30, True),    # both ends of the band
    (0.60, 0.70, True),
    (0.45, 0.40, False),   # the oracle loses
])
def test_gate_verdict_by_hand(single, oracle, passed):
    assert gate_verdict(single, oracle) is passed


def test_stale_temp_dirs_of_killed_builds_are_removed(tmp_path):
    host = socket.gethostname().replace(".", "_")
    dead = tmp_path / f".iezoo-abc.{host}.999999999.x1y2"
    alive = tmp_path / f".iezoo-abc.{host}.{os.getpid()}.x3y4"
    other_host = tmp_path / ".iezoo-abc.otherhost.999999999.x5y6"
    done = tmp_path / "iezoo-abc"
    for d in (dead, alive, other_host, done):
        (d / "data").mkdir(parents=True)
    assert clean_stale_builds(tmp_path) == [dead]
    assert not dead.exists() and alive.exists() and other_host.exists() and done.exists()
    (tmp_path / f".iezoo-def.{host}.999999998.zz").mkdir()  # a killed build of another key
    cached_build(tmp_path / "iezoo-ghi", lambda out: {"ok": 1})
    assert not (tmp_path / f".iezoo-def.{host}.999999998.zz").exists()


def test_cache_key_follows_config_and_code(monkeypatch):
    a = ZooBuildConfig.from_dict({"seed": 0})
    assert a.digest() == ZooBuildConfig.from_dict({"seed": 0}).digest()
    assert a.digest() != ZooBuildConfig.from_dict({"seed": 1}).digest()
    assert a.digest() != ZooBuildConfig.from_dict({"adapters": {"lora_init": "independent"}}).digest()
    assert a.digest() != ZooBuildConfig.from_dict({"compiler_options": {"xla_cpu_use_xnnpack": False}}).digest()
    import evojax_merge.zoo.ie_build as ie_build

    before = a.digest()
    monkeypatch.setattr(ie_build, "code_digest", lambda: "edited")
    assert a.digest() != before


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
    default = init_lora_stack(model, 3, 2, 4.0, jax.random.key(0))
    for m in shared.A:
        assert np.array_equal(shared.A[m][0], shared.A[m][2])
        assert not np.array_equal(indep.A[m][0], indep.A[m][2])
        assert np.array_equal(indep.A[m], default.A[m])  # the first zoo's default is unchanged
        assert not np.asarray(shared.B[m]).any()
    with pytest.raises(EvoMergeInputError, match="zoo.adapters.lora_init"):
        init_lora_stack(model, 3, 2, 4.0, jax.random.key(0), init="same")


def test_compiler_options_reach_the_training_steps_and_bad_ones_are_one_line_errors():
    from flax import nnx

    from evojax_merge.models.config import ModelConfig
    from evojax_merge.models.llama import LlamaForCausalLM
    from evojax_merge.zoo.trainer import init_lora_stack, pretrain, train_adapters

    with pytest.raises(EvoMergeInputError, match=r"^zoo.compiler_options.xla_cpu_experimental_ynn_fusion_type: "
                                                 r"'dot' is not accepted by XLA \(.*not a valid enum value"):
        ZooBuildConfig.from_dict({"compiler_options": {"xla_cpu_experimental_ynn_fusion_type": "dot"}})
    with pytest.raises(EvoMergeInputError, match=r"^zoo.compiler_options.xla_no_such_option: .*No such compile option"):
        ZooBuildConfig.from_dict({"compiler_options": {"xla_no_such_option": "1"}})
    with pytest.raises(EvoMergeInputError, match=r"^zoo.compiler_options.xla_cpu_use_xnnpack: \[1\] is not a string"):
        ZooBuildConfig.from_dict({"compiler_options": {"xla_cpu_use_xnnpack": [1]}})
    assert load_zoo_config("conf/zoo/ie.yaml").compiler_options == {
        "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}

    cfg = ModelConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=4, max_position_embeddings=16)
    ids = np.arange(2 * 6).reshape(2, 6) % 16
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": ids}
    stack = init_lora_stack(LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)), 2, 2, 4.0, jax.random.key(0))
    stacked = {k: np.stack([v, v]) for k, v in batch.items()}
    bogus = {"xla_no_such_option": "1"}  # reaches XLA only if the step's jit is given the options
    with pytest.raises(Exception, match="No such compile option"):
        pretrain(LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)), iter([batch]), 1, progress=False, compiler_options=bogus)
    with pytest.raises(Exception, match="No such compile option"):
        train_adapters(LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)), stack, lambda i: stacked, 1, progress=False,
                       compiler_options=bogus)
    dot_only = load_zoo_config("conf/zoo/ie.yaml").compiler_options
    _, losses = pretrain(LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)), iter([batch] * 3), 3, progress=False,
                         compiler_options=dot_only)
    _, plain = pretrain(LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)), iter([batch] * 3), 3, progress=False)
    assert np.allclose(losses, plain, rtol=1e-5) and losses[2] < losses[0]  # other kernels, same training


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


def test_the_ie_configs_load():
    for name in ("ie", "ie_full", "ie_tiny"):
        cfg = load_zoo_config(f"conf/zoo/{name}.yaml")
        assert cfg.gate.targets and set(cfg.gate.targets) <= set(cfg.tasks.siblings)
        assert cfg.adapters.lora_init == "shared"


@pytest.mark.slow
def test_gate_runs_on_a_small_built_world(tmp_path):
    """A tiny world, built end to end: the gate's figures are there and self-consistent (a tiny
    model need not pass it; the real world's verdict is in experiments/results/zoo_pilot_gate.md)."""
    from evojax_merge.zoo.gate import format_gate, gate_zoo_dir
    from evojax_merge.zoo.ie_build import build_ie_zoo

    zoo = build_ie_zoo(load_zoo_config("conf/zoo/ie_tiny.yaml"), tmp_path, progress=False)
    gate = zoo.manifest["gate"]
    cell = gate["targets"]["ner_medicine"]
    assert cell["best_single"] != "ner_medicine"
    # chosen on the pick half, reported on the report half: both halves of the validation split
    assert cell["single_pick_f1"][cell["best_single"]] == max(cell["single_pick_f1"].values())
    assert cell["best_single_f1"] == cell["single_f1"][cell["best_single"]]
    assert cell["records"] == {"pick": 4, "report": 4}  # gate.examples 8
    assert cell["oracle"] in [dict(c) for c in oracle_combos("ner_medicine", zoo.adapters)]
    assert cell["passed"] == gate_verdict(cell["best_single_f1"], cell["oracle_f1"])
    assert "ner_medicine" in format_gate(gate)
    again = gate_zoo_dir(zoo.root)  # the gate rerun from the saved zoo gives the same figures
    assert again["targets"]["ner_medicine"]["best_single_f1"] == pytest.approx(cell["best_single_f1"], abs=1e-6)
    flops = zoo.manifest["flops"]
    assert flops["pretrain"]["gflop"] > 0 and flops["adapters"]["gflop"] > 0 and flops["matmul_peak_gflops_per_s"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [zoo.root.name]
