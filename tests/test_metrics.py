"""The IE metric on hand-written gold/prediction pairs in every declared format.

Each case lists the F1 worked out by hand from the convention of ``evojax_merge.eval.metrics``
(``ours``) and from InstructUIE's (``iuie``, restated in ``tests/instructuie_convention.py``).
Where they differ the comment says why.
"""

from __future__ import annotations

import random
from fractions import Fraction as F

import instructuie_convention as iuie
import pytest

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.eval.metrics import (
    IE_TYPES,
    canonical,
    check_gold,
    exact_match,
    ie_counts,
    ie_scores,
    parse_gold,
    parse_output,
    task_scores,
)
from evojax_merge.zoo.ie_world import IE_TASK_TYPES, IEWorldConfig, generate_world

NER = ["person: Lena Park; organization: Orbit Labs; location: Oslo",
       "person: Ann Lee; location: Burlington, Vt.",
       "None"]  # 3 + 2 + 1 items ("none" is an item)
ES = ["Lena Park; Orbit Labs; Oslo", "Ann Lee; Burlington, Vt.", "None"]  # 3 + 2 + 1
RE = ["Work for: Igor Khmelnov, Pacific Fleet; Located in: Pacific Fleet, Vladivostok",
      "Live in: Ann Lee, Burlington, Vt.",
      "None"]  # 2 + 1 items ("none" is dropped)
EPR = ["Work for: Igor Khmelnov, Pacific Fleet", "Live in: Ann Lee, Burlington, Vt.", "None"]  # 1 + 1
EP = ["Igor Khmelnov, Pacific Fleet; Pacific Fleet, Vladivostok", "Ann Lee, Burlington, Vt.", "None"]  # 2+1+1
EET = ["start position: joined; attack: fired", "None", "transport: flew"]  # 2 + 1 + 1
EEA = ["Lena Park: person; Orbit Labs: entity", "None", "Ann Lee: artifact"]  # 2 + 0 + 1
EE = ["start position: joined, Lena Park: person, Orbit Labs: entity; attack: fired, Igor Khmelnov: attacker",
      "None"]  # 2 triggers + 3 arguments, then nothing


def _with(golds, i, text):
    out = list(golds)
    out[i] = text
    return out


INNER_NER = (["location: St. Albans, Vt.; organization: Dr. Pepper Co."],
             ["organization: Dr. Pepper Co; location: St.Albans, Vt."])
INNER_RE = (["Live in: Ann Lee, St. Albans, Vt.; Work for: Ann Lee, Dr. Pepper Co."],
            ["Work for: Ann Lee, Dr. Pepper Co; Live in: Ann Lee, St.Albans, Vt."])

