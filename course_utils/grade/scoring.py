"""Scoring: the student's probe records against the reference's, per exercise and in total."""
from __future__ import annotations

from dataclasses import dataclass

from ..checks import probe_matches
from .monitor import USES_REFERENCE
from .planning import find_exercise
from .process import Run, Settings
from .solutions import Assignment, Cell, Exercise
from .submissions import Submission

# What each status means; the README's instructor section lists the same.
STATUSES = {
    "ok": "every hidden test of the exercise passed",
    "partial": "some hidden tests passed (points in proportion)",
    "wrong": "the code ran but gave different results from the solution",
    "not-implemented": "the exercise still raises NotImplementedError",
    "uses-reference": "the answer called the reference it was asked to write (named in the reason): 0 points",
    "error": "a cell raised an exception (the cell and the exception are named)",
    "missing-exercise": "the exercise cell was deleted (or lost its metadata and signature)",
    "timeout": "a cell or the whole notebook ran over its time limit and was stopped",
    "kernel-died": "the Python kernel died (os._exit, a crash, a sandbox limit such as memory)",
    "output-too-large": "the notebook printed more than the output limit; the rest was dropped",
    "refused": "the submission is a link, a pipe, a device or too big: never opened",
    "malformed": "the file is not a readable notebook (bad JSON, not UTF-8, not a notebook)",
    "wrong-assignment": "the notebook belongs to another assignment",
    "unknown-assignment": "no assignment given and none found in the metadata or file name",
    "manual": "no hidden tests exist for this exercise (e.g. a written answer): grade by hand",
    "reference-failed": "the solution notebook itself failed in reduced mode: fix it and re-grade",
    "grader-error": "the grader could not run the notebook (details in the reason)",
}
TOTAL = "TOTAL"
COLUMNS = ("student", "assignment", "exercise", "points", "max_points", "status", "reason", "file")
EXPECTED_ERRORS = {"CheckFailed", "NotImplementedError"}  # unfinished exercises, said per exercise


@dataclass
class Row:
    student: str
    assignment: str
    exercise: str
    points: float
    max_points: float
    status: str
    reason: str
    file: str

    def csv(self) -> list[str]:
        return [self.student, self.assignment, self.exercise, _fmt(self.points),
                _fmt(self.max_points), self.status, self.reason, self.file]


def _fmt(x: float) -> str:
    return f"{round(x, 2):g}"


@dataclass
class Reference:
    records: dict[tuple[str, str], dict]
    block_of: dict[tuple[str, str], object]  # probe -> the hidden block that records it
    problem: str | None  # why the solution's run failed as a whole
    uses: dict[str, str] | None = None  # exercise -> a forbidden callable the solution itself called


def _snippet(source: str) -> str:
    """The line that says most about a cell: the first that is not an import or a comment."""
    lines = [line.strip() for line in source.splitlines() if line.strip()]
    telling = [t for t in lines if not t.startswith(("#", "import ", "from "))] or lines or [""]
    text = telling[0]
    return text if len(text) <= 50 else text[:47] + "..."


def describe(cell: Cell | None) -> str:
    if cell is None:
        return "the grader's hidden tests"
    if "exercise" in cell.course:
        return f"your exercise cell '{cell.course['exercise']}'"
    if "check" in cell.course:
        return f"the self-check cell of '{cell.course['check']}'"
    return f"cell {cell.index + 1} (`{_snippet(cell.source)}`)"


def _step_cell(run: Run, step: int | None) -> str:
    if step is None or step >= len(run.steps):
        return "before the first cell"
    s = run.steps[step]
    if s.kind == "exercise":
        return f"your exercise cell '{s.exercise}'"
    if s.kind == "hidden":
        return f"the hidden tests of '{s.block.key}'"
    if s.kind == "solution":
        what = f"the self-check of '{s.exercise}'" if s.exercise else f"`{_snippet(s.cell.source)}`"
        return f"cell {s.cell.index + 1} of the notebook ({what})"
    return "the grader's own setup"


def uses_reference(run: Run) -> dict[str, str]:
    """Exercise -> the first forbidden callable its code called (the monitor's records)."""
    found: dict[str, str] = {}
    for rec in run.probes:
        if rec and rec["name"] == USES_REFERENCE:
            found.setdefault(rec["exercise"], str(rec.get("value", ""))[:200])
    return found


def _end_reason(run: Run, settings: Settings) -> str:
    where = _step_cell(run, run.end_step)
    if run.end == "timeout":
        return (f"the notebook ran over its {settings.timeout:g} s limit; it was stopped in {where}"
                " (look for an endless loop or a very slow cell)")
    if run.end == "stuck":
        return (f"{where} ran over the {settings.cell_timeout:g} s cell limit and could not be "
                "interrupted, so the notebook was stopped there (look for an endless loop)")
    if run.end == "kernel-died":
        return (f"the Python kernel died in {where} (os._exit(), killing a process, a crash, or "
                "a sandbox limit such as memory or file size); the cells after it did not run")
    return f"the grader could not run the notebook: {run.error or 'unknown error'}"


