"""Whether the Hugging Face hub answers, and loading a hub data set with the project's own sample
as the offline stand-in (CONTRIBUTING.md, "Models and data" > "The offline fallback")."""
from __future__ import annotations

import os
import socket
from urllib.parse import urlparse
from urllib.request import getproxies

from .mode import is_reduced

SOURCES = ("auto", "hub", "local")


def reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers at all: a quick TCP check, so that an offline machine does not wait
    through the hub client's retries (about 25 s per file). False when ``HF_HUB_OFFLINE`` or
    ``HF_DATASETS_OFFLINE`` is set."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    proxy = getproxies().get(endpoint.scheme)  # behind a proxy, the proxy is what must answer
    target = urlparse(proxy if "://" in (proxy or "") else f"http://{proxy}") if proxy else endpoint
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        with socket.create_connection((target.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_or_local(source: str, dataset_id: str, load_hub, load_local, *, quiet: bool = False):
    """``load_hub()`` or ``load_local()``, as ``source`` says.

    ``"hub"`` and ``"local"`` load that one (a hub failure is raised). ``"auto"`` loads from the
    hub in full mode when it answers and from the local sample otherwise (reduced mode, no
    hub, or any error loading from the hub), with a one-line message saying why.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be 'auto', 'hub' or 'local', not {source!r}.")
    if source == "local":
        return load_local()
    if source == "hub":
        return load_hub()
    why = "reduced mode" if is_reduced() else "the dataset hub is unreachable"
    if why != "reduced mode" and reachable():
        try:
            return load_hub()
        except Exception as err:  # noqa: BLE001 - any hub failure falls back to the local sample
            why = f"loading it failed: {type(err).__name__}"
    data = load_local()
    if not quiet:
        print(f"Using the {len(data)} rows shipped with course_utils instead of {dataset_id} ({why}).")
    return data