# (type, case, golds, preds, ours F1, InstructUIE's score)
CASES = [
    # NER: 6 gold items. drop one: P 1, R 5/6 -> 10/11. change one: 5/6 each.
    # None predicted everywhere: TP 1 (the none/none record) of 3 predicted, 6 gold -> 2/9.
    ("ner", "gold vs gold", NER, NER, F(1), F(1)),
    ("ner", "gold vs empty", NER, ["", "", ""], F(0), F(0)),
    ("ner", "drop one", NER, _with(NER, 0, "person: Lena Park; organization: Orbit Labs"), F(10, 11), F(10, 11)),
    ("ner", "change one", NER, _with(NER, 0, NER[0].replace("Oslo", "Bergen")), F(5, 6), F(5, 6)),
    ("ner", "reorder", NER, _with(NER, 1, "location: Burlington, Vt.; person: Ann Lee"), F(1), F(1)),
    ("ner", "None everywhere", ["None"] * 3, ["None"] * 3, F(1), F(1)),
    ("ner", "None predicted", NER, ["None"] * 3, F(2, 9), F(2, 9)),
    # InstructUIE keeps the trailing full stop: "dr.pepper co." != "dr.pepper co" -> P = R = 1/2
    ("ner", "inner full stops", *INNER_NER, F(1), F(1, 2)),
    ("et", "gold vs gold", NER, NER, F(1), F(1)),
    ("et", "drop one", NER, _with(NER, 0, "person: Lena Park; organization: Orbit Labs"), F(10, 11), F(10, 11)),
    ("et", "change one", NER, _with(NER, 0, NER[0].replace("Oslo", "Bergen")), F(5, 6), F(5, 6)),
    ("et", "None predicted", NER, ["None"] * 3, F(2, 9), F(2, 9)),
    # ES: 6 gold items, the same arithmetic as NER
    ("es", "gold vs gold", ES, ES, F(1), F(1)),
    ("es", "gold vs empty", ES, ["", "", ""], F(0), F(0)),
    ("es", "drop one", ES, _with(ES, 0, "Lena Park; Orbit Labs"), F(10, 11), F(10, 11)),
    ("es", "change one", ES, _with(ES, 0, "Lena Park; Orbit Labs; Bergen"), F(5, 6), F(5, 6)),
    ("es", "reorder", ES, _with(ES, 1, "Burlington, Vt.; Ann Lee"), F(1), F(1)),
    ("es", "None everywhere", ["None"] * 3, ["None"] * 3, F(1), F(1)),
    # comma-separated spans: ours reads 3 spans (1.0); InstructUIE one item -> TP 3, FP 1, FN 3 -> 0.6
    ("es", "comma-separated", ES, _with(ES, 0, "Lena Park, Orbit Labs, Oslo"), F(1), F(3, 5)),
    # RE: 3 gold items ("none" dropped). drop one: P 1, R 2/3 -> 4/5. change one: 2/3 each.
    ("re", "gold vs gold", RE, RE, F(1), F(1)),
    ("re", "gold vs empty", RE, ["", "", ""], F(0), F(0)),
    ("re", "drop one", RE, _with(RE, 0, "Work for: Igor Khmelnov, Pacific Fleet"), F(4, 5), F(4, 5)),
    ("re", "change one", RE, _with(RE, 0, RE[0].replace("Work for", "Kill")), F(2, 3), F(2, 3)),
    ("re", "reorder", RE, _with(RE, 0, "Located in: Pacific Fleet, Vladivostok; Work for: Igor Khmelnov, "
                                       "Pacific Fleet"), F(1), F(1)),
    ("re", "None everywhere", ["None"] * 3, ["None"] * 3, F(0), F(0)),  # nothing anywhere: 0/0 -> 0
    ("re", "None predicted", RE, ["None"] * 3, F(0), F(0)),
    ("re", "inner full stops", *INNER_RE, F(1), F(1, 2)),
    # EPR: 2 gold items. drop one: P 1, R 1/2 -> 2/3. change one: 1/2.
    ("epr", "gold vs gold", EPR, EPR, F(1), F(1)),
    ("epr", "gold vs empty", EPR, ["", "", ""], F(0), F(0)),
    ("epr", "drop one", EPR, _with(EPR, 1, "None"), F(2, 3), F(2, 3)),
    ("epr", "change one", EPR, _with(EPR, 0, EPR[0].replace("Work for", "Live in")), F(1, 2), F(1, 2)),
    ("epr", "None everywhere", ["None"] * 3, ["None"] * 3, F(0), F(0)),
    ("epr", "None predicted", EPR, ["None"] * 3, F(0), F(0)),
    # EP: 4 gold items ("none" is an item). drop one: P 1, R 3/4 -> 6/7. change one: 3/4.
    # None predicted: TP 1 of 3 predicted, 4 gold -> P 1/3, R 1/4 -> 2/7.
    ("ep", "gold vs gold", EP, EP, F(1), F(1)),
    ("ep", "gold vs empty", EP, ["", "", ""], F(0), F(0)),
    ("ep", "drop one", EP, _with(EP, 0, "Igor Khmelnov, Pacific Fleet"), F(6, 7), F(6, 7)),
    ("ep", "change one", EP, _with(EP, 0, EP[0].replace("Vladivostok", "Moscow")), F(3, 4), F(3, 4)),
    ("ep", "reorder", EP, _with(EP, 0, "Pacific Fleet, Vladivostok; Igor Khmelnov, Pacific Fleet"), F(1), F(1)),
    ("ep", "None everywhere", ["None"] * 3, ["None"] * 3, F(1), F(1)),
    ("ep", "None predicted", EP, ["None"] * 3, F(2, 7), F(2, 7)),
    # EET: 4 gold items; InstructUIE scores EET by accuracy of the whole string (3 records)
    ("eet", "gold vs gold", EET, EET, F(1), F(1)),
    ("eet", "gold vs empty", EET, ["", "", ""], F(0), F(0)),
    ("eet", "drop one", EET, _with(EET, 0, "start position: joined"), F(6, 7), F(2, 3)),
    ("eet", "change one", EET, _with(EET, 2, "transport: drove"), F(3, 4), F(2, 3)),
    ("eet", "reorder", EET, _with(EET, 0, "attack: fired; start position: joined"), F(1), F(2, 3)),
    ("eet", "None everywhere", ["None"] * 3, ["None"] * 3, F(1), F(1)),
    ("eet", "None predicted", EET, ["None"] * 3, F(2, 7), F(1, 3)),
    # EEA: 3 gold items ("none" dropped). drop one: 4/5. change one: 2/3.
    ("eea", "gold vs gold", EEA, EEA, F(1), F(1)),
    ("eea", "gold vs empty", EEA, ["", "", ""], F(0), F(0)),
    ("eea", "drop one", EEA, _with(EEA, 0, "Lena Park: person"), F(4, 5), F(4, 5)),
    ("eea", "change one", EEA, _with(EEA, 2, "Ann Lee: person"), F(2, 3), F(2, 3)),
    ("eea", "reorder", EEA, _with(EEA, 0, "Orbit Labs: entity; Lena Park: person"), F(1), F(1)),
    ("eea", "None everywhere", ["None"] * 3, ["None"] * 3, F(0), F(0)),
    ("eea", "None predicted", EEA, ["None"] * 3, F(0), F(0)),
    # EE: 5 gold items (2 triggers, 3 arguments). drop one argument: P 1, R 4/5 -> 8/9.
    # InstructUIE's event evaluator reads parenthesised events only: on this shape it finds none
    # on either side and gives every prediction accuracy 1.0.
    ("ee", "gold vs gold", EE, EE, F(1), F(1)),
    ("ee", "gold vs empty", EE, ["", ""], F(0), F(1)),
    ("ee", "drop one", EE, _with(EE, 0, EE[0].replace(", Orbit Labs: entity", "")), F(8, 9), F(1)),
    ("ee", "change one", EE, _with(EE, 0, EE[0].replace("attacker", "target")), F(4, 5), F(1)),
    ("ee", "reorder", EE, _with(EE, 0, "attack: fired, Igor Khmelnov: attacker; start position: joined, "
                                       "Lena Park: person, Orbit Labs: entity"), F(1), F(1)),
    ("ee", "None everywhere", ["None"] * 2, ["None"] * 2, F(0), F(1)),
    ("ee", "None predicted", EE, ["None"] * 2, F(0), F(1)),
]


