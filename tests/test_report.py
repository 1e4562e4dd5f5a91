"""The seeded report: hand-built results.json files with known numbers, worked out by hand below.

Seeds 0, 1, 2; F1 x100 per seed (results.json holds fractions):

    evo_merging  30 34 32   mean 32, std sqrt((4 + 4 + 0) / 2) = 2
    lorahub      31 30 29   mean 30, std 1
    best_single  20 21 25   mean 22, std sqrt((4 + 1 + 9) / 2) = sqrt 7 = 2.6458
    ties         21 23 22   mean 22, std 1

One world (no world recorded), so the unit is the search seed. Paired gaps (d_s = a_s - b_s;
SE = std(d) / sqrt 3; 95% interval mean ± t_{0.975, 2} SE with t_{0.975, 2} = 4.302653; these runs keep
no predictions, so there is no bootstrap term):
    evo - best_single      d = 10 13 7   mean 10, std 3,       SE 1.7321, half 7.4524 -> [+2.55, +17.45]  marked
    lorahub - best_single  d = 11  9 4   mean  8, std sqrt 13, SE 2.0817, half 8.9567 -> [-0.96, +16.96]  not
    ties - best_single     d =  1  2 -3  mean  0, std sqrt 7,  SE 1.5275, half 6.5724 -> [-6.57, +6.57]   not
    top two: evo - lorahub d = -1  4 3   mean  2, std sqrt 7,  SE 1.5275, half 6.5724 -> [-4.57, +8.57]   not
(Under the old rule of two SE, lorahub's 8 > 4.16 was marked; the t-interval with 2 degrees of freedom is not.)
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.report import build_report
from evojax_merge.report.__main__ import main
from evojax_merge.report.plots import collect_fitness, collect_genomes
from evojax_merge.report.runs import find_run_dirs, load_run
from evojax_merge.report.stats import label_stats, paired_gap, size_series, summarize, top_two_gaps

pytestmark = pytest.mark.slow  # subprocesses and W&B

F1 = {"evo_merging": (30, 34, 32), "lorahub": (31, 30, 29), "best_single": (20, 21, 25), "ties": (21, 23, 22)}
ROOT = Path(__file__).resolve().parent.parent


def _cell(f1: float, searched: bool, seed: int, pool: list[str]) -> dict:
    cell = {"precision": f1, "recall": f1, "f1": f1, "val_fitness": 1.0}
    if searched:  # two stages of 3 generations; alpha/beta one entry per pool adapter
        cell["alpha"] = [0.1 * (i + 1) + 0.1 * seed for i in range(len(pool))]
        cell["beta"] = [(-1) ** i * 0.5 * (seed + 1) for i in range(len(pool))]
        cell["adapters"] = pool
        cell["stages"] = {s: {"best_fitness": 1.0, "history": [
            {"best": 3.0 - g - seed, "mean": 4.0 - g, "std": 0.1, "sigma": 0.05} for g in range(3)]}
            for s in ("stage1_denoise", "stage2_scale")}
    return cell


def write_run(run_dir: Path, seed: int, f1: dict[str, float], experiment: str = "ood", **config) -> Path:
    """A results.json as train.py writes it: two targets whose F1 average to the method's."""
    pools = {"ner_a": ["ner_b", "et_a", "et_b"], "et_a": ["ner_a", "ner_b", "et_b"]}
    methods = {}
    for label, value in f1.items():
        per = {t: _cell(value + d, label.startswith(("evo", "lorahub")), seed, pools[t])
               for t, d in (("ner_a", 0.02), ("et_a", -0.02))}
        methods[label] = {"precision": value, "recall": value, "f1": value, "per_task": per}
    cfg = {"experiment": {"name": experiment, "setting": "ood"}, "seed": seed, "logger": {"name": "none"},
           "strategy": {"sigma0": 0.05}, **config}
    run_dir.mkdir(parents=True, exist_ok=True)
    data = {"methods": methods, "config": cfg,
            "provenance": {"command": f"python -m evojax_merge.train +experiment={experiment} seed={seed}",
                           "git_commit": "0123456789abcdef0123", "git_dirty": False}}
    (run_dir / "results.json").write_text(json.dumps(data))
    return run_dir


def three_seeds(root: Path, labels=tuple(F1)) -> list[Path]:
    return [write_run(root / f"run{s}", s, {k: F1[k][s] / 100 for k in labels}) for s in range(3)]


