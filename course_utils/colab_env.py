"""Colab's GPU runtime as Google publishes it, and pip's answer to a Colab install cell there.

    python -m course_utils.colab_env refresh PATH --commit SHA --date YYYY-MM-DD
    python -m course_utils.colab_env check      # resolve every colab/ install cell, print what moves

``refresh`` copies a newer ``pip-freeze.gpu.txt`` and ``os-info-gpu.txt`` (PATH: a folder holding
both, or the freeze file itself, the OS file beside it) into ``tests/data/colab/`` and records the
commit and date in its README.md. On a machine that reaches GitHub, fetch them first with

    curl -fsSLO https://raw.githubusercontent.com/googlecolab/backend-info/main/pip-freeze.gpu.txt
    curl -fsSLO https://raw.githubusercontent.com/googlecolab/backend-info/main/os-info-gpu.txt

(and take the commit and date from https://github.com/googlecolab/backend-info/commits/main).

The resolution (``resolve_cell``) runs the running pip as it would run on Colab: a dry run for
CPython 3.13 on manylinux x86-64, binary wheels only, against PyPI alone (this machine's pip
configuration, extra indexes and local wheels are ignored), in an environment holding Colab's
freeze (a ``.dist-info`` per line, so pip keeps what Colab has unless a pin needs another
version, as it does there), with Colab's versions of the packages the course must not move as
constraints. Environment markers are evaluated for Python 3.13 too (pip evaluates them for the
interpreter that runs it, here 3.11: the runner patches that one function).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

DATA = Path("tests") / "data" / "colab"
FREEZE, OS_INFO = "pip-freeze.gpu.txt", "os-info-gpu.txt"
UPSTREAM = "googlecolab/backend-info"
PYPI = "https://pypi.org/simple"

PYTHON = (3, 13)
# Colab runs Ubuntu 22.04 (glibc 2.35): manylinux wheels up to 2_35 run there.
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(35, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]

# What the course must not move on Colab: its torch build (CUDA) and the packages built against
# it, numpy and the compiled scientific stack, the Jupyter/IPython stack Colab's frontend talks
# to, and google-colab's own dependencies (googlecolab/colabtools setup.py: google-auth,
# ipykernel, ipyparallel, ipython, notebook, pandas, portpicker, requests, tornado).
PROTECTED = (
    "torch", "torchvision", "torchaudio", "triton",
    "numpy", "scipy", "pandas", "matplotlib",
    "google-auth", "ipykernel", "ipyparallel", "ipython", "notebook", "portpicker", "requests", "tornado",
    "ipywidgets", "widgetsnbextension", "jupyterlab-widgets", "jupyter-client", "jupyter-core",
    "jupyter-server", "traitlets", "pyzmq",
)


def data_dir(root: Path) -> Path:
    return root / DATA


def read_freeze(text: str) -> dict[str, tuple[str, str | None]]:
    """``{canonical name: (name, version)}`` of a ``pip freeze``; a line installed from a URL or file
    has the version its file name gives, or None (``google-colab @ file://.../google_colab-1.0.0.tar.gz``)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if " @ " in line:
            name, url = (s.strip() for s in line.split(" @ ", 1))
            filename = url.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
            m = re.match(r"([A-Za-z0-9_.]+?)-([0-9][^-]*?)(?:-.*\.whl|\.whl|\.tar\.gz|\.zip)$", filename)
            same = m and canonicalize_name(m[1]) == canonicalize_name(name)
            out[canonicalize_name(name)] = (name, m[2] if same else None)
        else:
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = (name.strip(), version.strip() or None)
    return out


def public_version(version: str) -> str:
    """``2.11.0+cu128`` -> ``2.11.0``: PyPI has no local versions, and ``==2.11.0`` matches ``+cu128``."""
    return version.split("+", 1)[0]


def constraints(freeze: dict, protected=PROTECTED) -> list[str]:
    lines = []
    for name in protected:
        entry = freeze.get(canonicalize_name(name))
        if entry and entry[1]:
            lines.append(f"{entry[0]}=={public_version(entry[1])}")
    return lines


def pip_commands(cell_source: str) -> list[list[str]]:
    """The arguments after ``install`` of each ``%pip install`` / ``!pip install`` line of a cell."""
    commands = []
    for line in cell_source.splitlines():
        m = re.match(r"\s*[%!](?:python -m )?pip\s+install\s+(.*)$", line)
        if m:
            commands.append(shlex.split(m[1], comments=True))
    return commands


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """``(flags, requirement specs)``; only flags that take no value are expected in a cell."""
    flags = [a for a in args if a.startswith("-")]
    specs = [a for a in args if not a.startswith("-")]
    return flags, specs


def fake_site(freeze: dict, dest: Path) -> Path:
    """A site-packages folder pip reads as Colab's: one ``NAME-VERSION.dist-info/METADATA`` per line."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, version in freeze.values():
        if not version:
            continue
        info = dest / f"{re.sub(r'[^A-Za-z0-9.]+', '_', name)}-{version}.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("colab\n")
    return dest


def target_tags():
    """Every tag a wheel may carry to install on Colab's CPython 3.13, manylinux x86-64."""
    return set(cpython_tags(PYTHON, abis=["cp313"], platforms=PLATFORMS)) | set(
        compatible_tags(PYTHON, interpreter="cp313", platforms=PLATFORMS))


def wheel_fits(filename: str) -> bool:
    """True for a wheel whose tags install on Colab's Python (compiled for cp313 manylinux
    x86-64, abi3, or pure Python); False for an sdist or any other wheel."""
    if not filename.endswith(".whl"):
        return False
    _, _, _, tags = parse_wheel_filename(filename)
    return bool(set(tags) & target_tags())


# Run pip in a fresh interpreter that sees only the fake site (not this venv's packages) and that
# evaluates markers for Colab's Python: pip.main is imported first, then its own site is dropped.
_RUNNER = r"""
import sys
pip_site, fake, full = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, pip_site)
import pip._vendor.packaging.markers as markers
_env = markers.default_environment
def default_environment():
    env = _env()
    env.update(python_version=full.rsplit(".", 1)[0], python_full_version=full,
               implementation_version=full, implementation_name="cpython",
               platform_python_implementation="CPython", sys_platform="linux", os_name="posix",
               platform_system="Linux", platform_machine="x86_64")
    return env
markers.default_environment = default_environment
from pip._internal.cli.main import main
sys.path[:] = [fake] + [p for p in sys.path if p != pip_site and "site-packages" not in p]
sys.exit(main(sys.argv[4:]))
"""


@dataclass
class Resolution:
    command: list[str]
    returncode: int
    output: str
    report: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def installs(self) -> list[dict]:
        return self.report.get("install", [])

    def versions(self) -> dict[str, str]:
        return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in self.installs}

    def error(self) -> str:
        """pip's error lines (the conflict it names), for an assertion message."""
        lines = [ln for ln in self.output.splitlines() if ln.strip()]
        start = next((i for i, ln in enumerate(lines) if "ERROR" in ln or "conflict" in ln.lower()), 0)
        return "\n".join(lines[start:start + 25])


