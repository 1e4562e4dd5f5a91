"""`python -m evojax_merge.train` on the compositional IE world (world=ie_tiny): the world loads, OOD keeps the
target's siblings and drops only its own adapter, the gate reaches results.json, and the settings the IE world
needs (distractor_kinds, null pool/validation sizes, one pooled ID merge, the remote catalog)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.runner.build import build_setting, build_world
from evojax_merge.setting.cells import OOD, InDomain, pooled_records
from evojax_merge.world.specs import OpenContext

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
def spec():
    """The world group's ie_tiny: an IEWorld whose build is conf/zoo/ie_tiny.yaml, passed through unchanged."""
    from evojax_merge.zoo.ie_build import load_zoo_config

    world = build_world(_compose("world=ie_tiny"))
    assert world.config == load_zoo_config(REPO / "conf/zoo/ie_tiny.yaml")
    return world


@pytest.fixture(scope="module")
def zoo(spec, smoke_cache):
    from evojax_merge.zoo.ie_build import build_ie_zoo

    return build_ie_zoo(spec.config, smoke_cache, progress=False)


@pytest.fixture(scope="module")
def backend(spec, zoo):
    """What the engine drives: the world spec opened (the fixture's build reused from the cache)."""
    return spec.open(OpenContext(cache_dir=str(zoo.root.parent), max_new_tokens=16, progress=False))


@pytest.fixture(scope="module")
def world(backend):
    return backend.world


