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