def test_mean_std_and_paired_gaps_by_hand(tmp_path):
    runs = [load_run(d) for d in three_seeds(tmp_path)]
    by_seed = {r.seed: r.methods for r in runs}
    stats = label_stats(by_seed)
    evo, hub, best, ties = (stats[k] for k in ("evo_merging", "lorahub", "best_single", "ties"))
    assert (evo.f1.mean, evo.f1.std, evo.f1.n) == pytest.approx((32, 2, 3))
    assert (best.f1.mean, best.f1.std) == pytest.approx((22, math.sqrt(7)))
    assert (hub.f1.mean, hub.f1.std) == pytest.approx((30, 1))
    assert evo.f1.se == pytest.approx(2 / math.sqrt(3))
    assert (evo.vs_best_single.mean, evo.vs_best_single.se) == pytest.approx((10, math.sqrt(3)))
    assert evo.vs_best_single.marked
    assert evo.vs_best_single.half == pytest.approx(4.302652729749462 * math.sqrt(3))
    assert (evo.vs_best_single.lo, evo.vs_best_single.hi) == pytest.approx((10 - 7.452413, 10 + 7.452413))
    assert (hub.vs_best_single.mean, hub.vs_best_single.se) == pytest.approx((8, math.sqrt(13 / 3)))
    assert hub.vs_best_single.half == pytest.approx(8.956686)
    assert not hub.vs_best_single.marked  # the interval [-0.96, +16.96] includes 0
    assert ties.vs_best_single.mean == pytest.approx(0) and not ties.vs_best_single.marked
    assert best.vs_best_single is None
    # per target: evo on ner_a is 32, 36, 34 -> mean 34, std 2
    assert (evo.per_target["ner_a"].mean, evo.per_target["ner_a"].std) == pytest.approx((34, 2))
    top = top_two_gaps(stats)[""]
    assert (top.a, top.b) == ("evo_merging", "lorahub")
    assert (top.mean, top.se) == pytest.approx((2, math.sqrt(7 / 3)))
    assert not top.marked


def test_small_cases_by_hand():
    assert math.isnan(summarize([5.0]).std) and math.isnan(summarize([5.0]).se)
    one = paired_gap("a", {0: 3.0}, "b", {0: 1.0})
    assert one.mean == 2 and not one.marked  # one seed: no SE, never marked
    assert paired_gap("a", {0: 1.0}, "b", {1: 1.0}) is None  # no common seed
    # a constant nonzero gap has SE 0: it does not vary over the seeds, so it is no evidence and is not
    # marked; pairing uses only the common seeds 1 and 2
    gap = paired_gap("a", {0: 50.0, 1: 12.0, 2: 13.0}, "b", {1: 10.0, 2: 11.0})
    assert (gap.mean, gap.se, gap.n, gap.marked) == (2.0, 0.0, 2, False)
    with pytest.raises(ValueError):
        summarize([])


def test_report_markdown_tables(tmp_path):
    path = build_report(three_seeds(tmp_path), tmp_path / "out", wandb=False, argv=["x"])
    text = path.read_text()
    assert text.startswith("# ood (ood setting): test F1 over 3 seeds\n\n1 world × 3 search seeds (seeds 0, 1, 2). ")
    assert "A gap with no spread (the same on every replicate and test resample" in text
    assert "two SE" not in text and "standard errors" not in text
    assert "| `evo_merging` | 3 | 32.00 ± 2.00 | +10.00 [+2.55, +17.45] \\* | 32.00 ± 2.00 | 32.00 ± 2.00 |" in text
    assert "| `lorahub` | 3 | 30.00 ± 1.00 | +8.00 [-0.96, +16.96] |" in text  # includes 0: no mark
    assert "| `ties` | 3 | 22.00 ± 1.00 | +0.00 [-6.57, +6.57] |" in text  # d = 1 2 -3: std sqrt 7, not marked
    assert "| `best_single` | 3 | 22.00 ± 2.65 |  |" in text
    assert "`evo_merging` − `lorahub` = +2.00 [-4.57, +8.57] (n = 3 seeds); its 95% interval includes 0." in text
    # no predictions/ in these runs: the bootstrap is skipped for each, and the report says so
    assert "- seed 0 (`run0`): no predictions/ directory, so no test-set bootstrap for its methods" in text
    assert "## Paired differences per world" not in text  # one world and no bootstrap: nothing per world
    assert "| `evo_merging` | 34.00 ± 2.00 | 30.00 ± 2.00 |" not in text  # targets are sorted: et_a first
    assert "| `evo_merging` | 30.00 ± 2.00 | 34.00 ± 2.00 |" in text
    assert "| `ties` | 21.00 | 23.00 | 22.00 |" in text  # per seed
    assert "All runs come from commit `0123456789ab`." in text
    assert "`python -m evojax_merge.train +experiment=ood seed=1`" in text
    assert "Only" not in text
    # evo - lorahub [-4.57, +8.57] undetermined; lorahub - ties: d = 10 7 7, mean 8, std sqrt 3, half 4.3027
    # -> [+3.70, +12.30] held; together undetermined
    assert ("- Evo-Merging > LoraHub > TA/TIES: **undetermined** (`evo_merging` − `lorahub` = +2.00 [-4.57, +8.57] "
            "over 3 seeds, predicted > 0: undetermined; `lorahub` − `ties` = +8.00 [+3.70, +12.30] over 3 seeds, "
            "predicted > 0: held)." in text)
    assert ("- Evo-Merging at least 10 F1 above the best single adapter: **undetermined** (`evo_merging` − "
            "`best_single` = +10.00 [+2.55, +17.45] over 3 seeds, predicted >= 10: undetermined)." in text)


