"""`python -m evojax_merge.train` on the compositional IE world (zoo=ie_tiny): the world loads, OOD keeps the
target's siblings and drops only its own adapter, the gate reaches results.json, and the experiment
options the IE world needs (distractor_kinds, null pool/validation sizes, the remote catalog)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.runner.backends import LocalBackend
from evojax_merge.runner.experiment import ExperimentSpec, plan_runs

pytestmark = pytest.mark.slow  # builds a world, launches subprocesses
REPO = Path(__file__).resolve().parents[1]
# a tiny search: two cheap methods (lorahub is one CMA-ES stage), 1 generation of 4, 4 test examples
TINY = ["logger=none", "method=[uniform,lorahub]", "budget.population_size=4", "budget.stage2_generations=1",
        "data.validation.batch_size=4", "data.validation.num_batches=2", "experiment.test_examples=4",
        "experiment.max_new_tokens=16", "experiment.max_len=96", "checkpoint.enabled=false", "progress=false"]


def _train(cache, *overrides):
    env = {**os.environ, "EVOJAX_MERGE_CACHE": str(cache), "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "evojax_merge.train", *overrides], capture_output=True, text=True,
                          env=env, timeout=600, cwd=REPO)


def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    from evojax_merge.zoo.ie_build import build_ie_zoo, load_zoo_config

    cache = tmp_path_factory.mktemp("ie-cache")
    return build_ie_zoo(load_zoo_config(REPO / "conf/zoo/ie_tiny.yaml"), cache, progress=False)


@pytest.fixture(scope="module")
def world(zoo):
    from evojax_merge.runner.world import load_ie_world
    from evojax_merge.train import zoo_config

    return load_ie_world(zoo_config(_compose("zoo=ie_tiny")), zoo.root.parent, progress=False)


def test_ood_on_the_ie_world_through_train(zoo, tmp_path):
    out = tmp_path / "run"
    proc = _train(zoo.root.parent, "+experiment=ood", "zoo=ie_tiny", *TINY, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["zoo"]["zoo_root"] == str(zoo.root)  # the fixture's build, reused (same config, same hash)
    assert results["zoo"]["gate"] == zoo.manifest["gate"] and "ner_medicine" in results["zoo"]["gate"]["targets"]
    assert set(results["methods"]) == {"uniform", "lorahub"}
    for res in results["methods"].values():  # experiment.targets empty: the zoo's gate targets, not 6 picked
        assert set(res["per_task"]) == {"ner_medicine"}
    cell = results["methods"]["lorahub"]["per_task"]["ner_medicine"]
    # the OOD pool: every adapter but the target's own; its siblings stay (they are not its own adapter)
    assert cell["adapters"] == ["distractor_none", "ner_news", "sib0_ner_medicine", "sib1_ner_medicine"]
    assert cell["pool_size"] == len(zoo.adapters) - 1 == 4 and len(cell["beta"]) == 4
    assert 0.0 <= results["methods"]["uniform"]["f1"] <= 1.0


def test_bad_zoo_kind_is_a_one_line_error(tmp_path):
    proc = _train(tmp_path / "cache", "+experiment=ood", "zoo=ie_tiny", "zoo.kind=bogus", "logger=none",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "error: zoo.kind: 'bogus' is not one of classic, ie"
    assert "Traceback" not in proc.stderr and not (tmp_path / "cache").exists()  # refused before any build


@pytest.mark.parametrize("zoo_choice, override, message", [
    ("ie_tiny", "+zoo.tasks.bogus=1", "zoo.tasks.bogus: unknown key"),
    ("ie_tiny", "+zoo.bogus=1", "zoo.bogus: unknown key"),
    ("smoke", "+zoo.tasks.bogus=1", "zoo.tasks.bogus: unknown key"),  # the first zoo's config too
])
def test_unknown_zoo_key_is_refused_before_anything_is_built(zoo_choice, override, message):
    """train.validate (run before the world loads; main prints it as the one line ``error: ...``)."""
    from evojax_merge.train import validate

    with pytest.raises(EvoMergeInputError) as err:
        validate(_compose("+experiment=ood", f"zoo={zoo_choice}", override))
    assert str(err.value) == message


def test_ie_world_catalog(world, zoo):
    assert world.adapter_task == {"distractor_none": "distractor_none", "ner_medicine": "ner_medicine",
                                  "ner_news": "ner_news", "sib0_ner_medicine": "sib0_ner_medicine",
                                  "sib1_ner_medicine": "sib1_ner_medicine"}
    assert world.own_adapter("ner_medicine") == "ner_medicine"
    assert world.task_types == {"ner_medicine": "ner", "ner_news": "ner"}
    assert world.adapter_kinds == {"distractor_none": "distractor", "ner_medicine": "task", "ner_news": "task",
                                   "sib0_ner_medicine": "sibling", "sib1_ner_medicine": "sibling"}
    assert world.records["ner_news"] == zoo.records("ner_news") and world.info["gate"] == zoo.manifest["gate"]


def test_user_side_records_and_catalog_match_the_built_world(world):
    """service=remote: the client regenerates the IE world's records and adapter catalog from its config."""
    from evojax_merge.train import user_adapter_catalog, user_records, user_task_types

    cfg = _compose("zoo=ie_tiny")
    records = user_records(cfg)
    assert json.loads(json.dumps(records)) == world.records
    assert user_task_types(cfg) == world.task_types
    assert user_adapter_catalog(cfg, {}, records) == (world.adapter_task, world.adapter_kinds)
    given = ({"a": "ner_news"}, {})
    assert user_adapter_catalog(cfg, {"adapter_tasks": given[0]}, records) == given  # the service's own wins


