"""The package's layers: every module is parsed with ``ast`` (nothing is imported), its imports
(at the top, inside functions and classes alike) resolved to modules of the package, and then

1. no two units import each other, directly or round a longer circle (a unit: a subpackage such
   as ``search`` or a top-level module such as ``fileio``);
2. every import goes down :data:`LAYERS` (strictly: units of one layer do not import each other),
   except the few listed in :data:`ALLOWED`, each with its reason;
3. no modules import each other round a circle, inside a unit either.

Imports under ``if TYPE_CHECKING:`` are left out: they never run, and naming a higher layer's type
in an annotation is how a lower layer types what it is handed (``lora/pool.py`` takes a
``models.config.ModelConfig``). A new subpackage or top-level module must be given a layer here.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "evojax_merge"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# bottom to top; a unit may import only units of the layers below its own
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "logs", "perf", "provenance", "tracking", "distributed", "hostmem"),  # import nothing of the package
    ("fileio", PACKAGE),  # the package's own __init__ runs first for every import: only the bottom layer
    ("lora", "data"),  # adapters and pools; records, tasks, prompts, batching
    ("models",),  # the Llama, its config and HF I/O (uses lora's adapter types)
    ("merge", "eval"),  # the merge math; generation and scoring
    ("search",),  # fitness, CMA-ES, grids, DAM training
    ("pool",),  # the LoRA-pool trainer (checkpointed through search's runner; the zoo trains with it)
    ("methods", "export", "sharding", "slurm", "setting", "zoo", "service", "report"),  # built on search or below
    ("world",),  # worlds: zoo builds, remote services, the methods they hold
    ("runner",),  # the experiment engine
    ("bench", "train"),  # the benchmarks (they build methods as a run does); the Hydra entry point
)

# (importing unit, imported module or package) -> why it is allowed; remove an entry when its import goes
ALLOWED: dict[tuple[str, str], str] = {
    ("data", "evojax_merge.eval.metrics"):
        "data/tasks.py checks each record's gold against its task type and data/prompt.py canonicalises "
        "answers with eval/metrics.py (pure text, imports only errors); the fix, moving it to data/metrics.py, "
        "changes the IE world's code digest (zoo/ie_build.py CODE_MODULES names it)",
    ("zoo", "evojax_merge.report.bootstrap"):
        "zoo/vlm_report.py writes the VLM world's own report section (answers beside the images) with the "
        "report's paired bootstrap; results.json names it (world.report = 'evojax_merge.zoo.vlm_report:sections'), "
        "so the committed evovlm runs fix its path; the fix is a world-level report hook above zoo and report",
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module of the package
    line: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.target}"


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__.py``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node``, in functions and classes too, but not under ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _type_checking_only(child):
            for stmt in child.orelse:
                yield from _import_nodes(ast.Module(body=[stmt], type_ignores=[]))
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        yield from _import_nodes(child)


def imports_of(source: str, module: str, is_package: bool, modules: Iterable[str]) -> list[Import]:
    """The package modules ``module`` (with this source) imports. ``from X import n`` is the module ``X.n``
    when there is one, else ``X``; a name that is no module resolves to its longest module prefix."""
    known = set(modules)

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    out = []
    for node in _import_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from the package this module is in
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join([*pkg, *([node.module] if node.module else [])])
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                target = resolve(name)
                if target and target != module and Import(module, target, node.lineno) not in out:
                    out.append(Import(module, target, node.lineno))
    return out


def unit(module: str) -> str:
    """``evojax_merge.search.fitness`` -> ``search``; ``evojax_merge.fileio`` -> ``fileio``; the root: itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


@pytest.fixture(scope="module")
def all_imports() -> list[Import]:
    files = module_files()
    out = []
    for name, path in files.items():
        out += imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", files)
    return out


def _allowed(imp: Import) -> str | None:
    for (src, target), reason in ALLOWED.items():
        if unit(imp.source) == src and (imp.target == target or imp.target.startswith(target + ".")):
            return reason
    return None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    nodes = sorted(set(edges) | {w for ws in edges.values() for w in ws})

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in nodes:
        if v not in index:
            visit(v)
    return out


