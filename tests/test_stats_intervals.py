"""The report's statistics on tiny hand data: t-intervals over worlds or seeds, the combined interval of one
world, the paired test-record bootstrap, and the per-record counts it reads. Every expected number is worked
out in the comments (t_{0.975, 2} = 4.302652729749462, t_{0.975, 1} = 12.706204736174694)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from evojax_merge.eval.metrics import ie_counts
from evojax_merge.eval.predictions import write_predictions
from evojax_merge.report.bootstrap import BootResult, WorldBootstrap, micro_f1, paired_bootstrap
from evojax_merge.report.records import record_counts, run_counts, task_type_of
from evojax_merge.report.stats import combined_half, label_stats, paired_gap, t_half, t_quantile

T2 = 4.302652729749462


def test_t_interval_on_one_two_three():
    # d = 1 2 3: mean 2, sd 1, half = 4.302653 / sqrt 3 = 2.484138 -> [-0.484, 4.484]: includes 0, no mark
    assert t_quantile(3) == pytest.approx(T2, abs=1e-12)
    assert t_quantile(2) == pytest.approx(12.706204736174694, abs=1e-9)
    assert math.isnan(t_quantile(1)) and math.isnan(t_half(1.0, 1))
    g = paired_gap("a", {0: 1.0, 1: 2.0, 2: 3.0}, "b", {0: 0.0, 1: 0.0, 2: 0.0})
    assert (g.mean, g.sd, g.n, g.unit) == (2.0, 1.0, 3, "seed")
    assert g.half == pytest.approx(2.4841377, abs=1e-6) == pytest.approx(T2 / math.sqrt(3))
    assert (g.lo, g.hi) == pytest.approx((2 - 2.4841377, 2 + 2.4841377))
    assert not g.marked
    # shifted by 10: [9.52, 14.48] excludes 0 and varies: marked
    g = paired_gap("a", {0: 11.0, 1: 12.0, 2: 13.0}, "b", {0: 0.0, 1: 0.0, 2: 0.0})
    assert g.marked and g.lo == pytest.approx(12 - 2.4841377, abs=1e-6)


def test_the_unit_is_the_world_with_several_worlds():
    # replicates (world, seed) with a - b: world 0: 1 and 3 -> d_0 = 2; world 1: 4 and 6 -> 5; world 2: 8 -> 8.
    # K = 3 worlds: mean 5, sd 3, half = 4.302653 · 3 / sqrt 3 = 7.452413; a bootstrap does not enter it
    a = {(0, 0): 1.0, (0, 1): 3.0, (1, 0): 4.0, (1, 1): 6.0, (2, 0): 8.0}
    b = dict.fromkeys(a, 0.0)
    boot = {0: BootResult(2.0, 50.0, -90.0, 90.0, 10, 4)}
    g = paired_gap("a", a, "b", b, boot)
    assert (g.unit, g.n, g.per_unit) == ("world", 3, {0: 2.0, 1: 5.0, 2: 8.0})
    assert (g.mean, g.sd) == pytest.approx((5, 3))
    assert g.half == pytest.approx(7.452413, abs=1e-6)
    assert (g.lo, g.hi) == pytest.approx((5 - 7.452413, 5 + 7.452413), abs=1e-6) and not g.marked  # includes 0


def test_two_worlds_of_the_same_seed_do_not_collide():
    # both worlds ran search seed 0: two replicates, not one seed twice. F1 (fractions): world 0: a .5 b .2,
    # world 1: a .7 b .3 -> a: mean 60, std sqrt(200) = 14.142; d = 30, 40: mean 35, sd 7.0711,
    # half = 12.706205 · 7.0711 / sqrt 2 = 63.531 -> [-28.53, +98.53]
    by_rep = {(0, 0): {"a": _res(0.5), "best_single": _res(0.2)},
              (1, 0): {"a": _res(0.7), "best_single": _res(0.3)}}
    stats = label_stats(by_rep)
    a = stats["a"]
    assert (a.f1.n, a.unit, a.per_unit) == (2, "world", pytest.approx({0: 50.0, 1: 70.0}))
    assert (a.f1.mean, a.f1.std) == pytest.approx((60, math.sqrt(200)))
    g = a.vs_best_single
    assert (g.n, g.mean, g.sd) == pytest.approx((2, 35, math.sqrt(50)))
    assert g.half == pytest.approx(12.706204736174694 * math.sqrt(50) / math.sqrt(2))
    assert g.replicates == ((0, 0), (1, 0))


def _res(f1: float) -> dict:
    return {"f1": f1, "precision": f1, "recall": f1, "per_task": {"ner_x": {"f1": f1}}}


def test_one_world_combines_the_seeds_t_term_and_the_bootstrap():
    # one world, seeds 0 1 2, d = 1 2 3: t term 2.484138; bootstrap SE 1 ->
    # half = sqrt(2.484138² + (1.959964 · 1)²) = sqrt(6.170940 + 3.841459) = sqrt(10.012399) = 3.164238
    boot = {7: BootResult(2.0, 1.0, 0.0, 4.0, 1000, 10)}
    g = paired_gap("a", {(7, 0): 1.0, (7, 1): 2.0, (7, 2): 3.0}, "b", {(7, s): 0.0 for s in range(3)}, boot)
    assert g.unit == "seed" and g.t_part == pytest.approx(2.484138, abs=1e-6)
    assert g.half == pytest.approx(3.164238, abs=1e-6)
    assert combined_half(T2 / math.sqrt(3), 1.0) == pytest.approx(3.164238, abs=1e-6)
    assert g.boot_se == 1.0 and not g.marked  # [-1.16, 5.16]
    # with no bootstrap the t term stands alone
    assert paired_gap("a", {(7, 0): 1.0, (7, 1): 2.0, (7, 2): 3.0}, "b", {(7, s): 0.0 for s in range(3)}
                      ).half == pytest.approx(2.484138, abs=1e-6)


def test_micro_f1_by_hand():
    # tp 2, pred 3, gold 5: P = 2/3, R = 2/5, F1 = 2 (4/15) / (16/15) = 0.5 = 2 · 2 / (3 + 5)
    assert micro_f1(np.array([2, 3, 5])) == pytest.approx(0.5)
    assert micro_f1(np.array([0, 0, 0])) == 0.0  # nothing predicted, nothing gold: 0 (InstructUIE's MetricF1)
    assert micro_f1(np.array([0, 4, 0])) == 0.0


def _right(n: int) -> np.ndarray:
    return np.tile([1.0, 1.0, 1.0], (n, 1))  # one gold item per record, predicted right


def _wrong(n: int) -> np.ndarray:
    return np.tile([0.0, 1.0, 1.0], (n, 1))  # one gold item, one wrong prediction


def test_bootstrap_of_identical_methods_has_no_spread():
    counts = {"ner_a": np.array([[1, 1, 1], [0, 1, 1], [1, 2, 1], [0, 0, 1]], float)}
    r = paired_bootstrap(counts, counts, n_boot=200, seed=3)
    assert (r.diff, r.se, r.lo, r.hi, r.records) == (0.0, 0.0, 0.0, 0.0, 4)
    # over three seeds the gap is 0 on every seed and every resample: no spread, no mark
    g = paired_gap("a", {(0, s): 40.0 for s in range(3)}, "b", {(0, s): 40.0 for s in range(3)}, {0: r})
    assert g.half == 0.0 and not g.varies and not g.marked


def test_bootstrap_right_against_wrong_is_100_with_no_spread():
    r = paired_bootstrap({"ner_a": _right(5), "es_b": _right(3)}, {"ner_a": _wrong(5), "es_b": _wrong(3)}, 300, 0)
    assert (r.diff, r.se, r.lo, r.hi) == (100.0, 0.0, 100.0, 100.0)
    g = paired_gap("a", {(0, s): 100.0 for s in range(3)}, "b", {(0, s): 0.0 for s in range(3)}, {0: r})
    assert g.mean == 100 and g.half == 0.0 and not g.marked  # the same on every seed and resample: no mark


def test_bootstrap_percentiles_match_a_direct_recomputation():
    # two tasks, two seeds of one world; the draws: per task in sorted order ("es_b" before "ner_a"),
    # rng.integers(0, R, (B, R)) from default_rng(seed), the same indices for both methods and both seeds
    a = {"ner_a": np.array([[[1, 1, 1], [1, 2, 2], [0, 1, 1], [2, 2, 3]], [[1, 1, 1], [0, 1, 2], [1, 1, 1], [2, 3, 3]]],
                           float),
         "es_b": np.array([[[1, 1, 1], [0, 0, 1], [1, 1, 2]], [[0, 1, 1], [1, 1, 1], [1, 1, 2]]], float)}
    b = {"ner_a": np.array([[[0, 1, 1], [1, 1, 2], [0, 0, 1], [1, 1, 3]], [[1, 1, 1], [0, 2, 2], [0, 1, 1], [1, 1, 3]]],
                           float),
         "es_b": np.array([[[1, 1, 1], [0, 1, 1], [0, 0, 2]], [[0, 0, 1], [1, 1, 1], [0, 1, 2]]], float)}
    B, seed = 64, 11
    got = paired_bootstrap(a, b, B, seed)

    def f1(tp, pred, gold):
        return 2 * tp / (pred + gold) if pred + gold else 0.0

    rng = np.random.default_rng(seed)
    draws = {t: rng.integers(0, a[t].shape[1], size=(B, a[t].shape[1])) for t in ("es_b", "ner_a")}
    diffs = []
    for k in range(B):
        per_task = []
        for t in ("es_b", "ner_a"):
            fa = np.mean([f1(*a[t][s][draws[t][k]].sum(0)) for s in range(2)])
            fb = np.mean([f1(*b[t][s][draws[t][k]].sum(0)) for s in range(2)])
            per_task.append(fa - fb)
        diffs.append(100 * np.mean(per_task))
    assert got.se == pytest.approx(np.std(diffs, ddof=1), abs=1e-9)
    assert (got.lo, got.hi) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])), abs=1e-9)
    point = np.mean([np.mean([f1(*a[t][s].sum(0)) - f1(*b[t][s].sum(0)) for s in range(2)]) for t in a])
    assert got.diff == pytest.approx(100 * point)
    assert got.se > 0 and got.lo < got.diff < got.hi
    with pytest.raises(ValueError, match="same tasks"):
        paired_bootstrap(a, {"ner_a": b["ner_a"]})
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap(a, b, n_boot=1)


def test_world_bootstrap_skips_worlds_without_counts():
    counts = {(0, 0): {"a": {"ner_x": _right(2)}, "b": {"ner_x": _wrong(2)}},
              (1, 0): {"a": {"ner_x": _right(2)}}}  # world 1 has no counts for b
    boot = WorldBootstrap(counts, n_boot=20)
    got = boot("a", "b", [(0, 0), (1, 0)])
    assert list(got) == [0] and got[0].diff == 100.0
    assert boot("a", "b", [(0, 0), (1, 0)]) == got  # cached


def test_record_counts_per_type():
    assert task_type_of("ner_news") == "ner" and task_type_of("re_sports") == "re" and task_type_of("skill_b") is None
    rows = [{"gold": "person: alice; location: paris", "prediction": "person: alice; location: rome"},
            {"gold": "None", "prediction": "None"}]
    # ner: record 0 -> tp 1 of 2 predicted, 2 gold; record 1: "none" is an item for ner -> 1 1 1
    np.testing.assert_array_equal(record_counts(rows, "ner"), [[1, 2, 2], [1, 1, 1]])
    assert tuple(record_counts(rows[:1], "ner")[0]) == ie_counts([rows[0]["prediction"]], [rows[0]["gold"]], "ner")
    # no type in the name: exact match (canonical), or the items the writer stored
    exact = [{"gold": "42", "prediction": " 42 "}, {"gold": "7", "prediction": "8"}]
    np.testing.assert_array_equal(record_counts(exact, None), [[1, 1, 1], [0, 1, 1]])
    items = [{"gold": "x", "prediction": "y", "gold_items": [["a", "b"], ["c", "d"]], "predicted_items": [["a", "b"]]}]
    np.testing.assert_array_equal(record_counts(items, None), [[1, 1, 2]])


def test_run_counts_reads_the_writers_files_and_checks_the_recorded_f1(tmp_path):
    records = [{"instruction": "i", "input": "x", "output": "person: alice"},
               {"instruction": "i", "input": "y", "output": "person: bob"}]
    write_predictions(tmp_path / "predictions", "ner_news", "evo_merging@N=3", records,
                      ["person: alice", "person: carol"], "ner")
    write_predictions(tmp_path / "predictions", "ner_news", "best_single@N=3", records, ["", ""], "ner")
    methods = {"evo_merging@N=3": {"per_task": {"ner_news": {"f1": 0.5}}},  # 2·1 / (2 + 2)
               "best_single@N=3": {"per_task": {"ner_news": {"f1": 0.3}}},  # the file gives 0: left out
               "lorahub": {"per_task": {"ner_news": {"f1": 0.0}}}}  # no file: left out
    counts, notes = run_counts(tmp_path, methods, "world 0, seed 0")
    assert list(counts) == ["evo_merging@N=3"]
    np.testing.assert_array_equal(counts["evo_merging@N=3"]["ner_news"], [[1, 1, 1], [0, 1, 1]])
    assert notes == [
        "world 0, seed 0: `predictions/ner_news/best_single@N=3.jsonl` gives F1 0.00, not the recorded 30.00; "
        "`best_single@N=3` is left out of the bootstrap",
        "world 0, seed 0: `predictions/ner_news/lorahub.jsonl` missing; `lorahub` is left out of the bootstrap"]
    rows = [json.loads(line) for line in (tmp_path / "predictions" / "ner_news" / "evo_merging@N=3.jsonl").open()]
    assert [r["gold"] for r in rows] == ["person: alice", "person: bob"]  # the writer's row format
    assert run_counts(tmp_path / "nothing", methods) == (
        {}, ["`nothing`: no predictions/ directory, so no test-set bootstrap for its methods"])
