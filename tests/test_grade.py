"""The instructor grader (``python -m course_utils.grade``).

- Unit tests: reading submissions, naming students, finding the assignment, placing the hidden
  tests, the kernel's environment (no kernel, fast).
- The hostile and broken submissions in ``tests/submissions/`` are graded in one CLI run against
  the tiny fixture assignment ``tests/submissions/solutions/99_grading_fixture.ipynb`` (a kernel
  takes seconds): each gets exactly its expected statuses and points, and no file changes.
- Attacks on the grader itself (the sandbox, shortcuts, files) are in ``tests/test_grade_hostile.py``;
  the real notebooks are graded in ``tests/test_grade_notebooks.py``.

Only a submission's exercise cells run (inside the fixture's own notebook), so the attacks of the
static submissions here sit inside an exercise cell; the sandbox is on, as by default.

The submissions were generated from the fixture's student copy (``stub__...``) with small edits;
``test_fixture_stub_is_the_build_of_the_fixture`` says when the fixture changed and they must be
regenerated.
"""
import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_utils import build, grade
from course_utils.grade import planning, scoring

ROOT = Path(__file__).resolve().parent.parent
SUBMISSIONS = ROOT / "tests" / "submissions"
FIXTURE = SUBMISSIONS / "solutions" / "99_grading_fixture.ipynb"
STEM = FIXTURE.stem
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))

# student -> (TOTAL status, TOTAL points, {exercise: (status, points)}); max is 1 + 2 = 3 points.
OK = {"count_words": ("ok", 1), "softmax": ("ok", 2)}
EXPECTED = {
    "perfect": ("ok", 3, OK),
    "reordered": ("ok", 3, OK),
    "colab": ("ok", 3, OK),  # no course metadata, no cell ids: found by the exercise's `def` line
    "spy": ("ok", 3, OK),  # looked for the answer key from its folder and environment: found none
    "stub": ("not-implemented", 0, {"count_words": ("not-implemented", 0),
                                    "softmax": ("not-implemented", 0)}),
    "partial": ("partial", 2.33, {"count_words": ("ok", 1), "softmax": ("partial", 1.33)}),
    "wrong": ("wrong", 0, {"count_words": ("wrong", 0), "softmax": ("wrong", 0)}),
    # patched probe_matches and cu.probe in its exercise cell to write guesses: the patches are
    # undone when the cell ends, so the hidden tests record what its stubs do
    "forger": ("not-implemented", 0, {"count_words": ("not-implemented", 0), "softmax": ("not-implemented", 0)}),
    "deleted": ("missing-exercise", 1, {"count_words": ("ok", 1), "softmax": ("missing-exercise", 0)}),
    "error": ("error", 1, {"count_words": ("ok", 1), "softmax": ("error", 0)}),
    "sysexit": ("error", 3, OK),  # sys.exit() does not stop an IPython kernel
    "osexit": ("kernel-died", 1, {"count_words": ("ok", 1), "softmax": ("kernel-died", 0)}),
    "killer": ("ok", 3, OK),  # SIGKILL to its parent: in the sandbox that is the namespace's init
    "loop": ("timeout", 3, OK),  # interrupted after the cell limit (softmax defined); the notebook went on
    "stubborn": ("timeout", 1, {"count_words": ("ok", 1), "softmax": ("timeout", 0)}),
    "flood": ("output-too-large", 3, OK),
    "truncated": ("malformed", 0, {"count_words": ("malformed", 0), "softmax": ("malformed", 0)}),
    "notanotebook": ("malformed", 0, {"count_words": ("malformed", 0), "softmax": ("malformed", 0)}),
    "otherassignment": ("wrong-assignment", 0, {"count_words": ("wrong-assignment", 0),
                                                "softmax": ("wrong-assignment", 0)}),
}


def _digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.ipynb"))}


def _cells(nb, tmp_path) -> list:
    nbformat.write(nb, tmp_path / "x.ipynb")
    return grade.read_submission(tmp_path / "x.ipynb").cells


# ------------------------------------------------------------------------------------ unit tests
def test_fixture_stub_is_the_build_of_the_fixture():
    built = build.student_notebook(nbformat.read(FIXTURE, as_version=4), STEM)
    committed = nbformat.read(SUBMISSIONS / f"stub__{STEM}.ipynb", as_version=4)
    assert [c.source for c in committed.cells] == [c.source for c in built.cells], (
        "the fixture changed: regenerate the submissions in tests/submissions/ from its student copy")


def test_every_submission_has_an_expected_outcome():
    names = {grade.student_name(p) for p in SUBMISSIONS.glob("*.ipynb")}
    assert names == set(EXPECTED)


@pytest.mark.parametrize("path, student", [
    ("subs/alice__01_chat_templates.ipynb", "alice"),
    ("subs/bob/01_chat_templates.ipynb", "bob"),
    ("subs/bob/Copy of 01_chat_templates.ipynb", "bob"),
    ("subs/carol.ipynb", "carol"),
])
def test_student_name(path, student):
    assert grade.student_name(Path(path)) == student


@pytest.mark.parametrize("content, words", [
    (b"", "empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not UTF-8"),
    (b'{"cells": [', "not valid JSON"),
    (b'["a", "list"]', "not a Jupyter notebook"),
    (b'{"cells": "none"}', "not a Jupyter notebook"),
])
def test_malformed_files_are_named(tmp_path, content, words):
    path = tmp_path / "x__99_grading_fixture.ipynb"
    path.write_bytes(content)
    sub = grade.read_submission(path)
    assert sub.problem and words in sub.problem
    assert path.read_bytes() == content


def test_tolerant_reading_of_odd_but_valid_notebooks(tmp_path):
    path = tmp_path / "odd.ipynb"
    path.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 0, "metadata": [], "cells": [
        {"cell_type": "code", "source": ["def f():\n", "    return 1"], "metadata": {"id": "colab1"}},
        "not a cell", {"cell_type": "markdown"}]}))
    sub = grade.read_submission(path)
    assert sub.problem is None and sub.metadata == {}
    assert [(c.cell_type, c.source, c.id) for c in sub.cells] == [
        ("code", "def f():\n    return 1", "colab1"), ("markdown", "", None)]


def test_assignment_from_argument_metadata_exercises_or_file_name(tmp_path):
    catalog = grade.Catalog(FIXTURE.parent)
    assert catalog.resolve("99") == catalog.resolve("99_grading_fixture") == STEM
    assert catalog.resolve("7") is None
    perfect = grade.read_submission(SUBMISSIONS / f"perfect__{STEM}.ipynb")
    assert grade.detect_assignment(perfect, catalog, None) == (STEM, None)
    colab = grade.read_submission(SUBMISSIONS / f"colab__{STEM}.ipynb")  # only the file name tells
    assert grade.detect_assignment(colab, catalog, None) == (STEM, None)
    renamed = tmp_path / "dave.ipynb"
    renamed.write_bytes((SUBMISSIONS / f"colab__{STEM}.ipynb").read_bytes())
    stem, problem = grade.detect_assignment(grade.read_submission(renamed), catalog, None)
    assert stem is None and "--assignment" in problem
    assert grade.detect_assignment(grade.read_submission(renamed), catalog, STEM) == (STEM, None)
    other = grade.read_submission(SUBMISSIONS / f"otherassignment__{STEM}.ipynb")
    stem, problem = grade.detect_assignment(other, catalog, STEM)
    assert stem == STEM and "01_chat_templates" in problem


def test_points_come_from_the_solution_with_a_default(tmp_path):
    nb = nbformat.read(FIXTURE, as_version=4)
    assignment = grade.load_assignment(FIXTURE)
    assert {e.id: e.points for e in assignment.exercises.values()} == {"count_words": 1, "softmax": 2}
    assert assignment.exercises["count_words"].forbid == ["__main__:count_words_reference"]
    cell = next(c for c in nb.cells if c.metadata.get("course", {}).get("exercise") == "count_words")
    del cell.metadata["course"]["points"]
    nbformat.write(nb, tmp_path / "98_x.ipynb")
    assert grade.load_assignment(tmp_path / "98_x.ipynb").exercises["count_words"].points == 1
    cell.metadata["course"]["points"] = "two"
    nbformat.write(nb, tmp_path / "98_x.ipynb")
    with pytest.raises(ValueError, match="points"):
        grade.load_assignment(tmp_path / "98_x.ipynb")
    cell.metadata["course"]["points"] = 1
    cell.metadata["course"]["forbid"] = ["pig_latin_word"]  # no module: the grader could not find it
    nbformat.write(nb, tmp_path / "98_x.ipynb")
    with pytest.raises(ValueError, match="module:qualname"):
        grade.load_assignment(tmp_path / "98_x.ipynb")


