"""The solution notebooks: each assignment's exercises, points, forbidden shortcuts and hidden tests."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..build import hidden_tests, validate_solution, without_hidden_tests

FORBID = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")  # module:qualname

@dataclass
class Exercise:
    id: str
    points: float
    cell_id: str | None
    signature: str | None  # first `def`/`class` line before the solution region
    markdown: bool = False
    forbid: list[str] = field(default_factory=list)  # "module:qualname" the answer must not call


@dataclass
class HiddenBlock:
    key: str  # the check id (or the cell id) the hidden tests belong to
    code: str
    cell_id: str | None
    exercise: str | None  # the exercise id when the block sits in an exercise or check cell
    index: int | None = None  # the solution cell it sits in


@dataclass
class Assignment:
    stem: str
    path: Path
    exercises: dict[str, Exercise]
    hidden: list[HiddenBlock]
    cells: list  # the solution's cells with hidden tests removed (the reference "submission")


def course_meta(meta) -> dict:
    course = meta.get("course") if isinstance(meta, dict) else None
    return course if isinstance(course, dict) else {}


def _signature(source: str) -> str | None:
    for line in source.splitlines():
        text = line.strip()
        if text.startswith("### BEGIN SOLUTION"):
            return None
        if text.startswith(("def ", "class ", "async def ")):
            return text
    return None


def load_assignment(path: Path) -> Assignment:
    """Read a solution notebook: exercises with their points, hidden-test blocks."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    validate_solution(nb, path.stem)
    exercises, hidden, cells = {}, [], []
    for index, cell in enumerate(nb.cells):
        course = course_meta(cell.metadata)
        where = f"{path.name}, cell {index}"
        if "exercise" in course:
            ex_id = str(course["exercise"])
            points = course.get("points", 1)
            if isinstance(points, bool) or not isinstance(points, (int, float)) or points < 0:
                raise ValueError(f"{where}: 'points' must be a number >= 0, got {points!r}")
            if ex_id in exercises:
                raise ValueError(f"{where}: exercise id {ex_id!r} is used twice")
            forbid = course.get("forbid", [])
            if not isinstance(forbid, list) or not all(isinstance(f, str) and FORBID.match(f) for f in forbid):
                raise ValueError(f"{where}: 'forbid' must be a list of 'module:qualname' strings, got {forbid!r}")
            exercises[ex_id] = Exercise(ex_id, float(points), cell.get("id"), _signature(cell.source),
                                        markdown=cell.cell_type != "code", forbid=list(forbid))
        code = hidden_tests(cell.source, where) if cell.cell_type == "code" else ""
        if code.strip():
            owner = course.get("check") or course.get("exercise")
            hidden.append(HiddenBlock(str(owner or f"cell-{cell.get('id', index)}"), code,
                                      cell.get("id"), str(owner) if owner else None, index))
        cells.append(Cell(index, cell.cell_type, without_hidden_tests(cell.source, cell.cell_type, where),
                           cell.get("id"), course))
    return Assignment(path.stem, path, exercises, hidden, cells)


@dataclass
class Cell:
    index: int  # position in the notebook (0-based)
    cell_type: str
    source: str
    id: str | None
    course: dict


class Catalog:
    """The solution notebooks of a folder, loaded on demand."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.paths = {p.stem: p for p in sorted(self.folder.glob("*.ipynb"))}
        self._loaded: dict[str, Assignment] = {}
        self._ids: dict[str, set[str]] | None = None

    def get(self, stem: str) -> Assignment:
        if stem not in self._loaded:
            self._loaded[stem] = load_assignment(self.paths[stem])
        return self._loaded[stem]

    def resolve(self, name: str) -> str | None:
        """'1', '01', '01_chat_templates' or a path to a solution -> the stem, or None."""
        name = Path(str(name)).stem
        if name in self.paths:
            return name
        if name.isdigit():
            hits = [s for s in self.paths if s.split("_", 1)[0] == f"{int(name):02d}"]
            return hits[0] if len(hits) == 1 else None
        return None

    def exercise_ids(self) -> dict[str, set[str]]:
        if self._ids is None:
            self._ids = {}
            for stem, path in self.paths.items():
                try:
                    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
                    self._ids[stem] = {str(course_meta(c.get("metadata"))["exercise"]) for c in cells
                                       if "exercise" in course_meta(c.get("metadata"))}
                except (OSError, ValueError, AttributeError):
                    self._ids[stem] = set()
        return self._ids

    def stem_in_name(self, text: str) -> str | None:
        hits = [s for s in self.paths if s in text]
        if len(hits) == 1:
            return hits[0]
        m = re.search(r"(?:^|[^0-9])(\d\d)_", text)
        return self.resolve(m.group(1)) if m else None


def default_solutions_dir() -> Path:
    here = Path.cwd() / "solutions"
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "solutions"
