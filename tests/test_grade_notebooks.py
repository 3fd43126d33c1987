"""The grader on the real notebooks: the solution scores full marks, typical mistakes do not.

For each ``solutions/NN_*.ipynb`` one grading run (``grade.grade``, sandboxed, two jobs) grades

- the solution itself: every code exercise ``ok`` with full points (so it reaches none of its
  exercise's ``forbid`` entries, or it would be ``reference-failed``), written answers ``manual``;
- a "mistakes" submission, the student copy with each code exercise's cell replaced by the
  solution's cell followed by the first typical mistake ``tests/test_exercise_mistakes.py`` lists
  for it (``MISTAKES``), which redefines one of its functions: each must score less than full
  marks, or the hidden tests do not see a mistake the self-check rejects. An exercise with no
  listed mistake keeps the student copy's stub;
- for notebook 01, the plain student copy (stubs): 0 points everywhere.

A run costs the reference and one kernel per submission, each a reduced-mode run of the whole
notebook: notebook 01 always runs, the others only with ``COURSE_GRADE_ALL=1``.
"""
import os
from pathlib import Path

import nbformat
import pytest

from course_utils import build, grade
from tests.test_exercise_mistakes import MISTAKES

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))

# Exercises whose first listed mistake the hidden tests cannot tell from the solution (it scores
# full marks in the grader, though the self-check rejects it): the mistake graded instead. Remove
# an entry once the exercise's hidden tests catch the first mistake.
INSTEAD = {
    # the hidden completions have no right first line followed by more lines
    ("08_rl_rewards", "verifiable_rewards"): "exact match without stripping the leading space",
}


def _course(cell) -> dict:
    return cell.get("metadata", {}).get("course", {})


def mistake_for(stem: str, exercise: str):
    """``(name, source)`` of the mistake graded for an exercise, or None when none is listed."""
    mistakes = MISTAKES.get((stem, exercise))
    if not mistakes:
        return None
    name = INSTEAD.get((stem, exercise), next(iter(mistakes)))
    return name, mistakes[name]


def mistakes_notebook(solution_nb, stem: str):
    """The student copy with each listed mistake in its exercise cell; ``(notebook, {exercise: name})``."""
    solution_source = {_course(c)["exercise"]: c.source for c in solution_nb.cells
                       if c.cell_type == "code" and _course(c).get("exercise")}
    nb = build.student_notebook(solution_nb, stem)
    used = {}
    for cell in nb.cells:
        exercise = _course(cell).get("exercise")
        if cell.cell_type != "code" or not exercise:
            continue
        found = mistake_for(stem, exercise)
        if found:
            used[exercise], code = found
            cell.source = build.without_hidden_tests(solution_source[exercise]) + "\n\n" + code
    return nb, used


def _real(path: Path):
    marks = []
    if not path.stem.startswith("01_") and os.environ.get("COURSE_GRADE_ALL") != "1":
        marks.append(pytest.mark.skip(reason="costly: set COURSE_GRADE_ALL=1 to grade every notebook"))
    return pytest.param(path, id=path.stem, marks=marks)


def test_instead_names_listed_mistakes():
    for (stem, exercise), name in INSTEAD.items():
        assert name in MISTAKES.get((stem, exercise), {}), (stem, exercise, name)


@pytest.mark.parametrize("solution", [_real(p) for p in SOLUTIONS])
def test_solution_full_marks_and_typical_mistakes_less(solution, tmp_path):
    stem = solution.stem
    nb = nbformat.read(solution, as_version=4)
    subs = tmp_path / "subs"
    subs.mkdir()
    student = build.student_notebook(nb, stem)
    mistakes, used = mistakes_notebook(nb, stem)
    expected = {solution.parent.name}  # solutions/NN.ipynb -> "solutions"
    if used:  # with no mistake listed, the mistakes copy would be the student copy
        nbformat.write(mistakes, subs / f"mistakes__{stem}.ipynb")
        expected.add("mistakes")
    if stem.startswith("01_") or not used:
        nbformat.write(student, subs / f"student__{stem}.ipynb")
        expected.add("student")
    before = solution.read_bytes()
    rows = grade.grade([solution, subs], out=tmp_path / "out", solutions=solution.parent, jobs=2,
                       progress=False)
    assert solution.read_bytes() == before

    assignment = grade.load_assignment(solution)
    markdown = {e.id for e in assignment.exercises.values() if e.markdown}
    by_hand = sum(e.points for e in assignment.exercises.values() if e.markdown)
    by = {}
    for r in rows:
        by.setdefault(r.student, {})[r.exercise] = r
    assert set(by) == expected, by.keys()

    for r in by[solution.parent.name].values():
        if r.exercise == grade.TOTAL:  # written answers score 0 until the instructor grades them
            assert (r.status, r.points) == ("ok", r.max_points - by_hand), f"solution, total: {r.reason}"
        elif r.exercise in markdown:
            assert r.status == "manual" and r.points == 0, f"solution, {r.exercise}: {r.status} {r.reason}"
        else:
            assert (r.status, r.points) == ("ok", r.max_points), f"solution, {r.exercise}: {r.status} {r.reason}"

    if "mistakes" in by:
        code = {e.id for e in assignment.exercises.values() if not e.markdown}
        assert code <= set(by["mistakes"]), by["mistakes"].keys()
        for exercise in sorted(code):
            r = by["mistakes"][exercise]
            if exercise not in used:  # no typical mistake listed: the stub
                assert r.points == 0, f"stub of {exercise}: {r.status} {r.reason}"
                continue
            what = f"{stem} {exercise}, typical mistake {used[exercise]!r}"
            assert r.points < r.max_points, (
                f"{what}: full marks ({r.status}); the self-check rejects it, the hidden tests do not")
            assert r.status in ("wrong", "partial"), f"{what}: {r.status} {r.reason}"

    if "student" in by:
        for r in by["student"].values():
            assert r.points == 0, f"student copy, {r.exercise}: {r.status} {r.reason}"
