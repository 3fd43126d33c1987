"""Students' submissions: found, named, read (never followed, never written), matched to an assignment."""
from __future__ import annotations

import errno
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .solutions import Catalog, Cell, course_meta

MAX_FILE_BYTES = 100 * 2**20


@dataclass
class Submission:
    path: Path
    student: str
    cells: list[Cell] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    problem: str | None = None  # why the file is not a readable notebook
    refused: bool = False  # not a regular file, or too big: never opened


def _refusal(path: Path) -> str | None:
    """Why a path is not opened at all (a link, a pipe, a device, a folder, too big), or None."""
    try:
        info = os.lstat(path)
    except OSError as err:
        return f"the file could not be read ({err.strerror or err})"
    if stat.S_ISLNK(info.st_mode):
        return "the file is a symbolic link; links are never followed: submit the notebook file itself"
    if not stat.S_ISREG(info.st_mode):
        kind = ("a folder" if stat.S_ISDIR(info.st_mode) else "a named pipe" if stat.S_ISFIFO(info.st_mode)
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
        return f"the submission is {kind}, not a notebook file"
    if info.st_size > MAX_FILE_BYTES:
        return (f"the file is {info.st_size / 2**20:.0f} MB, over the {MAX_FILE_BYTES // 2**20} MB "
                "limit: clear the outputs (Edit > Clear all outputs) and submit again")
    return None


def _read_regular(path: Path) -> bytes:
    """The bytes of a regular file, opened without following a link or blocking on a pipe."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped after the check
            raise OSError(errno.EINVAL, "not a regular file")
        chunks, size = [], 0
        while chunk := os.read(fd, 2**20):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                raise OSError(errno.EFBIG, "the file grew over the size limit while it was read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def student_name(path: Path) -> str:
    """``alice__01_chat_templates.ipynb`` -> alice; ``alice/01_chat_templates.ipynb`` -> alice."""
    name = path.stem
    if "__" in name and name.split("__", 1)[0].strip():
        return name.split("__", 1)[0].strip()
    if re.match(r"^(copy of )?\d\d_", name, re.IGNORECASE) and path.parent.name:
        return path.parent.name
    return name


def _text(value) -> str:
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return value if isinstance(value, str) else ""


def read_submission(path: Path) -> Submission:
    """Read (never write) a submission; a file that is not a notebook gets ``problem`` set."""
    sub = Submission(Path(path), student_name(Path(path)))
    refusal = _refusal(sub.path)
    if refusal:
        sub.problem, sub.refused = refusal, True
        return sub
    try:
        data = _read_regular(sub.path)
    except OSError as err:
        sub.problem = f"the file could not be read ({err.strerror or err})"
        return sub
    if not data.strip():
        sub.problem = "the file is empty"
        return sub
    try:
        nb = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        sub.problem = "the file is not UTF-8 text (is it really a .ipynb notebook?)"
        return sub
    except json.JSONDecodeError as err:
        sub.problem = (f"the file is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
                       "it may be cut short: download the notebook again (File > Download > .ipynb)")
        return sub
    except RecursionError:
        sub.problem = "the file's JSON is nested too deeply to be a notebook"
        return sub
    if isinstance(nb, dict) and "worksheets" in nb:  # an nbformat 3 notebook
        try:
            import nbformat

            nb = json.loads(nbformat.writes(nbformat.reads(json.dumps(nb), as_version=4)))
        except Exception as err:  # noqa: BLE001 - any conversion failure means "not a notebook"
            sub.problem = f"an old-format notebook that could not be converted ({type(err).__name__})"
            return sub
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        sub.problem = "the file is JSON but not a Jupyter notebook (it has no list of cells)"
        return sub
    sub.metadata = nb.get("metadata") if isinstance(nb.get("metadata"), dict) else {}
    for index, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict):
            continue
        meta = cell.get("metadata") if isinstance(cell.get("metadata"), dict) else {}
        cell_id = cell.get("id") if isinstance(cell.get("id"), str) else meta.get("id")
        sub.cells.append(Cell(index, str(cell.get("cell_type", "")), _text(cell.get("source")),
                               cell_id if isinstance(cell_id, str) else None, course_meta(meta)))
    return sub


def detect_assignment(sub: Submission, catalog: Catalog, forced: str | None) -> tuple[str | None, str | None]:
    """``(stem, problem)``: which assignment the submission is for, and why it can't be graded."""
    meta = sub.metadata.get("course_utils") if isinstance(sub.metadata.get("course_utils"), dict) else {}
    claimed = meta.get("assignment") or meta.get("generated_from")
    claimed = Path(str(claimed)).stem if claimed else None
    ids = {str(c.course["exercise"]) for c in sub.cells if "exercise" in c.course}
    by_ids = None
    if ids:
        overlap = {s: len(ids & set(e)) for s, e in catalog.exercise_ids().items()}
        best = max(overlap, key=overlap.get, default=None)
        by_ids = best if best and overlap[best] else None
    by_name = catalog.stem_in_name(sub.path.name)
    if forced:
        other = claimed if claimed and claimed != forced else None
        if other is None and by_ids and by_ids != forced and not ids & catalog.exercise_ids().get(forced, set()):
            other = by_ids
        if other is None and not claimed and not by_ids and by_name and by_name != forced:
            other = by_name
        if other:
            return forced, f"this is the notebook of assignment {other}, not {forced}"
        return forced, None
    for stem in (claimed, by_ids, by_name):
        if stem and stem in catalog.paths:
            return stem, None
    if claimed:
        return None, (f"the notebook says it is assignment {claimed}, which has no solution in "
                      f"{catalog.folder}")
    return None, "no assignment found in the notebook or its file name: pass --assignment NN"




def expand(paths, exclude=()) -> list[Path]:
    """Notebooks named, or found in folders named (not in checkpoints or the excluded folders).

    Folders are walked without following links; a ``.ipynb`` entry that is a link, a pipe or a
    device is listed all the same, so that it gets a ``refused`` row instead of vanishing."""
    files: list[Path] = []
    skip = [Path(e).resolve() for e in exclude]
    for p in map(Path, paths):
        if p.is_dir() and not p.is_symlink():
            found = []
            for folder, dirs, names in os.walk(p, followlinks=False):
                dirs[:] = sorted(d for d in dirs if d != ".ipynb_checkpoints")
                found += [Path(folder) / n for n in sorted(names) if n.endswith(".ipynb")]
            files += [f for f in found if not any(e == f.parent.resolve() or e in f.parent.resolve().parents
                                                   for e in skip)]
        elif os.path.lexists(p):
            files.append(p)
        else:
            raise ValueError(f"{p}: no such file or folder")
    unique = list(dict.fromkeys(files))
    if not unique:
        raise ValueError("no .ipynb submissions found in " + ", ".join(map(str, paths)))
    return unique


