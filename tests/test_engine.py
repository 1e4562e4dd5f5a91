"""The engine's refusals through ``python -m evojax_merge.train``: each is one ``error:`` line, exit 2, before
anything is built (the cache directory stays empty).

- a method whose ``requires`` the world does not ``provide`` (full fine-tunes on a LoRA world, a LoRA pool
  on the Sakana world, the pool's weights through a merge service);
- an unknown key in a method, the setting, the experiment block or the world;
- a run directory that cannot be written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _train(tmp_path: Path, *overrides: str, run_dir: Path | None = None) -> tuple[subprocess.CompletedProcess, Path]:
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    env = {**os.environ, "EVOJAX_MERGE_CACHE": str(cache), "EVOJAX_MERGE_API_KEY": "k" * 20,
           "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "evojax_merge.train", *overrides, "logger=none", "progress=false",
                           f"hydra.run.dir={run_dir or tmp_path / 'run'}"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    return proc, cache


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize("overrides, message", [
    (["+experiment=smoke", "method=sakana_ps"],
     "error: method.sakana_ps: needs full_finetunes, which world 'ie' does not provide "
     "(it provides lora_pool, pool_weights, source_data)"),
    (["world=sakana", "setting=cross_domain", "method=ties"],
     "error: method.ties: needs lora_pool, pool_weights, which world 'sakana' does not provide "
     "(it provides full_finetunes, source_data)"),
    (["+experiment=smoke", "world=remote", "world.service.url=http://127.0.0.1:9", "method=[uniform,ties]"],
     "error: method.ties: needs pool_weights, which world 'remote' does not provide (it provides lora_pool)"),
], ids=["sakana_ps-on-ie_tiny", "ties-on-sakana", "white-box-on-remote"])
def test_a_method_the_world_cannot_serve_is_refused_before_any_build(tmp_path, overrides, message):
    proc, cache = _train(tmp_path, *overrides)
    assert _one_line_error(proc) == message
    assert list(cache.iterdir()) == []  # nothing built, nothing fetched
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize("override, message", [
    ("+method.evo_merging.bogus=1",
     "error: method.evo_merging.bogus: unknown key for evojax_merge.methods.evo_merging.EvoMerging"),
    ("+setting.bogus=1", "error: setting.bogus: unknown key for evojax_merge.setting.cells.OOD"),
    ("+experiment.bogus=1", "error: experiment.bogus: unknown key (known: clear_compiled, max_len, max_new_tokens, "
                            "name, seeds, test_batch_size, test_examples, world_seeds)"),
    ("+world.bogus=1", "error: world.bogus: unknown key for evojax_merge.world.specs.IEWorld"),
    ("+world.build.bogus=1", "error: world.build.bogus: unknown key"),
], ids=["method", "setting", "experiment", "world", "world.build"])
def test_an_unknown_key_is_one_line_naming_it(tmp_path, override, message):
    proc, cache = _train(tmp_path, "+experiment=smoke", "method=evo_merging", override)
    assert _one_line_error(proc) == message
    assert list(cache.iterdir()) == []


def test_an_unwritable_run_directory_is_one_line(tmp_path):
    """A file where the run directory's parent should be: no directory can be made there (even as root)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    run_dir = blocker / "run"
    proc, cache = _train(tmp_path, "+experiment=smoke", "method=evo_merging", run_dir=run_dir)
    line = _one_line_error(proc)
    assert line.startswith("error: hydra.run.dir: ") and str(run_dir) in line, line
    assert list(cache.iterdir()) == []


def test_prepare_dir_refuses_an_unwritable_directory(tmp_path):
    """The run contract's own check (each replicate's and the paper's table directories go through it)."""
    from evojax_merge.errors import EvoMergeInputError
    from evojax_merge.runner.run_dir import prepare_dir

    (tmp_path / "a_file").write_text("")
    with pytest.raises(EvoMergeInputError, match=r"^hydra\.run\.dir: .*a_file/seeds/seed_0 is not writable"):
        prepare_dir(tmp_path / "a_file" / "seeds" / "seed_0")
    assert prepare_dir(tmp_path / "ok" / "seed_0").is_dir()
    assert [p.name for p in (tmp_path / "ok" / "seed_0").iterdir()] == []  # the probe file is gone
