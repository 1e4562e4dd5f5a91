"""Small file helpers shared by every module that touches disk: atomic writes, checked JSON reads."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
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


def file_sha256(path: str | Path) -> str:
    """The SHA-256 hex digest of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | Path, missing: str | None = None) -> Any:
    """Parse a JSON file; a missing or malformed file is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise EvoMergeInputError(missing or f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        what = e.msg.removesuffix(" starting at").removesuffix(" at").lower()
        raise EvoMergeInputError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {what}") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _host() -> str:
    return socket.gethostname().replace(".", "_") or "host"


def clean_stale_builds(parent: Path) -> list[Path]:
    """Remove the temp dirs ``.<name>.<host>.<pid>.<random>`` that builds on this host left behind when
    killed (their process is gone); temp dirs of live builds and of other hosts are kept."""
    removed = []
    if not parent.is_dir():
        return removed
    host = _host()
    for tmp in parent.glob(".*"):
        parts = tmp.name.split(".")
        if not tmp.is_dir() or len(parts) < 5 or parts[-3] != host or not parts[-2].isdigit():
            continue
        if not _pid_alive(int(parts[-2])):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def cached_build(root: Path, build: Callable[[Path], dict]) -> dict:
    """The manifest of the cached build ``root``, running ``build(tmp) -> manifest`` first if needed.

    The build writes into a temporary directory beside ``root`` (``.<name>.<host>.<pid>.<random>``)
    that is renamed into place only when complete, so a half-built directory is never used; a
    concurrent build that finished first is kept. Temp dirs of killed builds (their process gone)
    are removed before a build starts, so nothing stale accumulates.
    """
    if (root / "manifest.json").is_file():
        return json.loads((root / "manifest.json").read_text())
    root.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_builds(root.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.{_host()}.{os.getpid()}.", dir=root.parent))
    try:
        manifest = build(tmp)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if not root.exists():
            tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return json.loads((root / "manifest.json").read_text())