def test_ood_on_the_ie_world_through_train(zoo, tmp_path):
    out = tmp_path / "run"
    proc = _train(zoo.root.parent, "+experiment=ood", "world=ie_tiny", *TINY, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["zoo"]["zoo_root"] == str(zoo.root)  # the fixture's build, reused (same config, same hash)
    assert results["zoo"]["gate"] == zoo.manifest["gate"] and "ner_medicine" in results["zoo"]["gate"]["targets"]
    world = results["world"]
    assert {k: world[k] for k in ("kind", "seed", "digest", "canonical")} == {
        "kind": "ie", "seed": 0, "digest": zoo.root.name.rsplit("-", 1)[1], "canonical": None}  # built, not shipped
    assert len(world["recipe_sha256"]) == 12
    assert set(results["methods"]) == {"uniform", "lorahub"}
    for res in results["methods"].values():  # setting.targets empty: the world's gate targets, not 6 picked
        assert set(res["per_task"]) == {"ner_medicine"}
    cell = results["methods"]["lorahub"]["per_task"]["ner_medicine"]
    # the OOD pool: every adapter but the target's own; its siblings stay (they are not its own adapter)
    assert cell["adapters"] == ["distractor_none", "ner_news", "sib0_ner_medicine", "sib1_ner_medicine"]
    assert cell["pool_size"] == len(zoo.adapters) - 1 == 4 and len(cell["beta"]) == 4
    assert 0.0 <= results["methods"]["uniform"]["f1"] <= 1.0


def test_bad_zoo_kind_is_a_one_line_error(tmp_path):
    proc = _train(tmp_path / "cache", "+experiment=ood", "world=ie_tiny", "world.build.kind=bogus", "logger=none",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == \
        "error: world.build.kind: 'bogus' is not 'ie' (this is an IE world's config)"
    assert "Traceback" not in proc.stderr and not (tmp_path / "cache").exists()  # refused before any build


@pytest.mark.parametrize("world_choice, override, message", [
    ("ie_tiny", "+world.build.tasks.bogus=1", "world.build.tasks.bogus: unknown key"),
    ("ie_tiny", "+world.build.bogus=1", "world.build.bogus: unknown key"),
    ("ie", "+world.build.tasks.bogus=1", "world.build.tasks.bogus: unknown key"),  # the default world's recipe too
    ("sakana", "+world.build.bogus=1", "world.build.bogus: unknown key"),
    ("sakana", "+world.build.model.bogus=1", "world.build.model.bogus: unknown key"),
])
def test_unknown_world_key_is_refused_before_anything_is_built(world_choice, override, message):
    """runner/build.build_world (run before the world opens; main prints it as the one line ``error: ...``)."""
    with pytest.raises(EvoMergeInputError) as err:
        build_world(_compose("+experiment=ood", f"world={world_choice}", override))
    assert str(err.value) == message


def test_ie_world_catalog(world, zoo, backend):
    assert world.adapter_task == {"distractor_none": "distractor_none", "ner_medicine": "ner_medicine",
                                  "ner_news": "ner_news", "sib0_ner_medicine": "sib0_ner_medicine",
                                  "sib1_ner_medicine": "sib1_ner_medicine"}
    assert world.own_adapter("ner_medicine") == "ner_medicine"
    assert world.task_types == {"ner_medicine": "ner", "ner_news": "ner"}
    assert world.adapter_kinds == {"distractor_none": "distractor", "ner_medicine": "task", "ner_news": "task",
                                   "sib0_ner_medicine": "sibling", "sib1_ner_medicine": "sibling"}
    assert world.records["ner_news"] == zoo.records("ner_news") and world.info["gate"] == zoo.manifest["gate"]
    assert backend.default_targets == ("ner_medicine",) and backend.names == sorted(world.adapter_task)


def test_user_side_records_and_catalog_match_the_built_world(spec, world, backend, monkeypatch):
    """world=remote: the client regenerates the IE world's records and adapter catalog from its config
    (IEWorld.catalog, no weights); the service's own adapter_tasks win over the catalog's."""
    from evojax_merge.world.specs import RemoteWorld

    records, task_types, adapter_tasks, adapter_kinds = spec.catalog()
    assert json.loads(json.dumps(records)) == world.records
    assert task_types == world.task_types
    assert (adapter_tasks, adapter_kinds) == (world.adapter_task, world.adapter_kinds)

    served = {"pools": [{"id": "default", "adapters": list(world.pool.names)}]}
    monkeypatch.setattr("evojax_merge.service.client.list_pools", lambda url, key, timeout: served)
    ctx = OpenContext(max_new_tokens=16, progress=False)
    remote = RemoteWorld({"url": "http://127.0.0.1:9", "api_key": "k" * 20}, spec).open(ctx)
    assert (remote.adapter_tasks, remote.adapter_kinds) == (world.adapter_task, world.adapter_kinds)
    assert remote.default_targets == ("ner_medicine",) and remote.task_types == world.task_types
    # the same cells on either side, so local and remote genomes line up
    assert [(c.target, c.pool_idx) for c in OOD().cells(remote, 0)] == [(c.target, c.pool_idx)
                                                                        for c in OOD().cells(backend, 0)]
    swapped = {"ner_news": "ner_medicine", "ner_medicine": "ner_news"}
    given = {"url": "http://127.0.0.1:9", "api_key": "k" * 20, "adapter_tasks": swapped}
    remote = RemoteWorld(given, spec).open(ctx)
    assert remote.adapter_tasks == {**world.adapter_task, **swapped}
    [cell] = OOD().cells(remote, 0)  # OOD now leaves out ner_news, the adapter the service says is the target's
    assert [remote.names[i] for i in cell.pool_idx] == ["distractor_none", "ner_medicine", "sib0_ner_medicine",
                                                        "sib1_ner_medicine"]


def test_distractor_kinds_add_those_adapters(world, backend):
    names = list(world.pool.names)
    experts = ("ner_news", "ner_medicine")

    def pools(**kw):
        cells = InDomain(name="distractors", experts=experts, **kw).cells(backend, 0)
        assert [(c.target, c.tasks) for c in cells] == [("distractors", experts)]  # one multi-task merge
        return [names[i] for i in cells[0].pool_idx]

    assert pools(distractor_kinds=("distractor", "anti")) == ["ner_news", "ner_medicine", "distractor_none"]
    assert pools(distractor_kinds=("distractor", "sibling")) == [
        "ner_news", "ner_medicine", "distractor_none", "sib0_ner_medicine", "sib1_ner_medicine"]
    one = pools(distractor_kinds=("sibling",), num_distractors=1)
    assert one[:2] == list(experts) and len(one) == 3 and one[2].startswith("sib")
    with pytest.raises(EvoMergeInputError, match=r"^setting.num_distractors: 3 > the 2 adapters of kind sibling"):
        pools(distractor_kinds=("sibling",), num_distractors=3)
    with pytest.raises(EvoMergeInputError, match=r"^setting.distractor_kinds: no adapter of kind anti"):
        pools(distractor_kinds=("anti",))
    assert len(pools(num_distractors=2)) == 4  # without kinds: random ones, as before
    # the setting group's distractors_adversarial config is this setting: the world's distractor and anti-adapters
    setting = build_setting(_compose("setting=distractors_adversarial", "setting.experts=[ner_news,ner_medicine]"))
    assert isinstance(setting, InDomain) and setting.name == "distractors_adversarial"
    assert [names[i] for i in setting.cells(backend, 0)[0].pool_idx] == ["ner_news", "ner_medicine",
                                                                         "distractor_none"]


def test_id_is_one_merge_on_pooled_validation_unless_multitask_is_off(world, backend):
    from evojax_merge.search.fitness import ValidationConfig

    experts = ("ner_news", "ner_medicine")
    setting = InDomain(experts=experts)
    [pooled] = setting.cells(backend, 0)
    assert (pooled.target, pooled.tasks, pooled.scored_tasks) == ("id", experts, experts)
    per_expert = InDomain(experts=experts, multitask=False).cells(backend, 0)
    assert [(r.target, r.tasks, r.scored_tasks) for r in per_expert] == [
        ("ner_news", (), ("ner_news",)), ("ner_medicine", (), ("ner_medicine",))]
    assert pooled.pool_idx == per_expert[0].pool_idx == per_expert[1].pool_idx
    # the validation budget (2 batches of 3) split evenly: news 0, medicine 0, news 1, medicine 1, ...
    records, val = setting.validation(backend, pooled, ValidationConfig(batch_size=3, num_batches=2))
    news, med = (world.records[t]["validation"] for t in experts)
    assert records == [news[0], med[0], news[1], med[1], news[2], med[2]] and val.num_batches == 2
    # one expert's own cell: its own validation records, all of them
    records, val = setting.validation(backend, per_expert[0], ValidationConfig(batch_size=3, num_batches=2))
    assert records == news and val.num_batches == 2
    with pytest.raises(EvoMergeInputError, match=r"^setting.experts: no adapter for task 'ner_sports'"):
        InDomain(experts=("ner_news", "ner_sports")).cells(backend, 0)


def test_pooled_records_interleave_and_stop_at_the_limit():
    a, b, c = ["a0", "a1", "a2"], ["b0"], ["c0", "c1"]
    assert pooled_records([a, b, c]) == ["a0", "b0", "c0", "a1", "c1", "a2"]  # b runs out: the others go on
    assert pooled_records([a, b, c], limit=4) == ["a0", "b0", "c0", "a1"]
    assert pooled_records([a, b, c], limit=99) == ["a0", "b0", "c0", "a1", "c1", "a2"]
    assert pooled_records([[], []]) == [] and pooled_records([]) == []


def test_id_through_train_scores_one_merge_on_every_expert(zoo, tmp_path):
    out = tmp_path / "run"
    proc = _train(zoo.root.parent, "+experiment=id", "world=ie_tiny", *TINY, "setting.experts=[ner_news,ner_medicine]",
                  f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["setting"]["name"] == "id" and results["setting"]["experts"] == ["ner_news", "ner_medicine"]
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


def test_null_pool_and_validation_sizes_mean_all(backend):
    cells = OOD(targets=("ner_medicine",), pool_sizes=(2, None, 4)).cells(backend, 0)
    assert [(c.suffix, len(c.pool_idx)) for c in cells] == [("@N=2", 2), ("@N=4", 4)]  # None = 4 = the whole pool
    cells = OOD(targets=("ner_medicine",), val_sizes=(4, None)).cells(backend, 0)
    assert [(c.suffix, c.num_val) for c in cells] == [("@V=4", 4), ("@V=8", 8)]  # 8 validation records in ie_tiny
    with pytest.raises(EvoMergeInputError, match=r"^setting.pool_sizes: 5 > the 4 OOD adapters"):
        OOD(targets=("ner_medicine",), pool_sizes=(5,)).cells(backend, 0)
    with pytest.raises(EvoMergeInputError, match=r"^setting.targets: unknown task 'ner_nowhere'"):
        OOD(targets=("ner_nowhere",)).cells(backend, 0)


def test_the_experiment_configs_run_on_the_ie_world():
    for name, key, value in [("id", "experts", 4),
                             ("distractors", "distractor_kinds", ["unrelated"]),
                             ("distractors_adversarial", "distractor_kinds", ["distractor", "anti"]),
                             ("pool_size", "pool_sizes", [3, 6, None]),
                             ("val_size", "val_sizes", [25, 50, None])]:
        cfg = _compose(f"+experiment={name}")
        assert cfg.world._target_ == "evojax_merge.world.specs.IEWorld" and cfg.experiment.name == name
        got = list(getattr(build_setting(cfg), key))
        assert (len(got) if isinstance(value, int) else got) == value
    # another world on the command line
    assert _compose("+experiment=id", "world=ie_full").world.build.tasks.domains == [
        "news", "sports", "medicine", "science"]
    assert build_world(_compose("+experiment=ood", "world=ie_tiny")).default_targets() == ("ner_medicine",)
