"""Each exercise's forbidden shortcuts (``metadata.course.forbid``) name real callables.

The grader (``course_utils/grade/monitor.py``) turns every ``"module:qualname"`` entry into the code
objects a call to it runs and gives ``uses-reference`` (0 points) to an answer that reaches one. An
entry that does not resolve watches nothing, and the grader only says so on stderr: here every
entry must import, walk its qualname with ``getattr`` and end at a Python function or method
(``__code__``, ``__func__.__code__``, and a ``functools.wraps`` wrapper's ``__wrapped__``).
A ``__main__:name`` entry names a helper an earlier cell of the notebook defines.

That the solutions themselves never reach their exercise's entries is proved by the grader's
reference run (a solution that does gets ``reference-failed``; tests/test_grade_notebooks.py).
"""
import importlib
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
ENTRY = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def _exercises():
    out = []
    for path in SOLUTIONS:
        nb = nbformat.read(path, as_version=4)
        for index, cell in enumerate(nb.cells):
            course = cell.get("metadata", {}).get("course", {})
            if course.get("exercise"):
                out.append((path.stem, index, cell, course))
    return out


EXERCISES = _exercises()
ENTRIES = [(stem, course["exercise"], entry) for stem, _, _, course in EXERCISES
           for entry in course.get("forbid", [])]


def code_objects(entry: str) -> list:
    """The code objects a call to ``entry`` runs: the function's, and what a wrapper wraps."""
    module, _, qualname = entry.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    found = []
    while obj is not None and len(found) < 4:
        func = getattr(obj, "__func__", obj)
        code = getattr(func, "__code__", None)
        if code is not None:
            found.append(code)
        obj = getattr(func, "__wrapped__", None)
    return found


def test_the_notebooks_forbid_something():
    assert len(ENTRIES) >= 20, "the forbid metadata of the solution notebooks went missing"
    assert {(s, e) for s, e, _ in ENTRIES} >= {("02_pig_latin_collators", "translate_word"),
                                                ("01_chat_templates", "render_chatml")}


@pytest.mark.parametrize("stem, index, cell, course", EXERCISES, ids=[f"{s}:{c['exercise']}" for s, _, _, c in EXERCISES])
def test_forbid_is_a_list_of_module_qualname_strings(stem, index, cell, course):
    forbid = course.get("forbid", [])
    assert isinstance(forbid, list), f"{stem} {course['exercise']}: forbid must be a list, got {forbid!r}"
    for entry in forbid:
        assert isinstance(entry, str) and ENTRY.fullmatch(entry), (
            f"{stem} {course['exercise']}: {entry!r} is not 'module:qualname' "
            "(e.g. 'course_utils.pig_latin:pig_latin_word')")
    assert len(set(forbid)) == len(forbid), f"{stem} {course['exercise']}: an entry is listed twice"
    if forbid:
        assert cell.cell_type == "code", f"{stem} {course['exercise']}: a written answer calls nothing"


@pytest.mark.parametrize("stem, exercise, entry", ENTRIES, ids=[f"{s}:{e}:{x}" for s, e, x in ENTRIES])
def test_every_entry_resolves_to_a_function(stem, exercise, entry):
    if entry.startswith("__main__:"):  # a notebook helper: an earlier cell must define it
        name = entry.partition(":")[2].split(".")[0]
        nb = nbformat.read(ROOT / "solutions" / f"{stem}.ipynb", as_version=4)
        defined = re.compile(rf"^(?:def|class)\s+{name}\b|^{name}\s*=", re.MULTILINE)
        assert any(c.cell_type == "code" and defined.search(c.source) for c in nb.cells), (
            f"{stem} {exercise}: no cell defines {name} ({entry})")
        return
    try:
        codes = code_objects(entry)
    except (ImportError, AttributeError) as err:
        pytest.fail(f"{stem} {exercise}: {entry} does not resolve ({type(err).__name__}: {err})")
    assert codes, f"{stem} {exercise}: {entry} is not a Python function or method (no code object to watch)"


def test_the_resolver_is_the_graders():
    """The grader resolves entries the same way, so what passes here is what the grader watches."""
    from course_utils.grade import monitor

    for _, _, entry in ENTRIES:
        if not entry.startswith("__main__:"):
            assert monitor.resolve(entry) == code_objects(entry), entry
