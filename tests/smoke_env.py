"""Reduced mode for every test and every kernel that nbval or nbclient starts (they inherit this
process's environment): offline, on the CPU, no progress bars. Loaded before collection through
`-p tests.smoke_env` in pyproject.toml, so `pytest solutions/01_chat_templates.ipynb` alone also
runs in reduced mode."""
import os
import tempfile

os.environ["COURSE_SMOKE"] = "1"
os.environ["TQDM_DISABLE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["MPLBACKEND"] = "Agg"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("COURSE_OUTPUTS", tempfile.mkdtemp(prefix="course-outputs-"))
