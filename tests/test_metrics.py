"""IE metrics on hand-written answers: exact, partial, empty and malformed."""

import random

import pytest

from evojax_merge.eval.metrics import canonical, exact_match, ie_counts, ie_scores, parse_output
from evojax_merge.zoo.tasks import TASK_TYPES, generate_task


def _approx(scores, p, r, f):
    assert scores == pytest.approx({"precision": p, "recall": r, "f1": f})


def test_ner_parse_is_case_and_space_tolerant():
    gold = parse_output("person: john smith; city: paris", "ner")
    assert gold == {("person", "john smith"), ("city", "paris")}
    assert parse_output("Person : John  Smith ;city:Paris.", "ner") == gold
    assert parse_output("person : john smith ; city : paris", "ner") == gold  # word-level decode


def test_malformed_pieces_are_dropped_not_fatal():
    assert parse_output("person john; city: paris; : x; film:", "ner") == {("city", "paris")}
    assert parse_output("(a, r, b); (a, b); (c, r, d", "re") == {("a", "r", "b")}
    assert parse_output("(a, r, b) (c, r, d)", "re") == {("a", "r", "b"), ("c", "r", "d")}
    assert parse_output("(a, b, c); (x, y)", "ep") == {("x", "y")}
    rng = random.Random(0)
    alphabet = "ab :;,()<>/s."
    for _ in range(300):
        junk = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        for t in TASK_TYPES:
            assert isinstance(parse_output(junk, t), frozenset)


def test_none_and_empty_parse_to_nothing():
    for t in TASK_TYPES:
        assert parse_output("none", t) == frozenset()
        assert parse_output(" None. ", t) == frozenset()
        assert parse_output("", t) == frozenset()
        assert parse_output("none</s><pad>", t) == frozenset()


def test_exact_answers_score_one():
    golds = ["person: john smith; city: paris", "film: red horizon"]
    _approx(ie_scores(golds, golds, "ner"), 1.0, 1.0, 1.0)


def test_partial_answers_are_micro_averaged():
    golds = ["person: john smith; city: paris", "film: red horizon"]
    preds = ["person: john smith; city: rome", "none"]
    assert ie_counts(preds, golds, "ner") == (1, 2, 3)
    _approx(ie_scores(preds, golds, "ner"), 1 / 2, 1 / 3, 0.4)


def test_empty_convention_both_empty_adds_nothing():
    # InstructUIE-style micro counts: a none/none instance is neither credited nor penalised
    _approx(ie_scores(["a: b", "none"], ["a: b", "none"], "ner"), 1.0, 1.0, 1.0)
    _approx(ie_scores(["a: b", "x: y"], ["a: b", "none"], "ner"), 0.5, 1.0, 2 / 3)
    _approx(ie_scores(["none"], ["none"], "ner"), 1.0, 1.0, 1.0)  # nothing to find anywhere
    _approx(ie_scores(["none"], ["a: b"], "ner"), 0.0, 0.0, 0.0)
    _approx(ie_scores(["a: b"], ["none"], "ner"), 0.0, 0.0, 0.0)


def test_relation_and_pair_tasks():
    gold = "(anna smith, director of, red horizon); (ben kim, cast member of, red horizon)"
    pred = "( Anna Smith , director of , red horizon ) ; (ben kim, producer of, red horizon)"
    _approx(ie_scores([pred], [gold], "re"), 0.5, 0.5, 0.5)
    _approx(ie_scores(["(anna smith, red horizon)"], ["(anna smith, red horizon)"], "ep"), 1, 1, 1)
    _approx(ie_scores(["director of"], ["director of"], "epr"), 1, 1, 1)
    _approx(ie_scores(["none", "producer of"], ["none", "director of"], "epr"), 0, 0, 0)


def test_event_extraction_gives_partial_credit():
    gold = "award: won, winner: ben kim, work: red horizon"
    assert parse_output(gold, "ee") == {
        ("trigger", "award", "won"),
        ("argument", "award", "winner", "ben kim"),
        ("argument", "award", "work", "red horizon"),
    }
    pred = "award: won, winner: anna smith, work: red horizon, bogus"
    _approx(ie_scores([pred], [gold], "ee"), 2 / 3, 2 / 3, 2 / 3)
    assert parse_output("won, winner: ben kim", "ee") == frozenset()  # no "type: trigger" head


def test_entity_span_and_generic():
    assert parse_output("john smith; paris", "es") == {("john smith",), ("paris",)}
    assert parse_output("(a, b); c: d", "generic") == {("a", "b"), ("c", "d")}
    _approx(ie_scores([{("a", "b")}], [[("a", "b")]]), 1, 1, 1)  # tuples pass through


def test_zoo_gold_answers_parse_and_score_one():
    for t in TASK_TYPES:
        golds = [r["output"] for r in generate_task(f"{t}_travel", 0, (30, 0, 0))["train"]]
        assert all(parse_output(g, t) or g == "none" for g in golds)
        assert ie_scores(golds, golds, t)["f1"] == 1.0
        assert ie_scores(golds[1:] + golds[:1], golds, t)["f1"] < 0.5


def test_exact_match_and_errors():
    assert canonical("( A ,b )") == canonical("(a, b)") == "( a , b )"
    assert exact_match(["Person : John", "x"], ["person: john", "y"]) == 0.5
    assert exact_match([], []) == 0.0
    with pytest.raises(ValueError):
        exact_match(["a"], [])
    with pytest.raises(ValueError):
        ie_scores(["a"], ["a", "b"], "ner")
    with pytest.raises(ValueError, match="unknown task type"):
        parse_output("a", "pos")
