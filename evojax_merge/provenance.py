"""Where a run came from: the command line and the git commit of the code that ran it.

Written into ``results.json`` (``provenance``) so a report can say which command and which commit
produced its numbers. A package installed outside a git checkout has no commit: ``None``.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_ROOT), *args], capture_output=True, text=True, timeout=10,
                             check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_commit() -> tuple[str | None, bool | None]:
    """``(HEAD's hash, whether tracked files differ from it)``; ``(None, None)`` outside a checkout."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, (bool(status) if status is not None else None)


def provenance(module: str, argv: list[str] | None = None) -> dict:
    """``{"command": "python -m <module> <args>", "git_commit": ..., "git_dirty": ...}``."""
    args = sys.argv[1:] if argv is None else argv
    commit, dirty = git_commit()
    return {"command": shlex.join(["python", "-m", module, *args]), "git_commit": commit, "git_dirty": dirty}
