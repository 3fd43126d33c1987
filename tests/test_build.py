import copy
import shutil

import nbformat
import pytest

from course_utils import build

REQS = "transformers==5.17.0\n# comment\n\ntrl==1.16.0  # why\njupyterlab==4.6.6  # not on colab\n"


def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    params = nbformat.v4.new_code_cell("STEPS = 3")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *cells]
    for i, c in enumerate(nb.cells):
        c.id = f"cell-{i}"
    return nb


def test_solution_becomes_stub_with_indentation_kept():
    src = ("def f(x):\n    \"\"\"Doc.\"\"\"\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n"
           "    ### END SOLUTION\n\nprint('after')")
    assert build.student_source(src) == ("def f(x):\n    \"\"\"Doc.\"\"\"\n    # YOUR CODE HERE\n"
                                         "    raise NotImplementedError()\n\nprint('after')")


def test_markdown_answer_and_hidden_tests():
    assert build.student_source("Why?\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION", "markdown") == "Why?\nYOUR ANSWER HERE"
    src = "check()\n### BEGIN HIDDEN TESTS\nprobe(1)\nprobe(2)\n### END HIDDEN TESTS\ndone()"
    assert build.student_source(src) == "check()\ndone()"
    assert build.hidden_tests(src) == "probe(1)\nprobe(2)"
    assert build.hidden_tests("x = 1") == ""
    both = "### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n" + src
    assert build.without_hidden_tests(both) == "### BEGIN SOLUTION\nx = 1\n### END SOLUTION\ncheck()\ndone()"


