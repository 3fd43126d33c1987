"""Write the student (`notebooks/`) and Colab (`colab/`) copies from `solutions/`.

    python -m course_utils.build            # write notebooks/ and colab/, strip solution outputs
    python -m course_utils.build --check    # exit 1 naming every file that is out of date

Student copies: each ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region becomes a stub that
raises ``NotImplementedError`` (markdown: "YOUR ANSWER HERE"), ``### BEGIN HIDDEN TESTS`` ...
``### END HIDDEN TESTS`` regions are removed, outputs and widget state are cleared. Colab copies
also get an "Open in Colab" badge, an install cell derived from requirements.txt and Colab GPU
metadata.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import nbformat

SOLUTION = ("### BEGIN SOLUTION", "### END SOLUTION")
HIDDEN = ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")
STUDENT_DIR, COLAB_DIR, SOLUTION_DIR = "notebooks", "colab", "solutions"
KEPT_CELL_METADATA = ("tags", "course")
COLAB_SKIP = "# not on colab"
HEADER_ID, INSTALL_ID = "generated-header", "colab-install"


class MarkerError(ValueError):
    """Unbalanced or nested solution / hidden-test markers."""


def _marker(line: str) -> str | None:
    text = line.strip()
    for m in (*SOLUTION, *HIDDEN):
        if text.startswith(m):
            return m
    return None


def _scan(source: str, where: str) -> list[tuple[str, int, int, str]]:
    """Regions as ``(kind, begin_line, end_line, indent)``; raises MarkerError when malformed."""
    regions, open_ = [], None
    for i, line in enumerate(source.splitlines()):
        m = _marker(line)
        if m is None:
            continue
        kind = "solution" if m in SOLUTION else "hidden tests"
        if m in (SOLUTION[0], HIDDEN[0]):
            if open_ is not None:
                raise MarkerError(f"{where}: line {i + 1}: '{m}' inside an open {open_[0]} region "
                                  f"(opened at line {open_[1] + 1}); regions cannot be nested")
            open_ = (kind, i, line[: len(line) - len(line.lstrip())])
        else:
            if open_ is None or open_[0] != kind:
                raise MarkerError(f"{where}: line {i + 1}: '{m}' without a matching BEGIN")
            regions.append((kind, open_[1], i, open_[2]))
            open_ = None
    if open_ is not None:
        raise MarkerError(f"{where}: line {open_[1] + 1}: {open_[0]} region is never closed")
    return regions


def _rewrite(source: str, cell_type: str, where: str, *, keep_solutions: bool = False) -> str:
    """Hidden tests removed; solutions stubbed, or kept as they are with ``keep_solutions``."""
    lines = source.splitlines()
    out, pos = [], 0
    for kind, begin, end, indent in _scan(source, where):
        out.extend(lines[pos:begin])
        if kind == "solution" and keep_solutions:
            out.extend(lines[begin:end + 1])
        elif kind == "solution" and cell_type == "markdown":
            out.append(f"{indent}YOUR ANSWER HERE")
        elif kind == "solution":
            out += [f"{indent}# YOUR CODE HERE", f"{indent}raise NotImplementedError()"]
        pos = end + 1
    out.extend(lines[pos:])
    return "\n".join(out).rstrip()


def student_source(source: str, cell_type: str = "code", where: str = "cell") -> str:
    """One cell's student version: solutions stubbed, hidden tests removed."""
    return _rewrite(source, cell_type, where)


def without_hidden_tests(source: str, cell_type: str = "code", where: str = "cell") -> str:
    """One cell as the instructor wrote it, hidden tests removed (the grader's reference)."""
    return _rewrite(source, cell_type, where, keep_solutions=True)


def hidden_tests(source: str, where: str = "cell") -> str:
    """The hidden-test code of one cell (markers dropped, indentation kept), or ``""``."""
    lines = source.splitlines()
    parts = [
        "\n".join(lines[b + 1:e]) for kind, b, e, _ in _scan(source, where) if kind == "hidden tests"
    ]
    return "\n".join(parts)


def _where(stem: str, index: int, cell) -> str:
    return f"{SOLUTION_DIR}/{stem}.ipynb, cell {index} (id {cell.get('id', '?')})"


def validate_solution(nb, stem: str) -> None:
    """Markers balanced, exactly one `parameters` cell: raise MarkerError/ValueError otherwise."""
    params = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(params) != 1:
        raise ValueError(f"{SOLUTION_DIR}/{stem}.ipynb: expected exactly one cell tagged "
                         f"'parameters', found {len(params)}")
    for i, cell in enumerate(nb.cells):
        _scan(cell.source, _where(stem, i, cell))


def _clean_cell(cell):
    cell.metadata = {k: v for k, v in cell.metadata.items() if k in KEPT_CELL_METADATA}
    if cell.cell_type == "code":
        cell.outputs = []
        cell.execution_count = None
    return cell


def student_notebook(nb, stem: str, *, kind: str = "student"):
    """The student copy of a solution notebook (a new notebook; ``nb`` is not changed)."""
    validate_solution(nb, stem)
    out = copy.deepcopy(nb)
    cells = []
    for i, cell in enumerate(out.cells):
        cell.source = student_source(cell.source, cell.cell_type, _where(stem, i, cell))
        if cell.source.strip() or not _scan(nb.cells[i].source, _where(stem, i, cell)):
            cells.append(_clean_cell(cell))
    header = nbformat.v4.new_markdown_cell(
        f"*Student copy generated from `solutions/{stem}.ipynb` by `python -m course_utils.build`: "
        "instructors edit the solution, never this file.*")
    header.id = HEADER_ID
    out.cells = [header, *cells]
    meta = {k: v for k, v in out.metadata.items() if k in ("kernelspec", "language_info")}
    meta.setdefault("kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"})
    meta["course_utils"] = {"generated_from": f"{SOLUTION_DIR}/{stem}.ipynb", "kind": kind,
                            "assignment": stem}
    out.metadata = meta
    return out