def _pip_env() -> dict:
    # No config file, extra index or local wheel folder of this machine: PyPI as Colab sees it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               PYTHONNOUSERSITE="1")
    return env


def run_pip(args: list[str], freeze: dict, constraint_lines: list[str], python_full: str, *,
            timeout: float = 900) -> Resolution:
    """``pip install --dry-run ARGS`` for Colab's Python and platform, in Colab's environment."""
    import pip

    pip_site = str(Path(pip.__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory(prefix="colab-env-") as tmp:
        tmp = Path(tmp)
        site = fake_site(freeze, tmp / "site-packages")
        (tmp / "constraints.txt").write_text("\n".join(constraint_lines) + "\n")
        report = tmp / "report.json"
        pip_args = ["install", "--dry-run", "--report", str(report), "--index-url", PYPI,
                    "--python-version", ".".join(map(str, PYTHON)), "--implementation", "cp",
                    "--abi", "cp313", *[f"--platform={p}" for p in PLATFORMS], "--only-binary=:all:",
                    "-c", str(tmp / "constraints.txt"), *args]
        command = [sys.executable, "-I", "-S", "-c", _RUNNER, pip_site, str(site), python_full, *pip_args]
        t0 = time.monotonic()
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_pip_env(),
                              cwd=tmp)
        seconds = time.monotonic() - t0
        data = json.loads(report.read_text()) if report.exists() else {}
    shown = ["pip", *pip_args[:3], "REPORT.json", *pip_args[4:]]
    return Resolution(shown, proc.returncode, proc.stdout + proc.stderr, data, seconds)


def python_full_version(root: Path) -> str:
    text = (data_dir(root) / OS_INFO).read_text()
    m = re.search(r"^Python (3\.\d+\.\d+)", text, re.MULTILINE)
    if not m:
        raise ValueError(f"{DATA / OS_INFO}: no 'Python 3.N.M' line")
    return m[1]


def read_colab(root: Path) -> dict:
    return read_freeze((data_dir(root) / FREEZE).read_text())


def pypi_reachable(timeout: float = 10) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{PYPI}/pip/", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def moved(freeze: dict, versions: dict[str, str]) -> dict[str, tuple[str | None, str]]:
    """``{name: (Colab's version, the new one)}`` for every package of Colab's a resolution changes."""
    out = {}
    for name, version in versions.items():
        if name in freeze and public_version(freeze[name][1] or "") != public_version(version):
            out[name] = (freeze[name][1], version)
    return out


def course_wheel(root: Path, dest: Path) -> Path:
    """A wheel of this checkout's course-utils, built the way pip builds the install cell's
    ``course-utils @ git+...`` on Colab (a copy of the project is built, so the work tree is not
    touched); the resolution installs it in place of the git URL, which it cannot reach."""
    with tempfile.TemporaryDirectory(prefix="course-src-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copyfile(root / name, src / name)
        shutil.copytree(root / "course_utils", src / "course_utils",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(dest), str(src)], check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = dest.glob("course_utils-*.whl")
    return wheel


def local_specs(specs: list[str], wheel: Path | None) -> list[str]:
    """The cell's specs with ``course-utils @ git+...`` replaced by ``wheel``."""
    out = []
    for spec in specs:
        if canonicalize_name(re.split(r"[\s@=<>!~;\[]", spec, maxsplit=1)[0]) == "course-utils" and "@" in spec:
            if wheel is None:
                raise ValueError(f"{spec!r}: needs a local wheel of course-utils (course_wheel)")
            spec = f"course-utils @ {wheel.resolve().as_uri()}"
        out.append(spec)
    return out


# --- refresh -----------------------------------------------------------------------------------

README_TEMPLATE = """# Colab's GPU runtime, as Google publishes it

`{freeze}` and `{os_info}` are copies of the files of the same names in the public
repository [`{upstream}`](https://github.com/{upstream}),
commit `{commit}` ({date}).
They describe the packages and OS of Colab's GPU runtime as of that commit ({python},
torch {torch}); the upstream README warns that they may lag the production image. Lines
installed from a file, URL or git (`google-colab @ file:///colabtools/dist/google_colab-1.0.0.tar.gz`)
have no registry version. `tests/test_colab_fidelity.py` resolves every `colab/` install cell
against them with pip, as pip would run on Colab (`python -m course_utils.colab_env check`
prints the same resolution).

Refresh them (on a machine that reaches GitHub; take the commit and date from
https://github.com/{upstream}/commits/main):

```bash
curl -fsSLO https://raw.githubusercontent.com/{upstream}/main/{freeze}
curl -fsSLO https://raw.githubusercontent.com/{upstream}/main/{os_info}
python -m course_utils.colab_env refresh . --commit SHA --date YYYY-MM-DD
python -m pytest tests/test_colab_fidelity.py
```

`refresh` takes local files only (a folder holding both, or the freeze file with the OS file beside
it) and rewrites this README with the commit and date given.
"""


def refresh(root: Path, source: Path, commit: str, date: str) -> list[str]:
    if not re.fullmatch(r"[0-9a-f]{7,40}", commit):
        raise ValueError(f"--commit {commit!r}: expected a git commit (hex)")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise ValueError(f"--date {date!r}: expected YYYY-MM-DD")
    folder = source if source.is_dir() else source.parent
    freeze_src = source if source.is_file() else folder / FREEZE
    os_src = folder / OS_INFO
    for path in (freeze_src, os_src):
        if not path.is_file():
            raise ValueError(f"{path}: not found (refresh needs both {FREEZE} and {OS_INFO})")
    freeze = read_freeze(freeze_src.read_text())
    if "torch" not in freeze or not re.search(r"^Python 3\.\d+\.\d+", os_src.read_text(), re.MULTILINE):
        raise ValueError(f"{freeze_src} / {os_src}: not Colab's freeze and OS list (no torch or no Python line)")
    dest = data_dir(root)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for src, name in ((freeze_src, FREEZE), (os_src, OS_INFO)):
        if src.resolve() != (dest / name).resolve():
            shutil.copyfile(src, dest / name)
        written.append(str(DATA / name))
    python = re.search(r"^(Python 3\.\d+\.\d+)", os_src.read_text(), re.MULTILINE)[1]
    (dest / "README.md").write_text(README_TEMPLATE.format(
        freeze=FREEZE, os_info=OS_INFO, upstream=UPSTREAM, commit=commit, date=date, python=python,
        torch=freeze["torch"][1]))
    written.append(str(DATA / "README.md"))
    return written


def main(argv: list[str] | None = None) -> int:
    from course_utils.build import find_root

    parser = argparse.ArgumentParser(prog="python -m course_utils.colab_env", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("refresh", help="copy a newer freeze and OS list into tests/data/colab/")
    r.add_argument("source", type=Path, help="a folder holding both files, or the freeze file")
    r.add_argument("--commit", required=True, help=f"the {UPSTREAM} commit they come from")
    r.add_argument("--date", required=True, help="that commit's date, YYYY-MM-DD")
    sub.add_parser("check", help="resolve the colab/ install cell against Colab's list and print the result")
    args = parser.parse_args(argv)
    root = find_root()
    if args.command == "refresh":
        try:
            for line in refresh(root, args.source, args.commit, args.date):
                print(f"wrote {line}")
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    import nbformat

    from course_utils import build

    cells = {}
    for path in sorted((root / build.COLAB_DIR).glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.get("id") == build.INSTALL_ID:
                cells.setdefault(cell.source, []).append(path.name)
    freeze, full = read_colab(root), python_full_version(root)
    wheel_dir = Path(tempfile.mkdtemp(prefix="course-wheel-"))
    wheel = course_wheel(root, wheel_dir)
    status = 0
    for source, names in cells.items():
        print(f"{len(names)} notebook(s): {', '.join(names)}")
        for args_ in pip_commands(source):
            flags, specs = split_args([a for a in args_ if a != "-q"])
            res = run_pip([*flags, *local_specs(specs, wheel)], freeze, constraints(freeze), full)
            print(f"  pip install {' '.join(args_)}: rc {res.returncode}, {res.seconds:.0f} s")
            if res.returncode:
                print("    " + res.error().replace("\n", "\n    "))
                status = 1
            for name, (old, new) in sorted(moved(freeze, res.versions()).items()):
                print(f"    moves {name} {old} -> {new}")
            for item in res.installs:
                filename = item["download_info"]["url"].rsplit("/", 1)[-1]
                if not wheel_fits(filename):
                    print(f"    no wheel for Colab's Python: {filename}")
                    status = 1
    shutil.rmtree(wheel_dir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