def reference_from(run: Run, assignment: Assignment, settings: Settings) -> Reference:
    records, block_of, problems = {}, {}, []
    blocks = [i for i, s in enumerate(run.steps) if s.block is not None]
    start = 0
    for i, step in enumerate(run.steps):
        if i not in run.done:
            continue
        lines = run.done[i]["probe_lines"]
        if step.block is not None:
            for rec in run.probes[start:lines]:
                if rec and rec["name"] != USES_REFERENCE:
                    key = (rec["exercise"], rec["name"])
                    records[key] = rec
                    block_of[key] = step.block
            if run.done[i]["status"] != "ok":
                problems.append(f"its hidden tests '{step.block.key}' raised "
                                f"{run.done[i]['ename']}: {run.done[i]['evalue']}")
        elif run.done[i]["status"] != "ok":
            problems.append(f"{_step_cell(run, i)} raised {run.done[i]['ename']}: {run.done[i]['evalue'][:300]}")
        start = lines
    if run.end != "done":
        problems.append(_end_reason(run, settings))
    missing = [b for b in blocks if b not in run.done]
    if missing and run.end == "done":
        problems.append("some hidden tests did not run")
    uses = uses_reference(run)
    if uses:
        problems.append("the solution calls what its exercise forbids: "
                        + ", ".join(f"{ex} calls {spec}" for ex, spec in uses.items()))
    return Reference(records, block_of, "; ".join(problems) or None, uses)


def _exercise_row(ex: Exercise, sub: Submission, stem: str, run: Run, ref: Reference,
                  located: Cell | None, settings: Settings) -> Row:
    def row(points, status, reason):
        return Row(sub.student, stem, ex.id, points, ex.points, status, reason, str(sub.path))

    names = [k for k in ref.records if k[0] == ex.id]
    if ex.markdown:
        return row(0, "manual", "a written answer: your instructor grades it by hand")
    if ref.uses and ex.id in ref.uses:
        return row(0, "reference-failed", f"the solution itself calls {ref.uses[ex.id]}, which the exercise forbids")
    called = uses_reference(run).get(ex.id)
    if called and located is not None:
        return row(0, "uses-reference", f"your code called {called}, the reference this exercise asks you to "
                   "write yourself: write it without that call")
    if not names:
        if ref.problem:
            return row(0, "reference-failed", f"the solution notebook failed: {ref.problem}")
        return row(0, "manual", "the solution has no hidden tests for this exercise: graded by hand")
    bad_ref = [ref.records[k] for k in names if "error" in ref.records[k]]
    if bad_ref:
        return row(0, "reference-failed", f"the solution's own hidden test failed: {bad_ref[0]['error']}")
    mine: dict[tuple, list] = {}
    for rec in run.probes:
        if rec and rec["name"] != USES_REFERENCE and (rec["exercise"], rec["name"]) in ref.records:
            mine.setdefault((rec["exercise"], rec["name"]), []).append(rec)
    failures = [f for f in (_probe_failure(key, mine.get(key, []), ref, run) for key in names) if f]
    total, passed = len(names), len(names) - len(failures)
    points = round(ex.points * passed / total, 2)
    if not failures:
        return row(points, "ok", f"passed all {total} hidden tests")
    kinds = {kind for _, kind, _ in failures}
    listed = _listed(failures)
    if passed:
        return row(points, "partial", f"passed {passed} of {total} hidden tests; failed {listed}")
    if located is None:
        return row(0, "missing-exercise", "the exercise cell is missing from your notebook (deleted, or "
                   "its metadata removed): take a fresh copy and paste your code into it")
    if "not-run" in kinds:
        status = "timeout" if run.end == "stuck" else run.end
        why = {"kernel-died": "the Python kernel died", "grader-error": "the grader failed"}.get(
            run.end, "it ran out of time")
        return row(0, status, f"not graded: the notebook stopped before this exercise's hidden tests "
                   f"ran ({why} in {_step_cell(run, run.end_step)})")
    if "timeout" in kinds:
        return row(0, "timeout", f"not graded: {listed}")
    if kinds == {"not-implemented"}:
        return row(0, "not-implemented", "not done yet: the exercise still raises NotImplementedError")
    own = next((run.done.get(i) for i, s in enumerate(run.steps) if s.kind == "exercise" and s.exercise == ex.id),
               None)
    if own and own["status"] == "error" and own["ename"] not in EXPECTED_ERRORS:
        return row(0, "error", f"{describe(located)} raised {own['ename']}: {own['evalue']}; "
                   f"then {listed}")
    if "error" in kinds:
        return row(0, "error", listed)
    return row(0, "wrong", f"all {total} hidden tests gave a different result from the solution: "
               f"{listed}. Run the self-check below the exercise: it says what differs")


def _listed(failures) -> str:
    """'a', 'b': why; 'c': other why -- hidden tests that failed for the same reason together."""
    groups: dict[str, list[str]] = {}
    for name, _, why in failures:
        groups.setdefault(why, []).append(f"'{name}'")
    parts = [f"{', '.join(names)}: {why}" for why, names in groups.items()]
    return "; ".join(parts[:3]) + ("; ..." if len(parts) > 3 else "")


