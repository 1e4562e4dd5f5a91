"""The exact McNemar test (report/mcnemar.py) against p-values worked by hand."""

import pytest

from evojax_merge.report.mcnemar import discordant, holm, mcnemar_exact, pairwise


@pytest.mark.parametrize("b, c, p", [
    (0, 6, 0.03125),            # 2 * (1/2)^6
    (6, 0, 0.03125),            # symmetric in b and c
    (1, 6, 0.125),              # 2 * (C(7,0) + C(7,1)) / 2^7 = 2 * 8 / 128
    (2, 8, 0.109375),           # 2 * (1 + 10 + 45) / 2^10 = 112 / 1024
    (0, 1, 1.0),                # 2 * 1/2, capped at 1
    (5, 5, 1.0),                # b = c
    (0, 0, 1.0),                # no discordant record: no evidence
])
def test_exact_p_values_by_hand(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def test_negative_counts_are_refused():
    with pytest.raises(ValueError, match="b=-1"):
        mcnemar_exact(-1, 3)


def test_discordant_counts_and_pairwise_table():
    x = [True, True, False, False, True]
    y = [True, False, True, False, False]
    assert discordant(x, y) == (2, 1)  # records 1 and 4 only x; record 2 only y
    rows = pairwise({"x": x, "y": y, "z": x})
    assert [(r["a"], r["b_method"]) for r in rows] == [("x", "y"), ("x", "z"), ("y", "z")]
    assert rows[0]["acc_a"] == 0.6 and rows[0]["acc_b"] == 0.4 and rows[0]["n"] == 5
    assert rows[0]["p"] == pytest.approx(1.0)  # b=2, c=1: 2 * (1 + 3 + 3) / 8 > 1 -> 1
    assert rows[1]["b"] == rows[1]["c"] == 0 and rows[1]["p"] == 1.0
    with pytest.raises(ValueError, match="different length"):
        discordant(x, y[:3])


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, 2 * 0.03, max(0.06, 1 * 0.04): step-down keeps it monotone
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []
