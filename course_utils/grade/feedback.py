"""The feedback note each student gets: per exercise what passed and what to fix."""
from __future__ import annotations

from .process import Settings
from .scoring import Row, _fmt

ICONS = {"ok": "✅", "partial": "⚠️", "manual": "📝"}
STUDENT_WORDS = {
    "timeout": "your notebook ran too long",
    "kernel-died": "the Python kernel stopped",
    "output-too-large": "your notebook printed a lot",
    "error": "a cell raised an error",
    "missing-exercise": "an exercise cell is missing",
    "uses-reference": "an answer called the reference it should replace",
}


def feedback(rows: list[Row], settings: Settings) -> str:
    """A short Markdown note for the student: per exercise what passed and what to fix."""
    total = rows[-1]
    lines = [f"# Feedback: {total.assignment or 'unknown assignment'} ({total.student})", "",
             f"**Score: {_fmt(total.points)} / {_fmt(total.max_points)} points**", ""]
    exercise_rows = rows[:-1]
    if total.status in ("malformed", "refused", "wrong-assignment", "unknown-assignment"):
        lines += [f"Your submission could not be graded: {total.reason}.", ""]
    else:
        for r in exercise_rows:
            lines.append(f"- {ICONS.get(r.status, '❌')} **{r.exercise}** ({_fmt(r.points)} / "
                         f"{_fmt(r.max_points)}): {r.reason}.")
        if total.status in STUDENT_WORDS:
            lines += ["", f"About the notebook as a whole ({STUDENT_WORDS[total.status]}): {total.reason}."]
    lines += ["", "How it was graded: the course's own notebook ran from top to bottom in a fresh Python "
              "kernel, in reduced mode (small data, on a CPU, time limit "
              f"{settings.timeout:g} s), with your exercise cells in place of the solutions; only those "
              "cells of yours ran, so keep everything an exercise needs inside its cell. Hidden tests then "
              "called your code and compared its results with the solution's. Before you submit, restart "
              "the kernel and run all cells: each self-check should pass.", ""]
    return "\n".join(lines)