def _order(steps):
    return [(s.kind, s.block.key if s.block else s.exercise) for s in steps if s.kind in ("exercise", "hidden")]


def test_the_plan_is_the_solution_with_the_students_exercise_cells():
    assignment = grade.load_assignment(FIXTURE)
    reordered = grade.read_submission(SUBMISSIONS / f"reordered__{STEM}.ipynb")
    steps = grade.plan(assignment, reordered.cells, "/nowhere/probes.jsonl")
    # the solution's order, whatever the student's: each exercise, then its hidden tests
    assert _order(steps) == [("exercise", "count_words"), ("hidden", "count_words"),
                             ("exercise", "softmax"), ("hidden", "softmax")]
    mine = {s.exercise: s.student for s in steps if s.kind == "exercise"}
    assert mine["softmax"] is grade.find_exercise(reordered.cells, assignment.exercises["softmax"])
    solution_sources = {c.source for c in assignment.cells}
    # every other step is the solution's own code or the grader's: none of the student's other cells
    others = [s for s in steps if s.kind == "solution"]
    assert others and all(s.source in solution_sources for s in others)
    assert all(s.student.source in s.source or repr(s.student.source) in s.source
               for s in steps if s.kind == "exercise")
    hidden = next(s.source for s in steps if s.block)
    assert "/nowhere/probes.jsonl" in hidden and "cu.probe(" in hidden
    # the setup names the exercises' forbidden callables to the in-kernel monitor
    assert "count_words_reference" in steps[0].source and steps[0].kind == "setup"
    # The reference run: the solution's own hidden tests are cut out of its cells, then injected.
    assert not any("BEGIN HIDDEN" in c.source or "cu.probe(" in c.source for c in assignment.cells)
    reference = grade.plan(assignment, None, "p")
    assert _order(reference) == _order(steps)


def test_a_deleted_exercise_cell_is_not_run_and_its_hidden_tests_still_are(tmp_path):
    assignment = grade.load_assignment(FIXTURE)
    nb = nbformat.read(SUBMISSIONS / f"perfect__{STEM}.ipynb", as_version=4)
    nb.cells = [c for c in nb.cells if c.get("id") not in ("ex1-check", "ex2")]
    steps = grade.plan(assignment, _cells(nb, tmp_path), "p")
    assert _order(steps) == [("exercise", "count_words"), ("hidden", "count_words"), ("hidden", "softmax")]


def test_install_lines_are_skipped():
    source = "%%capture\n!pip install -q trl==1.0\nif True:\n    %pip install x\nprint('!pip is fine here')"
    out = planning.neutralise_installs(source)
    assert "install -q" not in out and "%pip install x" not in out
    assert "    pass  # skipped by the grader" in out and "print('!pip is fine here')" in out