def _check_png(path: Path) -> None:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 200
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert len(colours) > 20  # drawn, not blank


def test_pngs_are_valid_images(tmp_path):
    out = tmp_path / "out"
    text = build_report(three_seeds(tmp_path), out, wandb=False).read_text()
    names = sorted(p.name for p in (out / "figures").iterdir())
    assert names == ["f1_bars.png", "fitness_evo_merging.png", "fitness_lorahub.png",
                     "forest_evo_vs_best_single.png", "forest_ranking.png", "genome_evo_merging.png",
                     "genome_lorahub.png"]
    for name in names:
        _check_png(out / "figures" / name)
        assert f"(figures/{name})" in text


def test_fitness_and_genome_collection_by_hand(tmp_path):
    runs = [load_run(d) for d in three_seeds(tmp_path)]
    curves = collect_fitness(runs, "evo_merging")
    assert sorted(curves) == ["et_a", "ner_a"] and sorted(curves["ner_a"]) == ["stage1_denoise", "stage2_scale"]
    best = curves["ner_a"]["stage2_scale"]["best"]  # 3 - g - seed
    np.testing.assert_array_equal(best, [[3, 2, 1], [2, 1, 0], [1, 0, -1]])
    adapters, targets, alpha, beta, seeds = collect_genomes(runs, "evo_merging")
    assert adapters == ["et_a", "et_b", "ner_a", "ner_b"] and targets == ["et_a", "ner_a"] and seeds == 3
    # et_a's pool is [ner_a, ner_b, et_b]: alpha_i = 0.1 (i + 1) + 0.1 seed -> mean over seeds 0.1 (i + 1) + 0.1
    np.testing.assert_allclose(alpha[:, 0], [np.nan, 0.4, 0.2, 0.3])
    np.testing.assert_allclose(alpha[:, 1], [0.3, 0.4, np.nan, 0.2])
    # beta_i = (-1)^i 0.5 (seed + 1) -> mean (-1)^i
    np.testing.assert_allclose(beta[:, 0], [np.nan, 1.0, 1.0, -1.0])


def test_adapter_names_from_the_saved_adapter_or_pool_positions(tmp_path):
    run_dir = write_run(tmp_path / "run", 0, {"evo_merging": 0.3})
    data = json.loads((run_dir / "results.json").read_text())
    for cell in data["methods"]["evo_merging"]["per_task"].values():
        del cell["adapters"]
    (run_dir / "results.json").write_text(json.dumps(data))
    meta = run_dir / "merged_adapters" / "ner_a__evo_merging"
    meta.mkdir(parents=True)
    (meta / "evojax_merge.json").write_text(json.dumps({"pool": ["x", "y", "z"]}))
    adapters, targets, alpha, _, _ = collect_genomes([load_run(run_dir)], "evo_merging")
    assert adapters == ["#0", "#1", "#2", "x", "y", "z"]  # et_a has no saved adapter: pool positions
    np.testing.assert_allclose(alpha[3:, 1], [0.1, 0.2, 0.3])


def test_pool_and_val_size_curves(tmp_path):
    labels = {"evo_merging@N=5": 0.2, "evo_merging@N=10": 0.3, "best_single@N=5": 0.1, "best_single@N=10": 0.15,
              "lorahub@V=25": 0.05}
    dirs = [write_run(tmp_path / f"run{s}", s, {k: v + 0.01 * s for k, v in labels.items()}) for s in range(3)]
    out = tmp_path / "out"
    text = build_report(dirs, out, wandb=False).read_text()
    # best_single@N=5: 10 11 12; evo@N=5: 20 21 22 -> gap 10, SD 0 and no bootstrap: an interval of width 0,
    # the same on every seed, so not marked, and the claim on it is undetermined
    assert "| `evo_merging@N=5` | 3 | 21.00 ± 1.00 | +10.00 [+10.00, +10.00] |" in text
    assert ("best single adapter (@N=5): **undetermined** (`evo_merging@N=5` − `best_single@N=5` = +10.00 "
            "[+10.00, +10.00] over 3 seeds: no spread, predicted >= 10: undetermined)") in text
    assert "| method | N=5 | N=10 |" in text  # numeric order, not 10 before 5
    rows = [line.split("`")[1] for line in text.split("## Methods")[1].split("##")[0].splitlines()
            if line.startswith("| `")]
    assert rows == ["evo_merging@N=5", "best_single@N=5", "evo_merging@N=10", "best_single@N=10", "lorahub@V=25"]
    assert "| `evo_merging` | 21.00 ± 1.00 | 31.00 ± 1.00 |" in text
    assert "| method | V=25 |" in text
    series = size_series(label_stats({r.seed: r.methods for r in map(load_run, dirs)}), "N")
    assert [x for x, _ in series["evo_merging"]] == [5.0, 10.0]
    for name in ("pool_size.png", "val_size.png"):
        _check_png(out / "figures" / name)