def _probe_failure(key, recs, ref: Reference, run: Run):
    """``None`` when every record of this hidden test matches, else ``(name, kind, why)``."""
    name = key[1]
    if not recs:
        block = ref.block_of.get(key)
        step = next((i for i, s in enumerate(run.steps) if block is not None and s.block is block), None)
        done = run.done.get(step) if step is not None else None
        if done is None and run.end != "done":
            return name, "not-run", "not run"
        if done is None:
            return name, "wrong", "no result was recorded"
        if done["status"] == "timeout":
            return name, "timeout", "the hidden tests ran over the cell time limit"
        if done["status"] == "error":
            return name, "error", f"the hidden tests stopped with {done['ename']}: {done['evalue']}"
        return name, "wrong", "no result was recorded (did the notebook replace course_utils' probe?)"
    for rec in recs:
        try:
            ok, why = probe_matches(rec, ref.records[key])
        except Exception as err:  # noqa: BLE001 - a value that can't be compared is a failure
            ok, why = False, f"could not compare ({type(err).__name__})"
        if ok:
            continue
        if "error" not in rec:
            if not why or why.startswith("a different result"):
                why = "a different result from the solution's"
            return name, "wrong", why
        if rec["error"] == "not implemented":
            return name, "not-implemented", "not implemented yet"
        return name, "error", f"your code raised {str(rec['error'])[:300]}"
    return None


def score(sub: Submission, assignment: Assignment, run: Run, ref: Reference, settings: Settings) -> list[Row]:
    rows = [_exercise_row(ex, sub, assignment.stem, run, ref, find_exercise(sub.cells, ex), settings)
            for ex in assignment.exercises.values()]
    auto = [r for r in rows if r.status != "manual"]
    errors = [(i, d) for i, d in sorted(run.done.items()) if run.steps[i].kind == "exercise"
              and d["status"] == "error" and d["ename"] not in EXPECTED_ERRORS]
    after = [(i, d) for i, d in sorted(run.done.items()) if run.steps[i].kind == "solution"
             and run.steps[i].exercise is None and d["status"] == "error"]
    timeouts = [i for i, d in sorted(run.done.items()) if d["status"] == "timeout"]
    statuses = {r.status for r in auto}
    if "reference-failed" in statuses:
        status, reason = "reference-failed", "the solution notebook failed: re-grade after fixing it"
    elif "uses-reference" in statuses:
        status = "uses-reference"
        reason = "; ".join(f"'{r.exercise}': {r.reason}" for r in auto if r.status == "uses-reference")
    elif run.end != "done":
        status = "timeout" if run.end == "stuck" else run.end
        reason = _end_reason(run, settings)
    elif timeouts:
        status = "timeout"
        reason = (f"{_step_cell(run, timeouts[0])} ran over the {settings.cell_timeout:g} s cell limit "
                  "and was interrupted; the notebook went on after it")
    elif run.truncated_at is not None:
        status = "output-too-large"
        reason = (f"the notebook printed more than {settings.max_output / 2**20:g} MB (from "
                  f"{_step_cell(run, run.truncated_at)} on); the rest of the output was dropped, "
                  "grading went on")
    elif errors:
        i, d = errors[0]
        status = "error"
        more = f" ({len(errors) - 1} more cell(s) raised errors too)" if len(errors) > 1 else ""
        hint = " (sys.exit() does not stop a notebook; remove it)" if d["ename"] == "SystemExit" else ""
        reason = f"{_step_cell(run, i)} raised {d['ename']}: {d['evalue']}{hint}{more}"
    elif "missing-exercise" in statuses:
        status, reason = "missing-exercise", "some exercise cells are missing"
    elif statuses <= {"ok"}:
        status, reason = "ok", "all exercises passed"
    elif len(statuses) == 1:
        status, reason = statuses.pop(), "no exercise passed"
    else:
        status, reason = "partial", f"{sum(r.status == 'ok' for r in auto)} of {len(auto)} exercises passed"
    if after and status not in ("reference-failed", "timeout", "kernel-died", "grader-error"):
        i, d = after[0]
        reason += (f"; then {_step_cell(run, i)} failed with {d['ename']}: {d['evalue'][:200]} (it uses what your "
                   "exercises define)")
    manual = len(rows) - len(auto)
    if manual:
        reason += f"; {manual} exercise(s) to grade by hand"
    rows.append(Row(sub.student, assignment.stem, TOTAL, sum(r.points for r in rows),
                    sum(r.max_points for r in rows), status, reason, str(sub.path)))
    return rows


def unrunnable_rows(sub: Submission, assignment: Assignment | None, status: str, reason: str) -> list[Row]:
    stem = assignment.stem if assignment else ""
    exercises = list(assignment.exercises.values()) if assignment else []
    rows = [Row(sub.student, stem, ex.id, 0, ex.points, status, reason, str(sub.path)) for ex in exercises]
    rows.append(Row(sub.student, stem, TOTAL, 0, sum(ex.points for ex in exercises), status, reason,
                    str(sub.path)))
    return rows