def repository_settings(root: Path) -> dict:
    import tomllib

    data = tomllib.loads((root / "pyproject.toml").read_text())
    return data["tool"]["course_utils"]


def colab_requirements(requirements_text: str) -> list[str]:
    """Pinned requirement lines for Colab: every line of requirements.txt but comments, blank
    lines and lines marked ``# not on colab``."""
    reqs = []
    for line in requirements_text.splitlines():
        if COLAB_SKIP in line.lower():
            continue
        spec = line.split("#", 1)[0].strip()
        if spec:
            reqs.append(spec)
    return reqs


def colab_install_source(requirements_text: str, repository: str, branch: str) -> str:
    pins = " ".join(f'"{r}"' for r in colab_requirements(requirements_text))
    return (
        "# Colab only: install the course's pinned stack (from requirements.txt) and course_utils.\n"
        "# Colab's own torch is kept. Takes about a minute; then run the notebook top to bottom.\n"
        f"%pip install -q {pins}\n"
        f'%pip install -q "course-utils @ git+https://github.com/{repository}@{branch}"'
    )


def colab_notebook(nb, stem: str, requirements_text: str, repository: str, branch: str):
    out = student_notebook(nb, stem, kind="colab")
    url = f"https://colab.research.google.com/github/{repository}/blob/{branch}/{COLAB_DIR}/{stem}.ipynb"
    out.cells[0].source = (
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})\n\n"
        + out.cells[0].source)
    install = nbformat.v4.new_code_cell(colab_install_source(requirements_text, repository, branch))
    install.id = INSTALL_ID
    out.cells.insert(1, install)
    out.metadata["accelerator"] = "GPU"
    out.metadata["colab"] = {"provenance": [], "gpuType": "T4"}
    return out


def _dumps(nb) -> str:
    return nbformat.writes(nb) + "\n"


def has_outputs(nb) -> bool:
    return any(c.cell_type == "code" and (c.outputs or c.execution_count) for c in nb.cells)


def strip_outputs(nb):
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("widgets", None)
    return nb


def find_root(start: Path | None = None) -> Path:
    here = Path(__file__).resolve().parent.parent
    for candidate in (start, Path.cwd(), here):
        if candidate and (candidate / SOLUTION_DIR).is_dir() and (candidate / "pyproject.toml").exists():
            return candidate
    raise SystemExit("Run this from the workbook's root folder (the one holding solutions/).")


def expected_files(root: Path) -> dict[Path, str]:
    """Every generated file and the text the build would write into it."""
    settings = repository_settings(root)
    requirements = (root / "requirements.txt").read_text()
    files = {}
    for path in sorted((root / SOLUTION_DIR).glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        stem = path.stem
        files[root / STUDENT_DIR / path.name] = _dumps(student_notebook(nb, stem))
        files[root / COLAB_DIR / path.name] = _dumps(
            colab_notebook(nb, stem, requirements, settings["repository"], settings["branch"]))
    return files


def check(root: Path) -> list[str]:
    problems = []
    for path in sorted((root / SOLUTION_DIR).glob("*.ipynb")):
        if has_outputs(nbformat.read(path, as_version=4)):
            problems.append(f"{path.relative_to(root)} has outputs: run `python -m course_utils.build` to strip them")
    expected = expected_files(root)
    for path, text in expected.items():
        rel = path.relative_to(root)
        if not path.exists():
            problems.append(f"{rel} is missing")
        elif path.read_text() != text:
            problems.append(f"{rel} is not up to date with {SOLUTION_DIR}/{path.name}")
    for folder in (STUDENT_DIR, COLAB_DIR):
        for path in sorted((root / folder).glob("*.ipynb")):
            if path not in expected:
                problems.append(f"{path.relative_to(root)} has no source in {SOLUTION_DIR}/ (stale)")
    return problems


def build(root: Path) -> list[str]:
    written = []
    for path in sorted((root / SOLUTION_DIR).glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if has_outputs(nb) or "widgets" in nb.metadata:
            path.write_text(_dumps(strip_outputs(nb)))
            written.append(f"stripped outputs of {path.relative_to(root)}")
    expected = expected_files(root)
    for path, text in expected.items():
        path.parent.mkdir(exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(f"wrote {path.relative_to(root)}")
    for folder in (STUDENT_DIR, COLAB_DIR):
        for path in sorted((root / folder).glob("*.ipynb")):
            if path not in expected:
                path.unlink()
                written.append(f"removed stale {path.relative_to(root)}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 naming each file that differs from a build")
    parser.add_argument("--root", type=Path, default=None, help="workbook root (default: here)")
    args = parser.parse_args(argv)
    root = find_root(args.root)
    try:
        if args.check:
            problems = check(root)
            for p in problems:
                print(p)
            if problems:
                print(f"{len(problems)} generated file(s) out of date: run `python -m course_utils.build`.")
                return 1
            print("notebooks/ and colab/ are up to date with solutions/.")
            return 0
        for line in build(root) or ["nothing to do: everything is up to date"]:
            print(line)
        return 0
    except (MarkerError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
