"""Each world's cache key hashes its config and only its own build's code (zoo/common.py)."""

from __future__ import annotations

import ast

import pytest

from evojax_merge.zoo import common, ie_build, sakana_world
from evojax_merge.zoo.ie_build import ZooBuildConfig
from evojax_merge.zoo.sakana_world import SakanaWorldConfig

WORLDS = {"ie": (ie_build, lambda: ZooBuildConfig.from_dict({"seed": 0}).digest()),
          "sakana": (sakana_world, lambda: SakanaWorldConfig().digest())}


def _imports(module: str) -> set[str]:
    """The package modules ``module``'s source imports anywhere (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(common.module_source(module))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        for name in names:
            if name.split(".")[0] == common.PACKAGE_NAME:
                try:
                    common.module_path(name)
                except ValueError:  # a name imported from a module, not a module
                    continue
                found.add(name)
    return found


def _closure(root: str) -> set[str]:
    seen, todo = set(), [root]
    while todo:
        module = todo.pop()
        if module in seen or any(module == u or module.startswith(u + ".") for u in common.UNHASHED_MODULES):
            continue
        seen.add(module)
        todo += _imports(module)
    return seen - {common.PACKAGE_NAME}


def _edited(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = common.module_source
    monkeypatch.setattr(common, "module_source", lambda m: real(m) + (b"\n# edited\n" if m == module else b""))


@pytest.mark.parametrize("world", WORLDS)
def test_code_modules_are_the_builds_imports(world):
    module, _ = WORLDS[world]
    assert sorted(module.CODE_MODULES) == sorted(_closure(module.__name__))


@pytest.mark.parametrize(("world", "other"), [("ie", "sakana"), ("sakana", "ie")])
def test_digest_follows_its_own_code_only(world, other, monkeypatch):
    module, digest = WORLDS[world]
    before = digest()
    assert digest() == before  # deterministic
    with monkeypatch.context() as m:
        _edited(WORLDS[other][0].__name__, m)  # the other world's build module
        assert digest() == before
    with monkeypatch.context() as m:
        _edited("evojax_merge.zoo.common", m)  # shared plumbing, no say in what a build writes
        assert digest() == before
    for own in (module.__name__, "evojax_merge.models.llama", "evojax_merge.zoo.tokenizer"):
        with monkeypatch.context() as m:
            _edited(own, m)
            assert digest() != before, own
    if world == "ie":
        with monkeypatch.context() as m:
            _edited("evojax_merge.zoo.ie_world", m)
            assert digest() != before


def test_module_path_rejects_other_packages_and_missing_modules():
    zoo = common.module_path("evojax_merge.zoo.common").parent
    assert common.module_path("evojax_merge.zoo") == zoo / "__init__.py"
    with pytest.raises(ValueError, match="not a module of evojax_merge"):
        common.module_path("numpy.linalg")
    with pytest.raises(ValueError, match="no .*nothing_here.py"):
        common.module_path("evojax_merge.zoo.nothing_here")
