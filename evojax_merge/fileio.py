"""Small file helpers shared by every module that touches disk: atomic writes, checked JSON reads."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evojax_merge.errors import EvoMergeInputError


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` via a temp file in the same directory, fsync and ``os.replace``: a reader (or a
    run killed mid-write) sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | Path, missing: str | None = None) -> Any:
    """Parse a JSON file; a missing or malformed file is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise EvoMergeInputError(missing or f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise EvoMergeInputError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None


def cached_build(root: Path, build: Callable[[Path], dict]) -> dict:
    """The manifest of the cached build ``root``, running ``build(tmp) -> manifest`` first if needed.

    The build writes into a temporary directory beside ``root`` that is renamed into place only
    when complete, so a half-built directory is never used; a concurrent build that finished first
    is kept.
    """
    if (root / "manifest.json").is_file():
        return json.loads((root / "manifest.json").read_text())
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        manifest = build(tmp)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if not root.exists():
            tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return json.loads((root / "manifest.json").read_text())