def test_hydra_multirun_directory(tmp_path):
    sweep = tmp_path / "multirun" / "ood" / "2026-01-01_00-00-00"
    (sweep / "multirun.yaml").parent.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    for s in range(3):
        job = write_run(sweep / f"{s}_seed={s}", s, {k: F1[k][s] / 100 for k in F1})
        data = json.loads((job / "results.json").read_text())
        del data["provenance"]  # an older run: the command comes from Hydra's record
        (job / "results.json").write_text(json.dumps(data))
        (job / ".hydra").mkdir()
        (job / ".hydra" / "hydra.yaml").write_text(
            "hydra:\n  overrides:\n    hydra:\n    - hydra.mode=MULTIRUN\n    task:\n    - +experiment=ood\n"
            f"    - seed={s}\n")
    assert [p.name for p in find_run_dirs([tmp_path / "multirun"])] == ["0_seed=0", "1_seed=1", "2_seed=2"]
    assert [p.name for p in find_run_dirs([sweep / "2_seed=2" / "results.json", sweep])] == [
        "2_seed=2", "0_seed=0", "1_seed=1"]  # a results.json names its run; the given order is kept, once each
    text = build_report([sweep], wandb=False).read_text()  # default out: <sweep>/report
    assert (sweep / "report" / "REPORT.md").is_file()
    assert "| `evo_merging` | 3 | 32.00 ± 2.00 | +10.00 [+2.55, +17.45] \\* |" in text
    assert "`python -m evojax_merge.train +experiment=ood seed=2` | .hydra/hydra.yaml | unknown |" in text
    assert "All runs come from commit unknown." in text
    # a job directory that never finished is an error, not a silently smaller n
    (sweep / "3_seed=3" / ".hydra").mkdir(parents=True)
    with pytest.raises(EvoMergeInputError, match=r"3_seed=3/results.json: not found"):
        build_report([sweep], wandb=False)


def test_fewer_than_three_seeds_is_said(tmp_path):
    text = build_report([write_run(tmp_path / "r", 4, {"evo_merging": 0.5, "best_single": 0.25})],
                        tmp_path / "out", wandb=False).read_text()
    assert "**Only 1 seed:**" in text
    assert "| `evo_merging` | 1 | 50.00 | +25.00 | 50.00 | 50.00 |" in text


def _error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def _no_leftovers(parent: Path) -> None:
    assert not (parent / "out").exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(".out.staging")]


def test_bad_input_errors_name_the_file(tmp_path, capsys):
    good = three_seeds(tmp_path)
    out = ["--out", str(tmp_path / "out")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty}/results.json: not found" in _error([str(empty), *out], capsys)
    assert "not a directory" in _error([str(tmp_path / "nope"), *out], capsys)
    (tmp_path / "afile").write_text("x")
    assert f"{tmp_path / 'afile'}: --out exists and is not a directory" in _error(
        [*map(str, good), "--out", str(tmp_path / "afile")], capsys)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "results.json").write_text('{"methods": {"evo": ')
    assert f"{corrupt}/results.json: malformed JSON" in _error([*map(str, good), str(corrupt), *out], capsys)

    other = write_run(tmp_path / "other", 3, {"evo_merging": 0.1}, experiment="id")
    msg = _error([*map(str, good), str(other), *out], capsys)
    assert f"{other}/results.json: experiment 'id' mixed with 'ood'" in msg

    changed = write_run(tmp_path / "changed", 3, {"evo_merging": 0.1}, strategy={"sigma0": 0.1})
    assert f"{changed}/results.json: config.strategy.sigma0 differs" in _error([*map(str, good), str(changed), *out],
                                                                             capsys)
    again = write_run(tmp_path / "again", 1, {"evo_merging": 0.1})
    assert "method 'evo_merging' for seed 1 is also in" in _error([*map(str, good), str(again), *out], capsys)

    nan = write_run(tmp_path / "nan", 5, {"evo_merging": float("nan")})
    assert f"{nan}/results.json: methods.evo_merging.precision is missing or not a finite number" in _error(
        [str(nan), *out], capsys)
    noseed = tmp_path / "noseed"
    write_run(noseed, 0, {"evo_merging": 0.1})
    data = json.loads((noseed / "results.json").read_text())
    del data["config"]["seed"]
    (noseed / "results.json").write_text(json.dumps(data))
    assert f"{noseed}/results.json: config.seed is missing" in _error([str(noseed), *out], capsys)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "results.json").write_text("[1, 2]")
    assert f"{notes}/results.json: no 'methods' table" in _error([str(notes), *out], capsys)
    _no_leftovers(tmp_path)


