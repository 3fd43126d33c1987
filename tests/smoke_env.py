"""Reduced mode for every test and every kernel that nbval or nbclient starts (they inherit this
process's environment): offline, on the CPU, no progress bars. Loaded before collection through
`-p tests.smoke_env` in pyproject.toml, so `pytest solutions/01_chat_templates.ipynb` alone also
runs in reduced mode.

The suite runs on two pytest-xdist workers (`-n 2` in pyproject.toml). This plugin is loaded in
the controller and again in each worker (which inherits the controller's environment), so:

- a worker uses one thread (OpenMP, MKL, torch) and so does every kernel or process it starts:
  two workers of two threads each on two cores spin-wait on each other, about 7x slower;
- a worker writes notebook outputs to its own `$COURSE_OUTPUTS/<worker id>/` (the controller's
  folder, or the caller's), so that two workers never write or read one `<stem>/` at once; a
  notebook that reads another's outputs (06 reads 03's adapter) finds them only when both ran
  on that worker, which the tests that rely on it ensure with an `xdist_group` mark;
- the cells of one notebook collected by nbval stay on one worker (one kernel runs them in order).
"""
import os
import sys
import tempfile

import pytest

os.environ["COURSE_SMOKE"] = "1"
os.environ["TQDM_DISABLE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["MPLBACKEND"] = "Agg"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("COURSE_OUTPUTS", tempfile.mkdtemp(prefix="course-outputs-"))

WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", ... in an xdist worker, else None
if WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    if "torch" in sys.modules:  # imported by another plugin before this one: too late for the variables
        sys.modules["torch"].set_num_threads(1)
    os.environ["COURSE_OUTPUTS"] = os.path.join(os.environ["COURSE_OUTPUTS"], WORKER)
    os.makedirs(os.environ["COURSE_OUTPUTS"], exist_ok=True)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        if type(item).__name__ == "IPyNbCell" and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(f"nbval-{item.path.stem}"))