@pytest.mark.parametrize("src, match", [
    ("### BEGIN SOLUTION\nx\n", "line 1: solution region is never closed"),
    ("x\n### END SOLUTION", "line 2: '### END SOLUTION' without a matching BEGIN"),
    ("### BEGIN SOLUTION\n### BEGIN HIDDEN TESTS\n### END HIDDEN TESTS\n### END SOLUTION", "cannot be nested"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n### END SOLUTION", "cannot be nested"),
    ("### BEGIN HIDDEN TESTS\n### END SOLUTION", "without a matching BEGIN"),
])
def test_bad_markers_name_notebook_and_cell(src, match):
    nb = _nb(nbformat.v4.new_code_cell(src))
    with pytest.raises(build.MarkerError, match=match) as err:
        build.student_notebook(nb, "09_demo")
    assert "solutions/09_demo.ipynb, cell 1 (id cell-1)" in str(err.value)


def test_exactly_one_parameters_cell():
    nb = _nb()
    nb.cells[0].metadata["tags"] = []
    with pytest.raises(ValueError, match="exactly one cell tagged 'parameters', found 0"):
        build.student_notebook(nb, "09_demo")


def test_student_copy_clears_outputs_and_keeps_only_course_metadata():
    cell = nbformat.v4.new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION")
    cell.outputs = [nbformat.v4.new_output("stream", text="secret answer")]
    cell.execution_count = 3
    cell.metadata = {"course": {"exercise": "f"}, "tags": ["x"], "ExecuteTime": {}, "scrolled": True}
    hidden_only = nbformat.v4.new_code_cell("### BEGIN HIDDEN TESTS\nprobe()\n### END HIDDEN TESTS")
    nb = _nb(cell, hidden_only)
    nb.metadata["widgets"] = {"state": {}}
    original = copy.deepcopy(nb)
    out = build.student_notebook(nb, "09_demo")
    assert nb == original  # the solution is not modified
    assert out.cells[0].id == build.HEADER_ID and "solutions/09_demo.ipynb" in out.cells[0].source
    stub = out.cells[2]
    assert stub.outputs == [] and stub.execution_count is None
    assert stub.metadata == {"course": {"exercise": "f"}, "tags": ["x"]} and stub.id == "cell-1"
    assert len(out.cells) == 3  # the hidden-tests-only cell is gone
    assert "widgets" not in out.metadata
    assert out.metadata["course_utils"] == {"generated_from": "solutions/09_demo.ipynb", "kind": "student",
                                            "assignment": "09_demo"}
    assert "secret answer" not in nbformat.writes(out) and "return 1" not in nbformat.writes(out)


def test_colab_copy_badge_install_cell_and_metadata():
    nb = build.colab_notebook(_nb(), "09_demo", REQS, "org/repo", "main")
    badge = nb.cells[0].source
    assert "https://colab.research.google.com/github/org/repo/blob/main/colab/09_demo.ipynb" in badge
    install = nb.cells[1]
    assert install.id == build.INSTALL_ID
    assert '"transformers==5.17.0" "trl==1.16.0"' in install.source and "jupyterlab" not in install.source
    assert '"course-utils @ git+https://github.com/org/repo@main"' in install.source
    assert nb.metadata["accelerator"] == "GPU" and nb.metadata["colab"]["gpuType"] == "T4"
    assert build.colab_requirements(REQS) == ["transformers==5.17.0", "trl==1.16.0"]


@pytest.fixture()
def workbook(tmp_path, root):
    for name in ("pyproject.toml", "requirements.txt"):
        shutil.copy(root / name, tmp_path / name)
    (tmp_path / "solutions").mkdir()
    cell = nbformat.v4.new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION")
    nbformat.write(_nb(cell), tmp_path / "solutions" / "09_demo.ipynb")
    return tmp_path


def test_build_then_check_round_trip(workbook, capsys):
    assert build.main(["--root", str(workbook), "--check"]) == 1
    assert "notebooks/09_demo.ipynb is missing" in capsys.readouterr().out
    assert build.main(["--root", str(workbook)]) == 0
    assert build.main(["--root", str(workbook), "--check"]) == 0
    student = workbook / "notebooks" / "09_demo.ipynb"
    assert "raise NotImplementedError()" in student.read_text()
    # a hand edit of a generated file, a stale file and a solution with outputs are all named
    student.write_text(student.read_text().replace("YOUR CODE HERE", "edited"))
    shutil.copy(student, workbook / "colab" / "99_old.ipynb")
    sol = workbook / "solutions" / "09_demo.ipynb"
    nb = nbformat.read(sol, as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="x")]
    nbformat.write(nb, sol)
    capsys.readouterr()
    assert build.main(["--root", str(workbook), "--check"]) == 1
    out = capsys.readouterr().out
    assert "notebooks/09_demo.ipynb is not up to date with solutions/09_demo.ipynb" in out
    assert "colab/99_old.ipynb has no source in solutions/ (stale)" in out
    assert "solutions/09_demo.ipynb has outputs" in out
    assert build.main(["--root", str(workbook)]) == 0
    assert build.main(["--root", str(workbook), "--check"]) == 0
    assert not build.has_outputs(nbformat.read(sol, as_version=4))


def test_bad_markers_fail_the_build_with_a_message(workbook, capsys):
    nbformat.write(_nb(nbformat.v4.new_code_cell("### BEGIN SOLUTION\nx = 1")), workbook / "solutions" / "09_demo.ipynb")
    assert build.main(["--root", str(workbook)]) == 2
    assert "solutions/09_demo.ipynb, cell 1" in capsys.readouterr().err


def test_committed_copies_are_up_to_date(root, capsys):
    assert build.main(["--root", str(root), "--check"]) == 0, capsys.readouterr().out


def test_readme_links_point_at_existing_notebooks_and_the_configured_repository(root):
    import re

    readme = (root / "README.md").read_text()
    repo = build.repository_settings(root)["repository"]
    colab_links = re.findall(r"colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/[^/]+/colab/([\w.]+)", readme)
    assert colab_links, "README has no Colab badges"
    for linked_repo, name in colab_links:
        assert linked_repo == repo, f"README links {linked_repo}, pyproject.toml says {repo}"
        assert (root / "colab" / name).exists(), f"README links colab/{name}, which does not exist"
    for folder, name in re.findall(r"\]\((notebooks|solutions)/([\w.]+\.ipynb)\)", readme):
        assert (root / folder / name).exists(), f"README links {folder}/{name}, which does not exist"
    stems = {p.stem for p in (root / "solutions").glob("*.ipynb")}
    assert stems <= {name[:-6] for _, name in colab_links}, "a notebook has no row in the README table"
