"""Logs say each thing once: a world build's messages go through the logger only (shown once, under Hydra and
in a script), and transformers' "PyTorch was not found" advisory never shows (torch is not this project's)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from evojax_merge.zoo.ie_build import _say

TORCH_LINE = "PyTorch was not found"


def test_build_messages_are_logged_not_printed(caplog, capsys):
    caplog.set_level(logging.INFO)  # as under Hydra: its handlers show the record on the console and in the log
    _say(True, "IE zoo: 7 tasks")
    assert [(r.name, r.getMessage()) for r in caplog.records] == [("evojax_merge.zoo.ie_build", "IE zoo: 7 tasks")]
    assert capsys.readouterr().out == ""  # no second copy through print()


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.slow
def test_a_script_shows_a_build_message_once():
    proc = _python("from evojax_merge.zoo.ie_build import _say\n_say(True, 'zoo built in 3 s')\n_say(False, 'quiet')")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "zoo built in 3 s\nquiet\n"  # the console handler added by the first message stays


@pytest.mark.slow
def test_no_pytorch_advice_without_torch():
    no_torch = "import sys\nsys.modules['torch'] = None  # importlib finds no torch, as where it is not installed\n"
    control = _python(no_torch + "import transformers")
    assert TORCH_LINE in control.stderr  # transformers says it, unless evojax_merge came first
    ours = _python(no_torch + "import evojax_merge.train\nimport evojax_merge.zoo.tokenizer\nimport logging\n"
                   "logging.getLogger('transformers').warning('another transformers warning')")
    assert ours.returncode == 0, ours.stderr[-2000:]
    assert TORCH_LINE not in ours.stdout + ours.stderr
    assert "another transformers warning" in ours.stderr  # only that one line is dropped


# -- progress bars stay out of redirected logs ---------------------------------------------------------


def test_off_a_terminal_a_phase_is_one_log_line(caplog):
    from evojax_merge.logs import PhaseLine, progress_bar, progress_iter

    caplog.set_level(logging.INFO, logger="evojax_merge.progress")
    bar = progress_bar(5, "stage1_denoise", initial=2, terminal=False)
    assert isinstance(bar, PhaseLine)
    bar.update(2)
    bar.set_postfix(best="0.5000", sigma="0.0100")
    bar.update(1)
    assert caplog.records == []  # silent while the phase runs
    bar.close()
    bar.close()  # idempotent
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("stage1_denoise: 5/5 in ") and line.endswith(" s, from 2 (best=0.5000, sigma=0.0100)")
    caplog.clear()
    assert list(progress_iter(["a", "b", "c"], "t: methods", terminal=False)) == ["a", "b", "c"]
    assert [r.getMessage().split(" in ")[0] for r in caplog.records] == ["t: methods: 3/3"]
    caplog.clear()
    assert list(progress_iter(["a"], "quiet", enabled=False, terminal=False)) == ["a"]
    progress_bar(3, "quiet", enabled=False).close()
    assert caplog.records == []  # progress=false: nothing at all


def test_on_a_terminal_it_is_a_tqdm_bar():
    from tqdm.auto import tqdm

    from evojax_merge.logs import progress_bar

    bar = progress_bar(3, "x", terminal=True)
    try:
        assert isinstance(bar, tqdm)
    finally:
        bar.close()


@pytest.mark.slow
def test_a_search_redirected_to_a_file_writes_lines_not_bar_frames(tmp_path):
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr, format='%(name)s: %(message)s')\n"
        "import jax, numpy as np\n"
        "from evojax_merge.search.cmaes import StageSpec, init_stage, run_stage\n"
        "from evojax_merge.search.genome import GenomeLayout\n"
        "spec = StageSpec('stage1_denoise', GenomeLayout('alpha', 3, 0.0, 1.0), (0.5, 0.5, 0.5), 0.1, 4, 5)\n"
        "fit = lambda p, g: ((np.asarray(p) - 0.3) ** 2).sum(axis=1)\n"
        "run_stage(spec, fit, init_stage(spec, jax.random.key(0), fit), progress=True)\n"
    )
    err = tmp_path / "job.err"
    with err.open("w") as stderr:  # as SLURM or `2> file` redirect it: not a terminal
        proc = subprocess.run([sys.executable, "-c", code], stderr=stderr, stdout=subprocess.PIPE, text=True,
                              timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    text = err.read_text()
    assert proc.returncode == 0, text[-2000:]
    assert "\r" not in text and "\x1b[" not in text  # no bar frames, no cursor movement
    lines = [x for x in text.splitlines() if x.startswith("evojax_merge.progress: ")]
    assert len(lines) == 1 and lines[0].startswith("evojax_merge.progress: stage1_denoise: 5/5 in ")
