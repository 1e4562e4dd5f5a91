"""Which runs each experiment makes (plan_runs): related / full OOD pools, one pooled ID merge, distractors."""

from pathlib import Path

import jax.numpy as jnp
import pytest

from evojax_merge.errors import EvoMergeInputError
from evojax_merge.lora.adapter import LoraStack
from evojax_merge.lora.pool import LoraPool
from evojax_merge.runner.experiment import ExperimentSpec, plan_runs, pooled_validation
from evojax_merge.runner.world import World
from evojax_merge.suite import suite_commands
from evojax_merge.zoo.pools import related_pool

TASKS = [f"{t}_{d}" for d in ("news", "sports", "medicine") for t in ("ner", "es", "et")]
ADAPTERS = {**{t: {"task": t, "kind": "task"} for t in TASKS},
            "anti_et_medicine": {"task": "et_medicine", "kind": "anti"},
            "distractor_none": {"task": "", "kind": "distractor"}}
NAMES = sorted(ADAPTERS)


def _world() -> World:
    n = len(NAMES)
    stack = LoraStack(A={"m": jnp.zeros((n, 2, 3))}, B={"m": jnp.zeros((n, 3, 2))}, scale=jnp.ones(n))
    pool = LoraPool(tuple(NAMES), tuple(Path(x) for x in NAMES), stack, 2, (4.0,) * n, False)
    records = {t: {"validation": [{"input": f"{t}-{i}"} for i in range(3)], "test": []} for t in TASKS}
    pools = {t: related_pool(t, ADAPTERS, ["news", "sports", "medicine"]) for t in TASKS}
    return World(None, None, pool, records, {a: v["task"] for a, v in ADAPTERS.items()}, Path("."),
                 {"pools": pools}, {a: v["kind"] for a, v in ADAPTERS.items()})


def test_ood_related_pool_is_the_preset_and_full_is_all_but_own():
    world = _world()
    runs = plan_runs(world, ExperimentSpec(setting="ood", pool="related", targets=("ner_medicine",),
                                           methods=("evo_merging", "uniform")))
    assert [r.label for r in runs] == ["evo_merging", "uniform"]
    assert list(runs[0].pool.names) == ["anti_et_medicine", "es_medicine", "et_medicine", "ner_news", "ner_sports"]
    full = plan_runs(world, ExperimentSpec(setting="ood", pool="full", targets=("ner_medicine",), methods=("uniform",)))
    assert "ner_medicine" not in full[0].pool.names and full[0].pool.num_adapters == len(NAMES) - 1
    assert world.own_adapter("et_medicine") == "et_medicine"  # not its anti-adapter


def test_ood_bad_pools_are_one_line_errors():
    world = _world()
    with pytest.raises(EvoMergeInputError, match="experiment.pools.ner_news: holds the target's own adapter"):
        plan_runs(world, ExperimentSpec(setting="ood", pool="related", targets=("ner_news",),
                                        pools={"ner_news": ["ner_news", "es_news"]}))
    with pytest.raises(EvoMergeInputError, match="experiment.pools.ner_news: unknown adapter 'x'"):
        plan_runs(world, ExperimentSpec(setting="ood", pool="related", targets=("ner_news",),
                                        pools={"ner_news": ["x"]}))
    with pytest.raises(EvoMergeInputError, match="experiment.pool: 'some'"):
        plan_runs(world, ExperimentSpec(setting="ood", pool="some", targets=("ner_news",)))


def test_id_is_one_merge_on_the_pooled_validation_set():
    world = _world()
    experts = ("ner_news", "et_sports", "es_medicine")
    runs = plan_runs(world, ExperimentSpec(setting="id", experts=experts, methods=("evo_merging", "ties")))
    assert len(runs) == 2 and {r.target for r in runs} == {"pooled_3"}
    assert runs[0].validation_tasks == runs[0].test_tasks == experts
    assert list(runs[0].pool.names) == sorted(experts)
    pooled = [r["input"] for r in pooled_validation(world, experts)]
    assert pooled[:4] == ["ner_news-0", "et_sports-0", "es_medicine-0", "ner_news-1"] and len(pooled) == 9


def test_distractors_add_interference_and_auxiliary_adapters():
    world = _world()
    spec = ExperimentSpec(setting="distractors", experts=("ner_news", "ner_sports"), methods=("uniform",),
                          extra_adapters=("distractor_none", "anti_et_medicine", "es_news"))
    (run,) = plan_runs(world, spec)
    assert set(run.pool.names) == {"ner_news", "ner_sports", "distractor_none", "anti_et_medicine", "es_news"}
    with pytest.raises(EvoMergeInputError, match="experiment.extra_adapters: unknown adapter 'nope'"):
        plan_runs(world, ExperimentSpec(setting="distractors", experts=("ner_news",), extra_adapters=("nope",)))


def test_paper_suite_is_every_table_times_three_seeds(tmp_path):
    cmds = suite_commands(["ood", "id"], [0, 1, 2], ["+experiment=paper", "cache_dir=/c", "seed=9", "logger=none"],
                          tmp_path)
    assert [d.relative_to(tmp_path).as_posix() for d, _ in cmds] == [
        "ood/seed_0", "ood/seed_1", "ood/seed_2", "id/seed_0", "id/seed_1", "id/seed_2"]
    assert cmds[1][1][3:] == ["+experiment=ood", "seed=1", f"hydra.run.dir={tmp_path / 'ood' / 'seed_1'}",
                              "cache_dir=/c", "logger=none"]
    with pytest.raises(EvoMergeInputError, match="experiment.suite: unknown experiment 'oops'"):
        suite_commands(["oops"], [0], [], tmp_path)
