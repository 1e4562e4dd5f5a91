"""merge/ and search/ name no merge method: the methods are configurations (conf/method, methods/).

The rule: no identifier (module, function, class, argument, keyword, attribute, variable, import
alias) and no string literal in the code of ``evojax_merge/merge`` and ``evojax_merge/search`` may
contain a method name as a word: ties, dare, breadcrumbs, della, emr, tsv (tsvm), or task followed
by arithmetic. Words are split at ``_``, at non-alphanumerics and at camelCase boundaries
(``DareTies`` -> dare, ties), case-insensitive, so ``properties`` or ``standard`` do not match.
Docstrings and comments are free: they may cite the papers a formula comes from.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "evojax_merge"
FORBIDDEN = frozenset({"ties", "dare", "breadcrumbs", "della", "emr", "tsv", "tsvm"})


def _words(text: str) -> list[str]:
    out = []
    for part in re.split(r"[^0-9A-Za-z]+", text):
        out += [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+", part)]
    return out


def method_words(text: str) -> list[str]:
    """The method names in ``text``, as words."""
    words = _words(text)
    pairs = ["task_arithmetic" for a, b in zip(words, words[1:], strict=False) if (a, b) == ("task", "arithmetic")]
    return [w for w in words if w in FORBIDDEN] + pairs


def _docstrings(tree: ast.AST) -> set[int]:
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value,
                                                                                                    str):
                docs.add(id(first.value))
    return docs


def violations(source: str, name: str = "<src>") -> list[str]:
    """``"name:line: text"`` for every identifier or non-docstring string literal naming a method."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found = [f"{name}:0: {name}"] if method_words(Path(name).stem) else []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            texts = [node.id]
        elif isinstance(node, ast.Attribute):
            texts = [node.attr]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            texts = [node.name]
        elif isinstance(node, ast.arg):
            texts = [node.arg]
        elif isinstance(node, ast.keyword):
            texts = [node.arg or ""]
        elif isinstance(node, ast.alias):
            texts = [node.name, node.asname or ""]
        elif isinstance(node, ast.ImportFrom):
            texts = [node.module or ""]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            texts = [node.value]
        else:
            continue
        found += [f"{name}:{getattr(node, 'lineno', 0)}: {t!r}" for t in texts if method_words(t)]
    return found


def test_the_check_catches_names_and_spares_docstrings():
    src = '''"""TIES and DARE-TIES (Yadav et al.) are cited here, and task arithmetic too."""
import evojax_merge.merge.sparsifiers as sp  # comments may say DELLA
from x import DareTies


def standard_properties(t):
    """Breadcrumbs in a docstring is fine."""
    y = {"kind": "dare_ties"}
    return sp.keep_all(t, mode="TSV-M"), y, task_arithmetic, emr.unified
'''
    texts = sorted(f.split(": ", 1)[1] for f in violations(src))
    assert texts == sorted(["'DareTies'", "'dare_ties'", "'TSV-M'", "'task_arithmetic'", "'emr'"])
    assert violations("x = 1\n", "merge/ties.py") == ["merge/ties.py:0: merge/ties.py"]
    assert method_words("TaskArithmetic") == ["task_arithmetic"] and method_words("properties_standard") == []


@pytest.mark.parametrize("package", ["merge", "search"])
def test_merge_and_search_name_no_method(package):
    files = sorted((PACKAGE / package).rglob("*.py"))
    assert files
    found = [v for f in files for v in violations(f.read_text(), str(f.relative_to(PACKAGE)))]
    assert not found, "method names in code (docstrings and comments may cite papers):\n" + "\n".join(found)
