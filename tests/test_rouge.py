"""ROUGE-L F of generated answers (evojax_merge/eval/rouge.py), with hand-worked values."""

from __future__ import annotations

import pytest

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.eval.rouge import lcs_length, rouge_l, rouge_l_scores


def test_lcs_hand_worked():
    assert lcs_length("a b c d".split(), "a c d".split()) == 3
    assert lcs_length("a b".split(), "b a".split()) == 1
    assert lcs_length([], "a".split()) == 0


def test_rouge_l_one_answer():
    assert rouge_l("top left", "top left") == (1.0, 1.0, 1.0)
    # pred "top right" vs gold "top left": LCS 1, P = 1/2, R = 1/2, F = 1/2
    assert rouge_l("top right", "top left") == pytest.approx((0.5, 0.5, 0.5))
    # pred "top" vs gold "top left": LCS 1, P = 1, R = 1/2, F = 2 * 1 * 0.5 / 1.5 = 2/3
    assert rouge_l("top", "top left") == pytest.approx((1.0, 0.5, 2 / 3))
    # pred "the red one" vs gold "red": LCS 1, P = 1/3, R = 1, F = 2 * (1/3) / (4/3) = 1/2
    assert rouge_l("the red one", "red") == pytest.approx((1 / 3, 1.0, 0.5))
    # canonical form: case and punctuation spacing do not matter
    assert rouge_l("Top Left.", "top left .") == (1.0, 1.0, 1.0)


def test_rouge_l_wrong_and_empty():
    assert rouge_l("blue", "red") == (0.0, 0.0, 0.0)
    assert rouge_l("", "red") == (0.0, 0.0, 0.0)
    assert rouge_l("red", "") == (0.0, 0.0, 0.0)
    assert rouge_l("", "") == (0.0, 0.0, 0.0)  # as the rouge_score package: either side empty -> 0


def test_corpus_means_and_errors():
    s = rouge_l_scores(["top", "red", ""], ["top left", "red", "blue"])
    # per answer F: 2/3, 1, 0 -> mean 5/9; P: 1, 1, 0 -> 2/3; R: 1/2, 1, 0 -> 1/2
    assert s == pytest.approx({"p": 2 / 3, "r": 0.5, "f": 5 / 9})
    assert rouge_l_scores([], []) == {"p": 0.0, "r": 0.0, "f": 0.0}
    with pytest.raises(EvoMergeInputError, match="rouge_l: 1 predictions for 2"):
        rouge_l_scores(["a"], ["a", "b"])
