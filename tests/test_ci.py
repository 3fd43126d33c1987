"""The GitHub Actions workflow: the whole of .ci/run on each push and pull request; how .ci/run runs the suite."""
import tomllib

import pytest
import yaml

WORKFLOW = ".github/workflows/ci.yml"


@pytest.fixture(scope="module")
def workflow(root):
    return yaml.safe_load((root / WORKFLOW).read_text())


def _events(workflow) -> dict:
    on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on:` key as True
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        return dict.fromkeys(on)
    return dict(on or {})


def test_runs_on_every_push_and_pull_request(workflow):
    events = _events(workflow)
    assert {"push", "pull_request"} <= set(events), f"{WORKFLOW} triggers on {sorted(events)}"
    for event in ("push", "pull_request"):  # no branch or path filter: every change is tested
        assert not events[event], f"{WORKFLOW}: {event} is filtered: {events[event]}"


def test_a_step_runs_ci_run_on_ubuntu_with_the_python_floor(workflow, root):
    jobs = [job for job in workflow["jobs"].values() if any(
        str(step.get("run", "")).strip() == "bash .ci/run" for step in job.get("steps", []))]
    assert len(jobs) == 1, f"no job (or more than one) of {WORKFLOW} has a step running exactly `bash .ci/run`"
    job = jobs[0]
    assert (root / ".ci" / "run").is_file()
    assert job["runs-on"] == "ubuntu-latest" and job["timeout-minutes"] == 90
    setup = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/setup-python@")]
    assert len(setup) == 1, "Python must come from actions/setup-python"
    version = setup[0].get("with", {}).get("python-version")
    floor = tomllib.loads((root / "pyproject.toml").read_text())["project"]["requires-python"]
    assert isinstance(version, str) and floor == f">={version}" == ">=3.11", (version, floor)
    steps = [s.get("uses") or s.get("run") for s in job["steps"]]
    assert steps.index(setup[0]["uses"]) < steps.index("bash .ci/run")  # .ci/run's venv takes that Python
    assert any(str(s).startswith("actions/checkout@") for s in steps[:steps.index("bash .ci/run")])


def test_the_suite_runs_on_two_xdist_workers_of_one_thread(root):
    """CONTRIBUTING.md, "Tests" > "Two workers": pyproject.toml's addopts give every `pytest` (CI's
    command in .ci/run included, which must not undo them) two workers that keep each xdist_group
    together, and tests/smoke_env.py gives each worker one thread."""
    import shlex

    ini = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    addopts = shlex.split(ini["addopts"])
    assert addopts[addopts.index("-n") + 1] == "2" and addopts[addopts.index("--dist") + 1] == "loadgroup", addopts
    assert any(line.startswith("pytest-xdist==") for line in (root / "requirements-dev.txt").read_text().splitlines())
    runs = [line for line in (root / ".ci" / "run").read_text().splitlines() if "python -m pytest" in line]
    assert len(runs) == 1 and not {"-n", "-p", "--dist", "--numprocesses"} & set(shlex.split(runs[0])), runs
    smoke = (root / "tests" / "smoke_env.py").read_text()
    assert all(f'os.environ["{var}"] = "1"' in smoke for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"))
