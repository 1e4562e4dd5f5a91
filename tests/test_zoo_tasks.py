"""The zoo task generator: size of the family, determinism, splits, and answer invariants."""

import re

import pytest

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.eval.metrics import parse_output
from evojax_merge.zoo.domains import DOMAINS, check_domain, get_domain
from evojax_merge.zoo.tasks import (
    MAX_WORDS,
    TASK_TYPES,
    ZooConfig,
    generate_task,
    generate_zoo,
    instruction,
    parse_task_name,
    pretraining_corpus,
    task_names,
)

SMALL = (6, 3, 3)


def _options(instr: str) -> str:
    return re.search(r"Options: (.*?)\. Answer", instr).group(1)


def _in_text(phrase: str, text: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


def test_family_has_over_100_tasks_15_domains_7_types():
    names = task_names(ZooConfig())
    assert len(DOMAINS) >= 15 and len(TASK_TYPES) >= 7
    assert len(names) == len(DOMAINS) * len(TASK_TYPES) > 100
    assert len(set(names)) == len(names)
    assert {parse_task_name(n) for n in names} == {(t, d.name) for t in TASK_TYPES for d in DOMAINS}
    assert parse_task_name("re_real_estate") == ("re", "real_estate")


@pytest.mark.parametrize("domain", DOMAINS, ids=lambda d: d.name)
def test_domain_data_is_consistent(domain):
    assert check_domain(domain) == []
    assert 3 <= len(domain.entity_types) <= 5
    assert all(len(forms) >= 15 for forms in domain.lexicon.values())


def test_same_seed_same_records_other_seed_other_records():
    a = generate_task("re_movie", seed=3, sizes=(20, 5, 5))
    assert a == generate_task("re_movie", seed=3, sizes=(20, 5, 5))
    b = generate_task("re_movie", seed=4, sizes=(20, 5, 5))
    assert a["train"] != b["train"] and a["test"] != b["test"]


def test_splits_have_requested_sizes_and_no_shared_inputs():
    splits = generate_task("ner_medicine", seed=0, sizes={"train": 40, "validation": 15, "test": 10})
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [40, 15, 10]
    inputs = [{r["input"] for r in splits[s]} for s in ("train", "validation", "test")]
    assert sum(map(len, inputs)) == 65  # distinct within and across splits


def test_held_out_splits_do_not_depend_on_train_size():
    small = generate_task("ee_sports", seed=1, sizes=(5, 8, 8))
    big = generate_task("ee_sports", seed=1, sizes=(50, 8, 8))
    assert small["test"] == big["test"] and small["validation"] == big["validation"]


def test_every_task_answer_copies_from_input_and_options():
    for name in task_names(ZooConfig()):
        task_type, domain = parse_task_name(name)
        for rec in generate_task(name, seed=0, sizes=SMALL)["train"]:
            assert set(rec) == {"instruction", "input", "output"}
            assert rec["instruction"] == instruction(task_type, domain)
            sentence = rec["input"].split("\n")[0]
            assert len(sentence.split()) <= MAX_WORDS
            opts = _options(rec["instruction"])
            tuples = parse_output(rec["output"], task_type) - {("none",)}  # NER-family "none" is an item
            assert bool(tuples) == (rec["output"] != "none"), (name, rec)
            for tup in tuples:
                if task_type in ("ner", "et"):
                    assert _in_text(tup[0], opts) and _in_text(tup[1], sentence), (name, rec)
                elif task_type in ("es",):
                    assert _in_text(tup[0], sentence)
                elif task_type in ("re",):  # (relation, "head , tail")
                    head, tail = tup[1].split(" , ")
                    assert _in_text(head, sentence) and _in_text(tail, sentence)
                    assert _in_text(tup[0], opts), (name, rec)
                elif task_type == "ep":  # ("head , tail",)
                    head, tail = tup[0].split(" , ")
                    assert _in_text(head, sentence) and _in_text(tail, sentence)
                elif task_type == "epr":
                    assert _in_text(tup[0], opts)
                elif tup[0] == "trigger":  # ee
                    assert _in_text(tup[1], opts) and _in_text(tup[2], sentence)
                else:
                    assert _in_text(tup[2], opts) and _in_text(tup[3], sentence)


def test_instructions_are_one_skill_per_type_across_domains():
    for t in TASK_TYPES:
        stripped = {re.sub(r"Options: .*?\. Answer", "", instruction(t, d)) for d in DOMAINS}
        assert len(stripped) == 1, t
    assert _options(instruction("ner", "movie")) == "director, actor, film, studio"


def test_answers_are_mostly_non_empty():
    for t in TASK_TYPES:
        outs = [
            r["output"]
            for d in ("movie", "law", "finance")
            for r in generate_task(f"{t}_{d}", 0, (60, 0, 0))["train"]
        ]
        assert sum(o == "none" for o in outs) / len(outs) < 0.3, t


def test_ep_and_epr_agree_with_re_on_the_same_relation_inventory():
    rels = {r.name for r in get_domain("music").relations}
    epr = generate_task("epr_music", 0, (40, 0, 0))["train"]
    assert {r["output"] for r in epr} <= rels | {"none"}
    assert "none" in {r["output"] for r in epr} and len({r["output"] for r in epr}) > 2
    assert all("\nHead: " in r["input"] and "\nTail: " in r["input"] for r in epr)


def test_smoke_config_is_a_small_single_clause_zoo():
    cfg = ZooConfig.smoke()
    zoo = generate_zoo(cfg)
    assert list(zoo) == task_names(cfg) and len(zoo) == 9
    for name, splits in zoo.items():
        assert [len(splits[s]) for s in ("train", "validation", "test")] == [64, 32, 32]
        if name.startswith("re_"):
            assert all(r["output"].count("(") <= 1 for r in splits["train"])


def test_config_and_names_reject_unknowns_in_one_line():
    with pytest.raises(EvoMergeInputError, match="unknown domain 'atlantis'"):
        ZooConfig(domains=("atlantis",))
    with pytest.raises(EvoMergeInputError, match="unknown task type 'pos'"):
        ZooConfig(task_types=["pos"])
    with pytest.raises(EvoMergeInputError, match="unknown zoo task 'xx_movie'"):
        generate_task("xx_movie")
    cfg = ZooConfig(num_domains=2, task_types=["NER", "re"])  # lists and upper case accepted
    assert task_names(cfg) == ["ner_movie", "re_movie", "ner_restaurant", "re_restaurant"]


def test_pretraining_corpus_teaches_format_not_ie_skills():
    cfg = ZooConfig.smoke()
    corpus = pretraining_corpus(cfg, n_texts=60, n_records=80, seed=5)
    assert corpus == pretraining_corpus(cfg, n_texts=60, n_records=80, seed=5)
    assert len(corpus["texts"]) == 60 and len(corpus["records"]) == 80
    ie_instructions = {instruction(t, d) for t in TASK_TYPES for d in cfg.domain_names()}
    for rec in corpus["records"]:
        assert rec["instruction"] not in ie_instructions and "Options:" not in rec["instruction"]
    assert any("history" in r for r in corpus["records"])
    outputs = " ".join(r["output"] for r in corpus["records"])
    for marker in ("; ", ": ", "(", ", ", "none"):  # the answer grammar appears
        assert marker in outputs
    for name in cfg.domain_names():  # every domain's language appears
        forms = [f for fs in get_domain(name).lexicon.values() for f in fs]
        assert any(_in_text(f, t) for t in corpus["texts"] for f in forms)