def _plan(world, **spec):
    return plan_runs(LocalBackend(world, 16, progress=False), ExperimentSpec(**spec))


def test_distractor_kinds_add_those_adapters(world):
    names = list(world.pool.names)
    experts = ("ner_news", "ner_medicine")

    def pools(**kw):
        runs = _plan(world, setting="distractors", experts=experts, **kw)
        assert [(r.target, r.tasks) for r in runs] == [("distractors", experts)]  # one multi-task merge
        return [names[i] for i in runs[0].pool_idx]

    assert pools(distractor_kinds=("distractor", "anti")) == ["ner_news", "ner_medicine", "distractor_none"]
    assert pools(distractor_kinds=("distractor", "sibling")) == [
        "ner_news", "ner_medicine", "distractor_none", "sib0_ner_medicine", "sib1_ner_medicine"]
    one = pools(distractor_kinds=("sibling",), num_distractors=1)
    assert one[:2] == list(experts) and len(one) == 3 and one[2].startswith("sib")
    with pytest.raises(EvoMergeInputError, match=r"^experiment.num_distractors: 3 > the 2 adapters of kind sibling"):
        pools(distractor_kinds=("sibling",), num_distractors=3)
    with pytest.raises(EvoMergeInputError, match=r"^experiment.distractor_kinds: no adapter of kind anti"):
        pools(distractor_kinds=("anti",))
    assert len(pools(num_distractors=2)) == 4  # without kinds: random ones, as before


def test_id_is_one_merge_on_pooled_validation_unless_multitask_is_off(world):
    from evojax_merge.runner.experiment import _validation_records
    from evojax_merge.search.fitness import ValidationConfig

    experts = ("ner_news", "ner_medicine")
    [pooled] = _plan(world, setting="id", experts=experts)
    assert (pooled.target, pooled.tasks, pooled.scored_tasks) == ("id", experts, experts)
    per_expert = _plan(world, setting="id", experts=experts, multitask=False)
    assert [(r.target, r.tasks, r.scored_tasks) for r in per_expert] == [
        ("ner_news", (), ("ner_news",)), ("ner_medicine", (), ("ner_medicine",))]
    assert pooled.pool_idx == per_expert[0].pool_idx == per_expert[1].pool_idx
    # the validation budget (2 batches of 3) split evenly: news 0, medicine 0, news 1, medicine 1, ...
    records, val = _validation_records(LocalBackend(world, 16, progress=False), pooled,
                                       ValidationConfig(batch_size=3, num_batches=2))
    news, med = (world.records[t]["validation"] for t in experts)
    assert records == [news[0], med[0], news[1], med[1], news[2], med[2]] and val.num_batches == 2