def _describe(comps: list[list[str]], imps: list[Import], key) -> str:
    lines = []
    for comp in comps:
        members = set(comp)
        lines.append(" <-> ".join(comp) + ":")
        lines += [f"    {imp}" for imp in imps if key(imp.source) in members and key(imp.target) in members
                  and key(imp.source) != key(imp.target)]
    return "\n".join(lines)


def test_the_parser_sees_lazy_and_relative_imports_and_skips_type_checking():
    modules = [f"{PACKAGE}.a", f"{PACKAGE}.a.x", f"{PACKAGE}.b", f"{PACKAGE}.b.y", f"{PACKAGE}.c", f"{PACKAGE}.d"]
    source = (
        "from typing import TYPE_CHECKING\n"
        "import numpy\n"
        f"from {PACKAGE}.b import y, helper\n"
        "from . import x\n"
        "if TYPE_CHECKING:\n"
        f"    from {PACKAGE}.d import Thing\n"
        "else:\n"
        f"    import {PACKAGE}.b.y.deep\n"
        "def f():\n"
        f"    from {PACKAGE}.c import g\n"
        "    return g\n"
    )
    got = [(i.target, i.line) for i in imports_of(source, f"{PACKAGE}.a", True, modules)]
    assert got == [(f"{PACKAGE}.b.y", 3), (f"{PACKAGE}.b", 3), (f"{PACKAGE}.a.x", 4), (f"{PACKAGE}.b.y", 8),
                   (f"{PACKAGE}.c", 10)]
    assert unit(f"{PACKAGE}.b.y") == "b" and unit(f"{PACKAGE}.c") == "c" and unit(PACKAGE) == PACKAGE
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_function_level_imports_of_the_real_package_are_seen(all_imports):
    # bench/plan.py imports the population benchmark only inside check_on_host
    assert any(i.source == f"{PACKAGE}.bench.plan" and i.target == f"{PACKAGE}.bench.population" for i in all_imports)


def test_every_unit_has_exactly_one_layer():
    placed = [u for layer in LAYERS for u in layer]
    assert len(placed) == len(set(placed)), f"a unit in two layers: {sorted(u for u in placed if placed.count(u) > 1)}"
    units = {unit(m) for m in module_files()}
    assert not units - set(placed), f"give these units a layer in LAYERS: {sorted(units - set(placed))}"
    assert not set(placed) - units, f"LAYERS names units the package no longer has: {sorted(set(placed) - units)}"


def test_no_cycles_between_units(all_imports):
    edges: dict[str, set[str]] = defaultdict(set)
    for imp in all_imports:
        if unit(imp.source) != unit(imp.target) and _allowed(imp) is None:
            edges[unit(imp.source)].add(unit(imp.target))
    comps = cycles(edges)
    assert not comps, "units importing each other:\n" + _describe(comps, all_imports, unit)


def test_imports_go_down_the_layers(all_imports):
    layer = {u: i for i, names in enumerate(LAYERS) for u in names}
    bad = [f"{imp}  ({unit(imp.source)}, layer {layer[unit(imp.source)]} -> {unit(imp.target)}, layer "
           f"{layer[unit(imp.target)]})" for imp in all_imports
           if unit(imp.source) != unit(imp.target) and layer[unit(imp.source)] <= layer[unit(imp.target)]
           and _allowed(imp) is None]
    assert not bad, "imports up (or across) the layers; move the code, or list it in ALLOWED with a reason:\n" + \
        "\n".join(bad)


def test_every_allowed_exception_is_still_needed(all_imports):
    layer = {u: i for i, names in enumerate(LAYERS) for u in names}
    for (src, target), reason in ALLOWED.items():
        assert reason.strip(), f"ALLOWED[{src!r}, {target!r}] needs its reason"
        used = [imp for imp in all_imports if unit(imp.source) == src
                and (imp.target == target or imp.target.startswith(target + "."))]
        assert used, f"ALLOWED[{src!r}, {target!r}]: no such import any more; remove the entry"
        assert layer[src] <= layer[unit(target)], f"ALLOWED[{src!r}, {target!r}] goes down the layers; remove it"


def test_no_module_cycles(all_imports):
    edges: dict[str, set[str]] = defaultdict(set)
    for imp in all_imports:
        edges[imp.source].add(imp.target)
    comps = cycles(edges)
    assert not comps, "modules importing each other:\n" + _describe(comps, all_imports, lambda m: m)
