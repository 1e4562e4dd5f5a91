"""EE answers whose argument spans hold commas ("300,000", "Nov. 21 , 2016"), as in CASIE.

Format (docs/ie-formats.md): ``event type: trigger,  span: role, span: role`` with events
separated by ``;``. The trigger ends at the first comma; an argument ends at the comma after its
``: role``. Every expected P/R/F1 below is worked out by hand from item counts: one trigger tuple
per event and one argument tuple per argument.
"""

from __future__ import annotations

from fractions import Fraction as F

import pytest

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.eval.metrics import check_gold, ie_counts, ie_scores, parse_gold, parse_output

# Written like the real data: a leading space, two spaces after the trigger's comma.
GOLD = [
    " data breach: the breach,  Nov. 21 , 2016: time, 300,000: number of victim",  # 1 trigger + 2 arguments
    " ransom: demanded,  $ 75,000: price, Bitcoin: payment method",  # 1 trigger + 2 arguments
]  # 6 gold items


def _prf(p: F, r: F) -> dict[str, float]:
    f1 = 2 * p * r / (p + r) if p + r else F(0)
    return {"precision": float(p), "recall": float(r), "f1": float(f1)}


def test_spans_with_commas_are_one_argument():
    assert parse_gold(GOLD[0], "ee") == {
        ("trigger", "data breach", "the breach"),
        ("argument", "data breach", "nov . 21 , 2016", "time"),
        ("argument", "data breach", "300 , 000", "number of victim"),
    }
    assert parse_gold(GOLD[1], "ee") == {
        ("trigger", "ransom", "demanded"),
        ("argument", "ransom", "$ 75 , 000", "price"),
        ("argument", "ransom", "bitcoin", "payment method"),
    }
    check_gold(GOLD, "ee", "casie.json")  # no error


# (case, predictions, (TP, predicted, gold), P, R)
CASES = [
    # every item right: 6 / 6 / 6
    ("gold vs gold", GOLD, (6, 6, 6), F(1), F(1)),
    # the same spans written with other spacing around the commas: still 6 / 6 / 6
    ("spacing of the commas",
     ["data breach: the breach, Nov. 21, 2016: time, 300 , 000: number of victim",
      "ransom: demanded, $75,000: price, Bitcoin: payment method"], (6, 6, 6), F(1), F(1)),
    # a span cut at its comma ("21 , 2016" for "Nov. 21 , 2016") is one wrong argument: 5 / 6 / 6
    ("span cut at its comma",
     ["data breach: the breach, 21 , 2016: time, 300,000: number of victim", GOLD[1]], (5, 6, 6), F(5, 6), F(5, 6)),
    # nothing predicted: 0 / 0 / 6 -> P 0 (zero denominator), R 0, F1 0
    ("empty answers", ["", " "], (0, 0, 6), F(0), F(0)),
    # "None" is dropped under ee: the same as empty
    ("None predicted", ["None", "None"], (0, 0, 6), F(0), F(0)),
    # wrong event type in record 0: its 2 items all miss; record 1 right: 3 / 5 / 6
    ("wrong answer",
     ["ransom: the breach, Nov. 21 , 2016: time", GOLD[1]], (3, 5, 6), F(3, 5), F(1, 2)),
    # unparseable record 0 (no "type: trigger" head) gives no item; record 1 right: 3 / 3 / 6
    ("unparseable text",
     ["the breach happened on Nov. 21, 2016", GOLD[1]], (3, 3, 6), F(1), F(1, 2)),
    # text after the last role ("300,000" with no role) makes that event malformed: dropped whole
    ("dangling span",
     ["data breach: the breach, Nov. 21 , 2016: time, 300,000", GOLD[1]], (3, 3, 6), F(1), F(1, 2)),
]


@pytest.mark.parametrize(("case", "preds", "counts", "p", "r"), CASES, ids=[c[0] for c in CASES])
def test_hand_worked_scores(case, preds, counts, p, r):
    assert ie_counts(preds, GOLD, "ee") == counts
    assert ie_scores(preds, GOLD, "ee") == pytest.approx(_prf(p, r), abs=1e-12)


def test_empty_gold_scores_zero_not_one():
    # gold "None" has no item under ee; a prediction of 2 items: 0 / 2 / 0 -> all 0
    preds = ["data breach: hit, 300,000: number of victim"]
    assert ie_counts(preds, [" None"], "ee") == (0, 2, 0)
    assert ie_scores(preds, [" None"], "ee") == _prf(F(0), F(0))
    assert ie_counts(["None"], [" None"], "ee") == (0, 0, 0)


def test_empty_pieces_and_colons_inside_spans():
    assert parse_output("attack: hit, , people: victim,", "ee") == {
        ("trigger", "attack", "hit"), ("argument", "attack", "people", "victim")}
    # a span with a colon: the role is after the last colon
    assert parse_output("attack: hit, 10:30 pm: time", "ee") == {
        ("trigger", "attack", "hit"), ("argument", "attack", "10 : 30 pm", "time")}
    # two events, each with a comma span
    assert parse_output("attack: hit, 1,200: number; ransom: paid, $ 13,000: price", "ee") == {
        ("trigger", "attack", "hit"), ("argument", "attack", "1 , 200", "number"),
        ("trigger", "ransom", "paid"), ("argument", "ransom", "$ 13 , 000", "price")}
    # a trigger with no argument, as in " ransom: the attack, "
    assert parse_gold(" ransom: the attack, ", "ee") == {("trigger", "ransom", "the attack")}


@pytest.mark.parametrize("gold", ["data breach: the breach, 300,000",  # a span with no role
                                  "the breach, 300,000: number of victim",  # no event type
                                  "data breach: the breach, : time"])  # an empty span
def test_malformed_gold_is_still_an_error(gold):
    with pytest.raises(EvoMergeInputError) as err:
        check_gold([GOLD[0], gold], "ee", "casie.json")
    msg = str(err.value)
    assert msg.startswith("casie.json: record 1: field 'output'") and "\n" not in msg
