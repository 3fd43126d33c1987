"""Colab runs Python 3.13; CI runs 3.11. What can be checked here that the project's own code runs
there: no import of a standard module that 3.12 or 3.13 removed, no use of a removed name, and a
``requires-python`` that admits 3.13. (Whether each pinned package has a wheel for 3.13 is what the
Colab-fidelity test resolves against Colab's own runtime.)"""
import ast
import json
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# PEP 594's "dead batteries" (removed in 3.13), and what 3.12 removed (PEP 632's distutils, imp,
# asynchat, asyncore, smtpd).
REMOVED_MODULES = {
    "aifc", "audioop", "cgi", "cgitb", "chunk", "crypt", "imghdr", "mailcap", "msilib", "nis", "nntplib",
    "ossaudiodev", "pipes", "sndhdr", "spwd", "sunau", "telnetlib", "uu", "xdrlib", "lib2to3",
    "distutils", "imp", "asynchat", "asyncore", "smtpd",
}
# Names removed from modules that remain (3.12: unittest's aliases, configparser's SafeConfigParser;
# 3.13: locale.resetlocale, typing.io / typing.re, pathlib's is_reserved stays).
REMOVED_ATTRIBUTES = {("locale", "resetlocale"), ("configparser", "SafeConfigParser"),
                      ("unittest", "makeSuite"), ("unittest", "findTestCases"), ("unittest", "getTestCaseNames"),
                      ("typing", "io"), ("typing", "re"), ("ssl", "wrap_socket"), ("ssl", "match_hostname")}


def _sources():
    for path in sorted((ROOT / "course_utils").rglob("*.py")) + sorted((ROOT / "tests").glob("*.py")):
        yield path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        for i, cell in enumerate(cells):
            if cell["cell_type"] == "code":
                source = "".join(cell["source"])
                # IPython's %magics and !shell lines are not Python
                lines = ["" if ln.lstrip().startswith(("%", "!")) else ln for ln in source.splitlines()]
                yield f"{path.name} cell {i}", "\n".join(lines)


def _problems(where: str, source: str) -> list[str]:
    tree = ast.parse(source, filename=where)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            found += [f"{where}: from {node.module} import {a.name}" for a in node.names
                      if (node.module, a.name) in REMOVED_ATTRIBUTES]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in REMOVED_ATTRIBUTES:
                found.append(f"{where}: {node.value.id}.{node.attr}")
            continue
        else:
            continue
        found += [f"{where}: import {n}" for n in names if n.split(".")[0] in REMOVED_MODULES]
    return found


def test_no_module_or_name_that_python_3_13_removed():
    problems = [p for where, source in _sources() for p in _problems(where, source)]
    assert not problems, "removed in Python 3.12/3.13:\n" + "\n".join(problems)


@pytest.mark.parametrize("source, bad", [("import imghdr", True), ("from distutils.util import x", True),
                                         ("import locale\nlocale.resetlocale()", True),
                                         ("import importlib.util", False), ("from typing import Any", False)])
def test_the_scan_finds_what_it_looks_for(source, bad):
    assert bool(_problems("snippet", source)) is bad


def test_requires_python_admits_3_13():
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    from packaging.specifiers import SpecifierSet

    assert "3.13" in SpecifierSet(spec) and "3.11" in SpecifierSet(spec), spec
