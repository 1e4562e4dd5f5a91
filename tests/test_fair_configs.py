"""The fair Sakana and DAM experiments (issue 23, item 6) hold the budgets their README states."""

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def _cfg(experiment):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[f"+experiment={experiment}", "logger=none"])


def test_sakana_fair_budgets():
    cfg = _cfg("sakana_fair")
    b, world = cfg.budget, cfg.world
    assert world.build.test >= 500 and cfg.experiment.test_examples is None  # every one of >= 500 test problems
    assert b.sakana_ps_population_size * b.sakana_ps_generations >= 1000  # the paper's ~1000 PS trials
    assert b.sakana_dfs_population_size == 128 and b.sakana_dfs_repeats == 3 and b.sakana_dfs_max_path is None
    assert b.sakana_dfs_population_size * b.sakana_dfs_generations >= 2560  # 20% of the paper's 12,800 (README)
    # every searching row reads the fair budget
    for name in ("sakana_ps", "sakana_ps_acc"):
        m = cfg.method[name]
        assert m.population_size * m.generations >= 1000
    for name in ("sakana_dfs", "sakana_dfs_acc"):
        m = cfg.method[name]
        assert m.population_size * m.generations == b.sakana_dfs_population_size * b.sakana_dfs_generations
    psdfs = cfg.method.sakana_ps_dfs
    assert psdfs.ps.population_size * psdfs.ps.generations >= 1000 and psdfs.dfs.repeats == 3
    assert list(cfg.experiment.seeds) == [0, 1, 2]


def test_dam_fair_budgets_and_grid():
    cfg = _cfg("dam_fair")
    assert cfg.world.build == _cfg("sakana_fair").world.build  # the same world and test problems
    # the language source's own data is lang_b's validation split (it has no training split), the skill
    # source's its 3000 training problems: DAM aligns both to the shorter list
    assert min(cfg.world.build.validation, 3000) >= 1000
    for name in ("dam", "dam_no_cos", "dam_no_kl"):
        m = cfg.method[name]
        assert m.examples_per_source is None
        assert list(m.grid_lr) == [1e-3, 1e-2, 3e-2] and list(m.grid_epochs) == [1, 3] and m.select == "val_ce"
        method = instantiate(m)
        assert method.grid() == [(1e-3, 1), (1e-3, 3), (1e-2, 1), (1e-2, 3), (3e-2, 1), (3e-2, 3)]
    assert cfg.method.dam.lambda_cos == 0.01 and cfg.method.dam_no_cos.lambda_cos == 0.0
