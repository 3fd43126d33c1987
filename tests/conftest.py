"""Test-wide settings: every kernel nbval or nbclient starts inherits this environment, so every
notebook runs in reduced mode, offline, without progress bars."""
import os
import tempfile

os.environ["COURSE_SMOKE"] = "1"
os.environ["TQDM_DISABLE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["MPLBACKEND"] = "Agg"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("COURSE_OUTPUTS", tempfile.mkdtemp(prefix="course-outputs-"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# Notebooks under tests/ are fixtures (the grader's hostile submissions), never run by nbval.
collect_ignore_glob = ["submissions/*", "**/*.ipynb"]

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
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
