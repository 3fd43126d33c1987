"""Shared fixtures. The reduced-mode environment every kernel inherits is set by
tests/smoke_env.py, loaded as a plugin (pyproject.toml: `-p tests.smoke_env`) so that it applies
to `pytest solutions/...` as well as to the whole suite."""
from pathlib import Path

import pytest

# Notebooks under tests/ are fixtures (the grader's hostile submissions), never run by nbval.
collect_ignore_glob = ["submissions/*", "**/*.ipynb"]

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        # One worker runs the GPU tests, one after another: they measure the GPU's memory and time.
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(pytest.mark.xdist_group("gpu"))
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def root():
    return ROOT


@pytest.fixture(scope="session")
def tokenizer():
    import course_utils as cu

    return cu.load_tokenizer(quiet=True)