def test_rerun_replaces_the_previous_report(tmp_path):
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "stale.png").write_bytes(b"old")
    (out / "keep.txt").write_text("not ours")
    build_report(three_seeds(tmp_path, labels=("ties", "best_single")), out, wandb=False)
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["f1_bars.png"]
    assert (out / "keep.txt").read_text() == "not ours"
    assert not [p for p in tmp_path.iterdir() if ".staging" in p.name]


def test_cli_module_entry_point(tmp_path):
    dirs = three_seeds(tmp_path, labels=("ties", "best_single"))
    proc = subprocess.run([sys.executable, "-m", "evojax_merge.report", *map(str, dirs), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "REPORT.md").is_file()
    assert "| `ties` | 3 | 22.00 ± 1.00 | +0.00 [-6.57, +6.57] |" in proc.stdout  # the methods table, printed
    bad = subprocess.run([sys.executable, "-m", "evojax_merge.report", str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)  # run0..2 plus the report dir o/: fine; add a corrupt run
    assert bad.returncode == 0, bad.stderr
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{")
    bad = subprocess.run([sys.executable, "-m", "evojax_merge.report", str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: ")
    assert "broken/results.json: malformed JSON" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_wandb_offline_gets_the_tables_and_images(tmp_path):
    from wandb_offline import read_records

    out = tmp_path / "out"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    # a process of its own, as the CLI runs: its exit flushes the offline run file
    proc = subprocess.run([sys.executable, "-m", "evojax_merge.report", *map(str, three_seeds(tmp_path)), "--out",
                           str(out), "--wandb"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    files = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    keys, summary = set(), {}
    for rec in read_records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            keys |= {item.key or item.nested_key[0] for item in rec.history.item}  # a table/image is nested
        elif kind == "summary":
            summary.update({item.key or item.nested_key[0]: item.value_json for item in rec.summary.update})
    assert {"report/methods", "report/per_seed", "report/per_target", "report/f1_bars",
            "report/genome_evo_merging", "report/fitness_lorahub"} <= keys
    assert "report_md" in summary and "32.00 ± 2.00" in json.loads(summary["report_md"])


def _stats_of(f1: dict[str, tuple[float, ...]]):
    return label_stats({s: {k: {"f1": v[s] / 100, "precision": 0.0, "recall": 0.0, "per_task": {}}
                            for k, v in f1.items() if s < len(v)} for s in range(3)})


# Three seeds of one world, no bootstrap: half = t_{0.975, 2} · sd / sqrt 3 = 4.302653 / 1.732051 · sd = 2.484138 · sd


def test_paper_predictions_held_by_hand():
    from evojax_merge.report.predictions import check_predictions

    checked = check_predictions(_stats_of({
        "evo_merging": (40, 42, 44), "best_single": (20, 21, 22), "lorahub": (30, 31, 35), "ties": (20, 20, 26),
        "task_arithmetic": (20, 20, 20), "evo_no_scale": (10, 10, 10), "evo_no_denoise": (20, 21, 22),
        "evo_no_sign_flip": (15, 16, 17)}))
    # evo - best = 20 21 22: mean 21, sd 1 -> [18.52, 23.48], wholly >= 10
    # evo - lorahub = 10 11 9 (sd 1) -> [7.52, 12.48]; lorahub - TA = 10 11 15: mean 12, sd sqrt 7, half 6.5724
    # -> [5.43, 18.57]; lorahub - ties = 10 11 9 -> [7.52, 12.48]: all > 0
    # no_scale - no_denoise = -10 -11 -12 -> [-13.48, -8.52]; no_scale - no_sign_flip = -5 -6 -7 -> [-8.48, -3.52]
    assert [p.verdict for p in checked] == ["held", "held", "held"]
    assert checked[0].evidence == ("`evo_merging` − `best_single` = +21.00 [+18.52, +23.48] over 3 seeds, "
                                   "predicted >= 10: held")
    assert checked[1].evidence == (
        "`evo_merging` − `lorahub` = +10.00 [+7.52, +12.48] over 3 seeds, predicted > 0: held; "
        "`lorahub` − `task_arithmetic` = +12.00 [+5.43, +18.57] over 3 seeds, predicted > 0: held; "
        "`lorahub` − `ties` = +10.00 [+7.52, +12.48] over 3 seeds, predicted > 0: held")
    assert checked[2].evidence == (
        "`evo_no_scale` − `evo_no_denoise` = -11.00 [-13.48, -8.52] over 3 seeds, predicted < 0: held; "
        "`evo_no_scale` − `evo_no_sign_flip` = -6.00 [-8.48, -3.52] over 3 seeds, predicted < 0: held")
    assert all(p.held for p in checked)
    assert check_predictions(_stats_of({"uniform": (1, 2, 3), "base": (0, 0, 0)})) == []
    # the labels method=ablation really writes: conf/method/ has one file per ablation label
    from evojax_merge.report.predictions import ABLATIONS

    assert all((ROOT / "conf" / "method" / f"{label}.yaml").is_file() for label in ABLATIONS)


def test_paper_predictions_not_held_by_hand():
    from evojax_merge.report.predictions import check_predictions

    checked = check_predictions(_stats_of({
        "evo_merging": (41, 42, 43), "best_single": (40, 40, 40), "lorahub": (50, 52, 51), "ties": (31, 31, 31),
        "evo_no_scale": (20, 21, 22), "evo_no_denoise": (10, 10, 10), "evo_no_sign_flip": (30, 30, 30)}))
    # evo - best = 1 2 3: mean 2, sd 1, t_{0.975,2} = 4.302653, half 4.302653 / sqrt 3 = 2.4841 -> [-0.48, +4.48]:
    #   wholly below 10
    # evo - lorahub = -9 -10 -8 -> [-11.48, -6.52] wholly <= 0 (lorahub - ties = 19 21 20 held): not held
    # no_scale - no_denoise = 10 11 12 -> [+7.52, ...] wholly >= 0 (no_scale - no_sign_flip -10 -9 -8 held): not held
    assert [p.verdict for p in checked] == ["not held", "not held", "not held"]
    [gap] = [part.gap for part in checked[0].parts]
    assert (gap.mean, gap.sd, gap.n) == pytest.approx((2, 1, 3))
    assert gap.half == pytest.approx(4.302652729749462 / math.sqrt(3)) == pytest.approx(2.4841377)
    assert [part.verdict for part in checked[1].parts] == ["not held", "held"]
    assert [part.verdict for part in checked[2].parts] == ["not held", "held"]
    assert not any(p.held for p in checked)


def test_paper_predictions_undetermined_by_hand():
    from evojax_merge.report.predictions import check_predictions

    # evo - best = 9 12 9: mean 10, sd sqrt 3, half 4.302653 -> [5.70, 14.30] straddles 10 (the old mean-only rule
    # called it held); lorahub - ties = 5 5 5 has no spread: undetermined, so the ranking is too
    [gain, ranking] = check_predictions(_stats_of({
        "evo_merging": (40, 42, 44), "best_single": (31, 30, 35), "lorahub": (35, 36, 37), "ties": (30, 31, 32)}))
    assert gain.verdict == ranking.verdict == "undetermined"
    assert gain.evidence == ("`evo_merging` − `best_single` = +10.00 [+5.70, +14.30] over 3 seeds, "
                             "predicted >= 10: undetermined")
    assert ranking.evidence.endswith("`lorahub` − `ties` = +5.00 [+5.00, +5.00] over 3 seeds: no spread, "
                                     "predicted > 0: undetermined")
    # one replicate: no interval at all
    one = label_stats({0: {k: {"f1": v, "precision": 0.0, "recall": 0.0, "per_task": {}}
                           for k, v in (("evo_merging", 0.9), ("best_single", 0.1))}})
    [p] = check_predictions(one)
    assert p.verdict == "undetermined" and p.evidence == (
        "`evo_merging` − `best_single` = +80.00 over 1 seed: no interval, predicted >= 10: undetermined")


def test_distractor_cost_held_or_not_by_hand():
    from evojax_merge.report.predictions import check_distractor_cost

    id_ = _stats_of({"evo_merging": (60, 62, 64), "task_arithmetic": (40, 40, 40), "ties": (44, 42, 40)})
    # changes (distractors - id), half = 2.4841 · sd: evo 0 -1 +1 -> [-2.48, +2.48] wholly >= -3;
    # TA -20 -21 -22 -> [-23.48, -18.52] and TIES -30 -31 -29 -> [-32.48, -27.52] wholly <= -10: held
    dist = _stats_of({"evo_merging": (60, 61, 65), "task_arithmetic": (20, 19, 18), "ties": (14, 11, 11)})
    [p] = check_distractor_cost(id_, dist)
    assert p.verdict == "held" and p.evidence == (
        "`evo_merging` 62.00 -> 62.00; `task_arithmetic` 40.00 -> 19.00; `ties` 42.00 -> 12.00; "
        "`evo_merging (distractors)` − `evo_merging (id)` = +0.00 [-2.48, +2.48] over 3 seeds, predicted >= -3: held; "
        "`task_arithmetic (distractors)` − `task_arithmetic (id)` = -21.00 [-23.48, -18.52] over 3 seeds, "
        "predicted <= -10: held; `ties (distractors)` − `ties (id)` = -30.00 [-32.48, -27.52] over 3 seeds, "
        "predicted <= -10: held")
    # TA loses only 1 2 3 -> [-4.48, +0.48], wholly above -10: not held
    [p] = check_distractor_cost(id_, _stats_of({"evo_merging": (60, 61, 65), "task_arithmetic": (39, 38, 37),
                                                "ties": (14, 11, 11)}))
    assert p.verdict == "not held"
    # Evo loses 3 4 5 -> [-6.48, -1.52] straddles -3: undetermined
    [p] = check_distractor_cost(id_, _stats_of({"evo_merging": (57, 58, 59), "task_arithmetic": (20, 19, 18),
                                                "ties": (14, 11, 11)}))
    assert p.verdict == "undetermined"
    assert check_distractor_cost(id_, _stats_of({"evo_merging": (1, 1, 1), "ties": (0, 0, 0)})) == []  # no TA
    assert check_distractor_cost(id_, {}) == []


def test_summary_lists_each_table_and_the_cross_table_prediction():
    from evojax_merge.report.summary import summary_markdown

    # evo - lorahub = 10 11 12: mean 11, sd 1 -> [+8.52, +13.48]; lorahub - TA = 10 11 12 likewise;
    # lorahub - ties = 6 9 12: mean 9, sd 3, half 7.4524 -> [+1.55, +16.45]: all wholly > 0, held
    id_ = _stats_of({"evo_merging": (60, 62, 64), "task_arithmetic": (40, 40, 40), "ties": (44, 42, 40),
                     "lorahub": (50, 51, 52)})
    dist = _stats_of({"evo_merging": (60, 61, 65), "task_arithmetic": (20, 19, 18), "ties": (14, 11, 11)})
    text = summary_markdown({"id": id_, "distractors": dist}, {"id": "id/report/REPORT.md",
                                                               "distractors": "distractors/report/REPORT.md"},
                            [0, 1, 2], 600.0, "python -m evojax_merge.train +experiment=paper",
                            {"id": 90.0, "distractors": 1110.0}, designs={"id": "1 world × 3 search seeds"})
    assert text.startswith("# The paper's tables: 2 tables x 3 seeds (0, 1, 2)")
    assert "10 min in this invocation (runs finished earlier were skipped); the runs themselves took 20 min" in text
    assert "1 world × 3 search seeds. [REPORT.md](id/report/REPORT.md) — runs: 1.5 min over its replicates" in text
    assert ("- Evo-Merging > LoraHub > TA/TIES: **held** (`evo_merging` − `lorahub` = +11.00 [+8.52, +13.48] over 3 "
            "seeds, predicted > 0: held; `lorahub` − `task_arithmetic` = +11.00 [+8.52, +13.48] over 3 seeds, "
            "predicted > 0: held; `lorahub` − `ties` = +9.00 [+1.55, +16.45] over 3 seeds, predicted > 0: held)."
            in text)
    assert ("## Across tables: id against distractors\n\n- Distractors cost Evo-Merging at most 3 F1, while TA and "
            "TIES drop 10 or more: **held**") in text
    assert text.index("## id") < text.index("## distractors") < text.index("## Across tables")
    assert "Across tables" not in summary_markdown({"id": id_}, {"id": "x"}, [0], 1.0, "c")


def test_provenance_is_this_checkout():
    from evojax_merge.provenance import provenance

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    prov = provenance("evojax_merge.train", ["+experiment=smoke", "seed=1", "note=a b"])
    assert prov["command"] == "python -m evojax_merge.train +experiment=smoke seed=1 'note=a b'"
    assert prov["git_commit"] == head and isinstance(prov["git_dirty"], bool)


def _engine_run(run_dir: Path, seed: int, metric: str, methods: dict[str, dict]) -> Path:
    """A results.json as the engine (runner/run_dir.py) writes it for one replicate: one target per method."""
    table = {label: {**{k: cell[k] for k in ("precision", "recall", "f1")}, "per_task": {"skill_b": cell}}
             for label, cell in methods.items()}
    config = {"experiment": {"name": "dam"}, "setting": {"_target_": "x.CrossDomain", "name": "cross_domain"},
              "seed": seed}
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({"methods": table, "config": config, "metric": metric}))
    return run_dir


def test_engine_runs_with_costs_paths_and_coefficients_by_hand(tmp_path):
    """Replicates written by the engine (Sakana's and DAM's experiments): the metric is named accuracy, the
    setting's name comes from the setting group, and the cost table is the mean over seeds of each seed's
    value, worked out by hand:

        dam   wall 10, 14 -> 12 ± 2.83; forward 100, 300 -> 200; val CE 2.0, 3.0 -> 2.5000 ± 0.7071
        dfs   wall  1,  3 ->  2 ± 1.41; forward 40, 40 -> 40
    accuracy: dam 0.5, 0.3 -> 40.00 ± 14.14; dfs 0.2, 0.4 -> 30.00 ± 14.14; best_single 0.1 -> 10.00 ± 0.00
    """
    path = [{"slot": 1, "source_index": 0, "layer": 1, "scale": 1.2}, {"slot": 2, "source_index": 1, "layer": 0,
                                                                       "scale": 0.8}]
    dirs = []
    for seed, (acc_dam, acc_dfs, wall, fwd, ce) in enumerate(((0.5, 0.2, 10, 100, 2.0), (0.3, 0.4, 14, 300, 3.0))):
        def score(a):
            return {"precision": a, "recall": a, "f1": a, "accuracy": a}

        dam = {**score(acc_dam), "val_ce": ce, "wall_s": wall, "forward_examples": fwd, "backward_examples": 8,
               "train_history": [{"step": 0, "loss": 2.0, "kl": 1.9}, {"step": 1, "loss": 1.5, "kl": 1.4}],
               "coefficients": {"model.layers.0.mlp.up_proj.weight": [0.4, 0.6],
                                "model.layers.1.mlp.up_proj.weight": [0.5, 0.5]}, "sources": ["lang", "skill"]}
        dfs = {**score(acc_dfs), "val_ce": None, "wall_s": 1 + 2 * seed, "forward_examples": 40,
               "stages": {"dfs": {"history": [{"best": 2.0, "mean": 3.0, "std": 0.1, "sigma": 0.5}]}},
               "path": path, "num_slots": 4, "sources": ["lang", "skill"]}
        dirs.append(_engine_run(tmp_path / "seeds" / f"seed_{seed}", seed, "accuracy",
                                {"dam": dam, "sakana_dfs": dfs, "best_single": score(0.1)}))
    text = build_report(dirs, tmp_path / "report", wandb=False).read_text()
    assert "# dam (cross_domain setting): test accuracy over 2 seeds" in text
    assert "| method | n | accuracy | Δ vs best_single |" in text
    assert "| `dam` | 40.00 ± 14.14 | 2.5000 ± 0.7071 | 12.0 ± 2.8 | 200 | 8 |" in text
    assert "| `sakana_dfs` | 30.00 ± 14.14 |  | 2.0 ± 1.4 | 40 |  |" in text
    names = sorted(p.name for p in (tmp_path / "report" / "figures").iterdir())
    assert names == ["coefficients_dam.png", "f1_bars.png", "fitness_sakana_dfs.png", "path_sakana_dfs.png",
                     "quality_vs_cost.png", "training_dam.png"]
    for name in names:
        _check_png(tmp_path / "report" / "figures" / name)
    # the report command rebuilds the same tables from the seed directories
    assert main([str(tmp_path / "seeds"), "--out", str(tmp_path / "again"), "--no-wandb"]) == 0
    assert "| `dam` | 40.00 ± 14.14 | 2.5000 ± 0.7071 | 12.0 ± 2.8 | 200 | 8 |" in (tmp_path / "again" /
                                                                                  "REPORT.md").read_text()
    # runs of two metrics are not mixed
    other = write_run(tmp_path / "f1run", 5, {"dam": 0.2}, experiment="dam")
    with pytest.raises(EvoMergeInputError, match="metric 'F1' mixed with 'accuracy'"):
        build_report([*dirs, other], tmp_path / "mixed", wandb=False)


def test_commands_drop_the_run_directory_of_one_machine(tmp_path):
    from evojax_merge.report.runs import portable_command

    assert portable_command("python -m evojax_merge.train +experiment=dam hydra.run.dir=/tmp/runs4/dam seed=1") == \
        "python -m evojax_merge.train +experiment=dam seed=1"
    assert portable_command("python -m evojax_merge.train 'note=a b' hydra.sweep.dir=/x") == \
        "python -m evojax_merge.train 'note=a b'"
    run = write_run(tmp_path / "r", 0, {"evo_merging": 0.3, "best_single": 0.2})
    data = json.loads((run / "results.json").read_text())
    data["provenance"]["command"] += " hydra.run.dir=/tmp/somewhere"
    (run / "results.json").write_text(json.dumps(data))
    text = build_report([run], tmp_path / "out", wandb=False).read_text()
    assert "/tmp/somewhere" not in text and "`python -m evojax_merge.train +experiment=ood seed=0`" in text