def test_pooled_records_interleave_and_stop_at_the_limit():
    from evojax_merge.runner.experiment import pooled_records

    a, b, c = ["a0", "a1", "a2"], ["b0"], ["c0", "c1"]
    assert pooled_records([a, b, c]) == ["a0", "b0", "c0", "a1", "c1", "a2"]  # b runs out: the others go on
    assert pooled_records([a, b, c], limit=4) == ["a0", "b0", "c0", "a1"]
    assert pooled_records([a, b, c], limit=99) == ["a0", "b0", "c0", "a1", "c1", "a2"]
    assert pooled_records([[], []]) == [] and pooled_records([]) == []


def test_id_through_train_scores_one_merge_on_every_expert(zoo, tmp_path):
    out = tmp_path / "run"
    proc = _train(zoo.root.parent, "+experiment=id", "zoo=ie_tiny", *TINY, "experiment.experts=[ner_news,ner_medicine]",
                  f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    for label in ("uniform", "lorahub"):
        cells = results["methods"][label]["per_task"]
        assert set(cells) == {"ner_news", "ner_medicine"}
        news, med = cells["ner_news"], cells["ner_medicine"]
        assert news["merged_for"] == med["merged_for"] == ["ner_news", "ner_medicine"]
        assert news["beta"] == med["beta"] and news["val_ce"] == med["val_ce"]  # one merge, one validation loss
        assert sorted(news["adapters"]) == ["ner_medicine", "ner_news"]
        assert results["methods"][label]["f1"] == pytest.approx((news["f1"] + med["f1"]) / 2)
    assert list(json.loads((out / "result.json").read_text())["searches"]) == ["id/lorahub"]  # one search
    for task in ("ner_news", "ner_medicine"):  # each expert's own test answers, saved to inspect
        rows = (out / "predictions" / task / "lorahub.jsonl").read_text().splitlines()
        assert len(rows) == 4


def test_null_pool_and_validation_sizes_mean_all(world):
    runs = _plan(world, setting="ood", targets=("ner_medicine",), pool_sizes=(2, None, 4))
    assert [(r.suffix, len(r.pool_idx)) for r in runs] == [("@N=2", 2), ("@N=4", 4)]  # None = 4 = the whole pool
    runs = _plan(world, setting="ood", targets=("ner_medicine",), val_sizes=(4, None))
    assert [(r.suffix, r.num_val) for r in runs] == [("@V=4", 4), ("@V=8", 8)]  # 8 validation records in ie_tiny
    with pytest.raises(EvoMergeInputError, match=r"^experiment.pool_sizes: 5 > the 4 OOD adapters"):
        _plan(world, setting="ood", targets=("ner_medicine",), pool_sizes=(5,))


def test_the_experiment_configs_run_on_the_ie_world():
    for name, key, value in [("id", "experts", 4),
                             ("distractors", "distractor_kinds", ["distractor", "anti"]),
                             ("pool_size", "pool_sizes", [3, 6, None]),
                             ("val_size", "val_sizes", [25, 50, None])]:
        cfg = _compose(f"+experiment={name}")
        assert cfg.zoo.kind == "ie" and cfg.experiment.name == name
        got = list(cfg.experiment[key])
        assert (len(got) if isinstance(value, int) else got) == value
    # another zoo on the command line
    assert _compose("+experiment=id", "zoo=ie_full").zoo.tasks.domains == ["news", "sports", "medicine", "science"]
    assert _compose("+experiment=ood", "zoo=classic").zoo.kind == "classic"
