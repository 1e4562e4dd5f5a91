"""What the worlds share: the cache directory, the code half of a world's cache key, its config sections.

A world's cache key is a hash of its config and of the source text of the modules its build
imports (a declared tuple of module names per world: ``ie_build.CODE_MODULES``,
``sakana_world.CODE_MODULES``), so an edit to one world's code rebuilds that world and no other.
:func:`module_source` is looked up at call time, so a test can hash an edited source map by
monkeypatching it instead of editing files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]
PACKAGE_NAME = _PACKAGE.name
# modules a build imports that do not change what it writes (error messages, the cache directory's
# mechanics, timing measurements, handing freed heap pages back to the OS): left out of the worlds' CODE_MODULES
UNHASHED_MODULES = ("evojax_merge.errors", "evojax_merge.fileio", "evojax_merge.perf", "evojax_merge.bench",
                    "evojax_merge.hostmem",
                    "evojax_merge.zoo.common", "evojax_merge.zoo.realization")


def default_cache_dir() -> Path:
    """``$EVOJAX_MERGE_CACHE``, or ``~/.cache/evojax_merge``: where the worlds are built."""
    return Path(os.environ.get("EVOJAX_MERGE_CACHE", Path.home() / ".cache" / "evojax_merge"))


def module_path(module: str) -> Path:
    """The source file of the package module ``module`` (a package: its ``__init__.py``), without importing it."""
    parts = module.split(".")
    if parts[0] != PACKAGE_NAME:
        raise ValueError(f"{module!r} is not a module of {PACKAGE_NAME}")
    base = _PACKAGE.joinpath(*parts[1:])
    path = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
    if not path.is_file():
        raise ValueError(f"{module!r}: no {base.with_suffix('.py')} and no {base / '__init__.py'}")
    return path


def module_source(module: str) -> bytes:
    """The source text of the package module ``module``."""
    return module_path(module).read_bytes()


def source_digest(modules: Iterable[str]) -> str:
    """SHA-256 over the sorted module names and their source text (:func:`module_source`)."""
    h = hashlib.sha256()
    for module in sorted(set(modules)):
        h.update(module.encode() + b"\0" + module_source(module) + b"\0")
    return h.hexdigest()


def config_sections(z: dict, parts: dict[str, type]) -> dict:
    """``{section: parts[section](**z[section])}`` for a zoo config group ``z`` (lists become tuples).

    An unknown key, in a section or beside ``seed`` at the top, is a one-line error naming it.
    """
    from evojax_merge.errors import EvoMergeInputError

    out = {}
    for key, kind in parts.items():
        sub = {k: tuple(v) if isinstance(v, list) else v for k, v in (z.get(key) or {}).items()}
        unknown = sorted(set(sub) - {f.name for f in dataclasses.fields(kind)})
        if unknown:
            raise EvoMergeInputError(f"zoo.{key}.{unknown[0]}: unknown key")
        out[key] = kind(**sub)
    unknown = sorted(set(z) - set(parts) - {"seed"})
    if unknown:
        raise EvoMergeInputError(f"zoo.{unknown[0]}: unknown key")
    return out