def test_kernel_environment_names_no_grader_or_solution_path(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_PROBE_FILE", "/somewhere/probes.jsonl")
    monkeypatch.setenv("MY_SOLUTIONS", str(FIXTURE.parent) + ":/x")
    monkeypatch.setenv("OLDPWD", str(ROOT))
    env = grade.kernel_env(str(tmp_path), 1, [str(FIXTURE.parent)])
    assert "COURSE_PROBE_FILE" not in env and "MY_SOLUTIONS" not in env and "OLDPWD" not in env
    assert env["COURSE_SMOKE"] == "1" and env["TQDM_DISABLE"] == "1" and env["PWD"] == str(tmp_path)


def test_only_matching_records_score_and_every_record_must_match():
    assignment = grade.load_assignment(FIXTURE)
    ex = assignment.exercises["count_words"]
    ref = grade.Reference({("count_words", "a"): {"exercise": "count_words", "name": "a", "value": 3},
                           ("count_words", "b"): {"exercise": "count_words", "name": "b", "value": 0}},
                          {("count_words", "a"): None, ("count_words", "b"): None}, None)
    sub = grade.Submission(Path("s.ipynb"), "s")
    cell = grade.Cell(0, "code", "", "ex1", {"exercise": "count_words"})

    def row(records):
        run = grade.Run([grade.Step("", "exercise", cell=cell, student=cell, exercise="count_words")],
                        {0: {"status": "ok", "ename": "", "evalue": "", "probe_lines": 9}},
                        "done", None, "", None, records, None, 0)
        return scoring._exercise_row(ex, sub, STEM, run, ref, cell, grade.Settings())

    a3 = {"exercise": "count_words", "name": "a", "value": 3}
    b0 = {"exercise": "count_words", "name": "b", "value": 0}
    assert (row([a3, b0]).status, row([a3, b0]).points) == ("ok", 1)
    guesses = [dict(b0, value=v) for v in (0, 1, 2)]  # many guesses for one hidden test
    assert (row([a3, *guesses]).status, row([a3, *guesses]).points) == ("partial", 0.5)
    assert row([a3, None, {"exercise": "count_words", "name": "zzz", "value": 1}]).points == 0.5
    assert row([]).status == "wrong"


# ------------------------------------------------------------------- hostile submissions (kernels)
@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    out = tmp_path_factory.mktemp("grades")
    before = _digests(SUBMISSIONS)
    proc = subprocess.run(
        [sys.executable, "-m", "course_utils.grade", str(SUBMISSIONS), "--assignment", "99",
         "--solutions", str(FIXTURE.parent), "--out", str(out), "--jobs", "2", "--timeout", "90",
         "--cell-timeout", "10", "--max-output-mb", "0.5"],
        capture_output=True, text=True, cwd=ROOT, timeout=900)
    after = _digests(SUBMISSIONS)
    with open(out / "gradebook.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return proc, rows, out, before, after


@pytest.mark.xdist_group("graded")
def test_no_submission_file_is_modified(graded):
    _, _, _, before, after = graded
    assert before == after and len(before) == len(EXPECTED) + 1


@pytest.mark.xdist_group("graded")
def test_cli_exit_code_summary_and_progress_bar(graded):
    proc, rows, out, _, _ = graded
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"Graded {len(EXPECTED)} submission(s)" in proc.stdout
    assert "grading" in proc.stderr and "notebook" in proc.stderr  # the tqdm bar, on stderr


@pytest.mark.xdist_group("graded")
@pytest.mark.parametrize("student", sorted(EXPECTED))
def test_each_submission_gets_its_expected_statuses(graded, student):
    _, rows, _, _, _ = graded
    total_status, total_points, exercises = EXPECTED[student]
    mine = {r["exercise"]: r for r in rows if r["student"] == student}
    assert set(mine) == {"count_words", "softmax", "TOTAL"}, mine
    got = {e: (r["status"], float(r["points"])) for e, r in mine.items() if e != "TOTAL"}
    assert got == {e: (s, float(p)) for e, (s, p) in exercises.items()}, {e: r["reason"] for e, r in mine.items()}
    assert (mine["TOTAL"]["status"], float(mine["TOTAL"]["points"])) == (total_status, total_points), \
        mine["TOTAL"]["reason"]
    assert float(mine["TOTAL"]["max_points"]) == 3 and all(r["reason"] for r in mine.values())
    assert all(r["assignment"] == STEM for r in mine.values())


@pytest.mark.xdist_group("graded")
def test_reasons_name_the_cell_and_the_exception(graded):
    _, rows, _, _, _ = graded
    reason = {(r["student"], r["exercise"]): r["reason"] for r in rows}
    assert "exercise cell 'softmax'" in reason["error", "TOTAL"] and "RuntimeError" in reason["error", "TOTAL"]
    assert "RuntimeError: I give up" in reason["error", "softmax"]
    assert "SystemExit" in reason["sysexit", "TOTAL"]
    assert "kernel died in your exercise cell 'softmax'" in reason["osexit", "TOTAL"]
    assert "could not be interrupted" in reason["stubborn", "TOTAL"]
    assert "OverflowError" in reason["partial", "softmax"]
    assert "01_chat_templates" in reason["otherassignment", "TOTAL"]
    assert "not valid JSON" in reason["truncated", "TOTAL"]


@pytest.mark.xdist_group("graded")
def test_gradebook_columns_and_feedback_files(graded):
    _, rows, out, _, _ = graded
    with open(out / "gradebook.csv", encoding="utf-8") as fh:
        assert next(csv.reader(fh)) == list(grade.COLUMNS)
    for student in EXPECTED:
        text = (out / "feedback" / f"{student}__{STEM}.md").read_text(encoding="utf-8")
        assert "Score:" in text and len(text) < 3000
        if EXPECTED[student][0] not in ("malformed", "wrong-assignment"):
            assert "count_words" in text and "softmax" in text
    partial = (out / "feedback" / f"partial__{STEM}.md").read_text(encoding="utf-8")
    assert "2.33 / 3" in partial and "passed 2 of 3 hidden tests" in partial
    executed = nbformat.read(out / "executed" / f"flood__{STEM}.ipynb", as_version=4)
    assert not any("cu.probe(" in c.source for c in executed.cells)  # hidden tests not handed out
    assert "[the grader dropped the rest of the output]" in json.dumps(executed.cells)


def test_cli_rejects_an_unknown_assignment(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "course_utils.grade", str(SUBMISSIONS / f"stub__{STEM}.ipynb"),
                           "--assignment", "42", "--solutions", str(FIXTURE.parent), "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "unknown assignment" in proc.stderr


# ------------------------------------------------------------------ the in-kernel monitor (no kernel)
def test_the_monitor_counts_the_students_calls_of_a_forbidden_callable_only(tmp_path):
    import importlib
    import json as json_module
    import sys as sys_module

    from course_utils.grade import monitor

    monitor = importlib.reload(monitor)  # fresh module state
    probe = tmp_path / "probes.jsonl"
    monitor.start({"ex": ["json:dumps"], "other": ["json:loads"]}, str(probe))
    student = {"json": json_module, "types": __import__("types")}
    exec(compile("def answer(x):\n    return json.dumps(x)\n"
                 "copy = types.FunctionType(json.dumps.__code__, json.dumps.__globals__)\n"
                 "def uses_other(s):\n    return json.loads(s)\n", "<exercise ex>", "exec"), student)

    def records():
        return [json.loads(line) for line in probe.read_text().splitlines()] if probe.exists() else []

    monitor.watch("ex")
    try:
        json_module.dumps([1])  # the notebook's own call: not counted
        student["uses_other"]("[1]")  # forbidden for another exercise only
        assert records() == []
        student["answer"]([1])
    finally:
        monitor.unwatch("ex")
    assert records() == [{"exercise": "ex", "name": monitor.USES_REFERENCE, "value": "json:dumps"}]
    assert sys_module.getprofile() is None  # nothing left watching once no exercise is

    probe.unlink()
    monitor = importlib.reload(monitor)
    monitor.start({"ex": ["json:dumps"]}, str(probe))
    student["answer"]([1])  # outside a watch: not counted
    monitor.watch("ex")
    sys_module.setprofile(None)  # the student's code switching the hook off ...
    monitor.unwatch("ex")
    assert [r["value"] for r in records()] == ["sys.setprofile (the grader's call monitor was switched off)"]


def test_the_monitor_undoes_what_an_exercise_patched(monkeypatch):
    import builtins

    import course_utils as cu
    from course_utils.grade import monitor

    before = monitor._snapshot()
    real_probe, real_len = cu.probe, builtins.len
    cu.probe = lambda *a, **k: None
    builtins.len = lambda x: 0
    builtins.planted_by_student = True
    try:
        changed = monitor._restore(before)
        undone = (cu.probe is real_probe, builtins.len is real_len, hasattr(builtins, "planted_by_student"))
    finally:
        cu.probe, builtins.len = real_probe, real_len
        builtins.__dict__.pop("planted_by_student", None)
    assert undone == (True, True, False)
    assert {"course_utils.probe", "builtins.len", "builtins.planted_by_student"} <= set(changed)