@pytest.mark.parametrize(("task_type", "case", "golds", "preds", "ours", "theirs"), CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_format_cases(task_type, case, golds, preds, ours, theirs):
    assert ie_scores(preds, golds, task_type)["f1"] == pytest.approx(float(ours), abs=1e-12)
    assert iuie.score(task_type, golds, preds) == pytest.approx(float(theirs), abs=1e-12)


def test_counts_behind_the_f1():
    drop = _with(NER, 0, "person: Lena Park; organization: Orbit Labs")
    assert ie_counts(drop, NER, "ner") == (5, 5, 6)
    assert ie_scores(drop, NER, "ner") == pytest.approx({"precision": 1.0, "recall": 5 / 6, "f1": 10 / 11})
    assert ie_counts(["None"] * 3, RE, "re") == (0, 0, 3)
    assert ie_counts(["None"] * 3, ["None"] * 3, "re") == (0, 0, 0)


def test_parsed_items():
    assert parse_gold(RE[0], "re") == {("work for", "igor khmelnov , pacific fleet"),
                                       ("located in", "pacific fleet , vladivostok")}
    # the zoo's / InstructUIE's first shape (head, relation, tail) is the same tuple
    assert parse_gold("(Igor Khmelnov, Work for, Pacific Fleet)", "re") == {
        ("work for", "igor khmelnov , pacific fleet")}
    assert parse_gold("(Igor Khmelnov, Pacific Fleet)", "ep") == parse_gold("Igor Khmelnov, Pacific Fleet", "ep")
    assert parse_gold("director of", "epr") == {("director of",)}  # the zoo's EPR: the relation alone
    assert parse_gold("Person : Lena  Park ;location:Oslo.", "ner") == {("person", "lena park"), ("location", "oslo")}
    assert parse_gold("person: Ann; person: Ann", "ner") == {("person", "ann")}  # a duplicate counts once
    assert parse_gold(EE[0], "ee") == {
        ("trigger", "start position", "joined"), ("argument", "start position", "lena park", "person"),
        ("argument", "start position", "orbit labs", "entity"), ("trigger", "attack", "fired"),
        ("argument", "attack", "igor khmelnov", "attacker")}
    assert parse_gold(" None", "ner") == {("none",)}
    assert parse_gold(" None", "re") == frozenset()
    assert parse_output("none</s><pad>", "ner") == {("none",)}


def test_malformed_predictions_are_dropped_not_fatal():
    assert parse_output("person Lena; location: Oslo; : x; film:", "ner") == {("location", "oslo")}
    assert parse_output("Work for Igor; Live in: Ann, Oslo", "re") == {("live in", "ann , oslo")}
    rng = random.Random(0)
    alphabet = "ab :;,()<>/s."
    for _ in range(300):
        junk = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        for t in IE_TYPES:
            assert isinstance(parse_output(junk, t), frozenset)


UNPARSEABLE = [("ner", "Lena Park"), ("et", "Lena Park"), ("re", "Work for Igor Khmelnov"),
               ("re", "Work for: Igor Khmelnov"), ("ep", "Igor Khmelnov"), ("epr", "Work for: Igor Khmelnov"),
               ("eet", "joined"), ("eea", "Lena Park"), ("ee", "joined, Lena Park: person")]


@pytest.mark.parametrize(("task_type", "gold"), UNPARSEABLE)
def test_unparseable_gold_is_an_error_naming_the_record(task_type, gold):
    golds = ["None", gold]
    with pytest.raises(EvoMergeInputError, match=r"^record 1: gold answer"):
        ie_scores(["None", gold], golds, task_type)
    with pytest.raises(EvoMergeInputError) as err:
        check_gold(golds, task_type, "data/val.json")
    assert str(err.value).startswith("data/val.json: record 1: field 'output'")
    assert "\n" not in str(err.value)


def test_ie_world_gold_answers_parse_and_score_one():
    world = generate_world(IEWorldConfig(domains=("news",), train_size=30, validation_size=4, test_size=4,
                                         history_shots=0))
    assert sorted(world) == sorted(f"{t}_news" for t in IE_TASK_TYPES)
    for task, splits in world.items():
        t = task.split("_", 1)[0]
        golds = [r["output"] for r in splits["train"]]
        check_gold(golds, t, task)
        assert ie_scores(golds, golds, t)["f1"] == 1.0
        assert ie_scores(golds[1:] + golds[:1], golds, t)["f1"] < 0.5


def test_exact_and_errors():
    assert canonical("( A ,b )") == canonical("(a, b)") == "( a , b )"
    assert exact_match(["Person : John", "x"], ["person: john", "y"]) == 0.5
    assert task_scores(["Person : John", "x"], ["person: john", "y"], "exact")["f1"] == 0.5
    assert exact_match([], []) == 0.0
    with pytest.raises(ValueError):
        exact_match(["a"], [])
    with pytest.raises(ValueError):
        ie_scores(["a"], ["a", "b"], "ner")
    with pytest.raises(ValueError, match="unknown IE task type"):
        parse_output("a", "pos")
