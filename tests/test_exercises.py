"""Every solution notebook runs top to bottom in reduced mode, and every exercise's self-check
fails on the student stub and passes on the solution.

One kernel per solution notebook runs every cell in order; no cell may raise. At each exercise
it runs the solution and its check (which must pass), then the student's stub of the exercise
(after deleting what the solution defined) and the check again (which must fail with a
CheckFailed), then the solution once more so that later cells see a working definition.

This is the suite's one execution of each solution notebook (nbval's `pytest solutions/...`
would be a second one: CI does not run it; authors may, for per-cell reports).
"""
import ast
import os

import nbformat
import pytest

from course_utils import build
from course_utils.kernels import Kernel

from pathlib import Path

SOLUTIONS = sorted((Path(__file__).resolve().parent.parent / "solutions").glob("*.ipynb"))

CELL_TIMEOUT = 900


def _course(cell):
    return cell.get("metadata", {}).get("course", {})


def _bound_names(source: str) -> list[str]:
    """Top-level names a cell binds (assignments, defs, classes, imports)."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return sorted(names)


def _exercises(nb):
    """(exercise cell index, check cell index) pairs, for exercises that have a check cell."""
    pairs = []
    for i, cell in enumerate(nb.cells):
        ex = _course(cell).get("exercise")
        if ex and cell.cell_type == "code":
            checks = [j for j in range(i + 1, len(nb.cells)) if _course(nb.cells[j]).get("check") == ex]
            pairs.append((i, checks[0] if checks else None))
    return pairs


def _notebooks_with_exercises():
    return [p for p in SOLUTIONS if any(c for _, c in _exercises(nbformat.read(p, as_version=4)))]


def test_every_notebook_has_graded_exercises():
    for path in SOLUTIONS:
        nb = nbformat.read(path, as_version=4)
        kinds = [_course(c).get("difficulty") for c in nb.cells if _course(c).get("exercise")]
        assert kinds, f"{path.name} has no exercise"
        assert set(kinds) <= {"easy", "medium", "hard"}, f"{path.name}: difficulty must be easy/medium/hard"
        for i, check in _exercises(nb):
            assert check is not None, f"{path.name}: the exercise in cell {i} has no self-check cell after it"


def _param(path):
    # 06 loads the adapter 03 trained (COURSE_OUTPUTS): on the same xdist worker, 03 runs first
    marks = [pytest.mark.xdist_group("outputs_03_06")] if path.stem[:3] in ("03_", "06_") else []
    return pytest.param(path, id=path.stem, marks=marks)


@pytest.mark.parametrize("path", [_param(p) for p in _notebooks_with_exercises()])
def test_checks_fail_on_stub_and_pass_on_solution(path):
    nb = nbformat.read(path, as_version=4)
    pairs = [(i, c) for i, c in _exercises(nb) if c is not None]
    outcomes = {}
    with Kernel(cwd=str(path.parent), env=dict(os.environ), cell_timeout=CELL_TIMEOUT) as kernel:
        def run(source):
            result = kernel.run(source)
            return None if result.status == "ok" else result

        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            err = run(cell.source)
            assert err is None, f"{path.name} cell {i} failed on the solution:\n{str(err)[-1500:]}"
            ex = _course(cell).get("check")
            if not ex:
                continue
            ex_index = next(k for k, c in pairs if c == i)
            solution = nb.cells[ex_index].source
            stub = build.student_source(solution, "code", f"{path.name} cell {ex_index}")
            run("\n".join(f"globals().pop({n!r}, None)" for n in _bound_names(solution)) or "pass")
            run(stub)  # may raise at once (a stub at top level) or only when called
            failed = run(build.student_source(cell.source, "code"))
            outcomes[ex] = failed
            restore = run(solution)
            assert restore is None, f"{path.name}: re-running the solution of {ex!r} failed"
    for ex, failed in outcomes.items():
        assert failed is not None, f"{path.name}: the check of {ex!r} passed on the student stub"
        assert "CheckFailed" in failed.ename or "CheckFailed" in failed.traceback, \
            f"{path.name}: the check of {ex!r} failed on the stub without a CheckFailed: {failed.ename}"
