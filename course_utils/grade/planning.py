"""What a graded kernel runs: the instructor's notebook, with the student's exercise cells in place
of the solutions, and the hidden tests right after the cell they belong to.

Only the student's exercise cells run; the rest of their notebook (helpers they redefined, cells
they added, patches to the checks) never reaches the kernel. The reference run is the same plan
with the solution's own exercise cells, so an honest submission runs exactly what the reference
ran.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..checks import PROBE_FILE_VAR
from .solutions import Assignment, Cell, Exercise, HiddenBlock

INSTALL_LINE = re.compile(r"^(\s*)[%!]\s*(pip|pip3|conda|mamba|uv|apt|apt-get)\b.*$", re.MULTILINE)
MONITOR = "__course_monitor__"


@dataclass
class Step:
    source: str
    kind: str  # setup | solution (an instructor cell) | exercise (the student's) | hidden | watch
    cell: Cell | None = None  # the solution cell the step stands for
    student: Cell | None = None  # the student's cell (exercise steps)
    block: HiddenBlock | None = None  # hidden tests
    exercise: str | None = None


def find_exercise(cells: list[Cell], ex: Exercise) -> Cell | None:
    """The student's cell for an exercise: by metadata, then cell id, then its ``def`` line."""
    for match in (lambda c: c.course.get("exercise") == ex.id,
                  lambda c: ex.cell_id is not None and c.id == ex.cell_id,
                  lambda c: ex.signature is not None and c.cell_type == "code"
                  and ex.signature in (line.strip() for line in c.source.splitlines())):
        found = [c for c in cells if match(c)]
        if found:
            return found[-1]
    return None


def neutralise_installs(source: str) -> str:
    return INSTALL_LINE.sub(lambda m: f"{m.group(1)}pass  # skipped by the grader: package install",
                            source)


def plan(assignment: Assignment, student_cells: list[Cell] | None, probe_path: str) -> list[Step]:
    """The steps of one graded run; ``student_cells=None`` is the reference (the solution itself)."""
    cells = assignment.cells if student_cells is None else student_cells
    forbid = {ex.id: ex.forbid for ex in assignment.exercises.values() if ex.forbid}
    steps = [Step(f"import course_utils.grade.monitor as {MONITOR}\n{MONITOR}.start({forbid!r}, {probe_path!r})\n",
                  "setup")]
    # the probe file is named to the kernel only when hidden tests first run
    hidden = f"__import__('os').environ[{PROBE_FILE_VAR!r}] = {probe_path!r}\nimport course_utils as cu\n"
    blocks: dict[int | None, list[HiddenBlock]] = {}
    for block in assignment.hidden:
        blocks.setdefault(block.index, []).append(block)
    for cell in assignment.cells:
        if cell.cell_type != "code":
            continue
        ex_id = cell.course.get("exercise")
        check = cell.course.get("check")
        if ex_id is not None:
            mine = find_exercise(cells, assignment.exercises[str(ex_id)])
            if mine is not None and mine.cell_type == "code":
                source = neutralise_installs(mine.source)
                steps.append(Step(f"{MONITOR}.run_exercise({str(ex_id)!r}, {source!r})", "exercise",
                                  cell=cell, student=mine, exercise=str(ex_id)))
        else:
            if check is not None:
                steps.append(Step(f"{MONITOR}.watch({str(check)!r})", "watch", cell=cell, exercise=str(check)))
            steps.append(Step(neutralise_installs(cell.source), "solution", cell=cell,
                              exercise=str(check) if check is not None else None))
        for block in blocks.get(cell.index, []):
            alone = check is None and block.exercise is not None  # hidden tests outside a check cell
            if alone:
                steps.append(Step(f"{MONITOR}.watch({block.exercise!r})", "watch", cell=cell, exercise=block.exercise))
            steps.append(Step(hidden + block.code, "hidden", cell=cell, block=block,
                              exercise=block.exercise))
            if alone:
                steps.append(Step(f"{MONITOR}.unwatch({block.exercise!r})", "watch", cell=cell,
                                  exercise=block.exercise))
        if check is not None:
            steps.append(Step(f"{MONITOR}.unwatch({str(check)!r})", "watch", cell=cell, exercise=str(check)))
    return steps
