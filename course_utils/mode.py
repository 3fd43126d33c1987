"""Reduced vs full mode, device and dtype, seeding: what every notebook's setup cell calls."""
from __future__ import annotations

import os
import platform
import random
from dataclasses import dataclass
from importlib import metadata

SMOKE_VAR = "COURSE_SMOKE"
OUTPUTS_VAR = "COURSE_OUTPUTS"
PRINTED_PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes")


def is_reduced() -> bool:
    """True when reduced mode is on (``COURSE_SMOKE=1``): CPU, offline, a few steps."""
    return os.environ.get(SMOKE_VAR, "").strip().lower() in {"1", "true", "yes", "on"}


def for_mode(*, full, reduced):
    """Pick the full-mode value or the reduced-mode value, e.g. ``for_mode(full=200, reduced=5)``."""
    return reduced if is_reduced() else full


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def pick_device() -> str:
    """``cuda`` when a GPU is there and we are not in reduced mode, else ``cpu``."""
    return "cuda" if has_cuda() and not is_reduced() else "cpu"


def gpu_has_native_bf16(capability: tuple[int, int] | None = None) -> bool:
    """bf16 in hardware needs compute capability 8.0 (Ampere) or newer.

    ``torch.cuda.is_bf16_supported()`` answers True on a T4 (7.5) because it emulates bf16,
    slowly, so we decide from the capability instead.
    """
    if capability is None:
        import torch

        capability = torch.cuda.get_device_capability()
    return tuple(capability) >= (8, 0)


GPU_DTYPE_VAR = "COURSE_GPU_DTYPE"


def pick_dtype(device: str | None = None):
    """bf16 on GPUs with native bf16, fp16 on older GPUs such as the T4, float32 on CPU.

    ``COURSE_GPU_DTYPE=fp16`` makes a newer GPU take the T4's fp16 path (to check that path, or
    to compare with a T4), and ``bf16`` the other way round; the CPU always trains in float32.
    """
    import torch

    device = device or pick_device()
    if device != "cuda":
        return torch.float32
    forced = os.environ.get(GPU_DTYPE_VAR, "").strip().lower()
    if forced:
        if forced not in ("fp16", "bf16"):
            raise ValueError(f"{GPU_DTYPE_VAR}={forced!r}: use fp16 (the T4 path) or bf16, or unset it.")
        return torch.float16 if forced == "fp16" else torch.bfloat16
    return torch.bfloat16 if gpu_has_native_bf16() else torch.float16


def training_precision(device: str | None = None) -> dict:
    """Keyword arguments for ``SFTConfig``/``DPOConfig``/``TrainingArguments``.

    TRL's configs default to bf16 and gradient checkpointing; on CPU both must be off, and a T4
    needs fp16 instead of bf16.
    """
    import torch

    dtype = pick_dtype(device)
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16}


def trainer_settings() -> dict:
    """The ``SFTConfig``/``DPOConfig`` fields that follow the machine rather than the lesson:
    the precision (``training_precision``), gradient checkpointing on a GPU only (it saves T4
    memory and only costs time on a CPU), the CPU when there is no GPU or in reduced mode, and no
    checkpoints, progress bars or experiment trackers."""
    on_gpu = pick_device() == "cuda"
    return {"gradient_checkpointing": on_gpu, "use_cpu": not on_gpu, "save_strategy": "no",
            "report_to": "none", "disable_tqdm": True, **training_precision()}


def seed_everything(seed: int = 42) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Env:
    """What ``setup()`` found: use ``env.device`` and ``env.dtype`` in the notebook."""

    device: str
    dtype: object
    reduced: bool
    gpu_name: str | None
    seed: int

    @property
    def mode(self) -> str:
        return "reduced (COURSE_SMOKE=1: CPU, offline, few steps)" if self.reduced else "full"


def setup(seed: int = 42, *, quiet: bool = False) -> Env:
    """Seed everything, choose device and dtype, and print what the notebook runs with."""
    import torch

    if is_reduced():
        # Reduced mode never reaches for the hub, and progress bars clutter executed notebooks.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars, read before TQDM_DISABLE is
        import datasets

        datasets.disable_progress_bars()
    seed_everything(seed)
    device = pick_device()
    dtype = pick_dtype(device)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    env = Env(device=device, dtype=dtype, reduced=is_reduced(), gpu_name=gpu, seed=seed)
    if not quiet:
        versions = ", ".join(f"{p} {package_version(p) or '-'}" for p in PRINTED_PACKAGES)
        print(f"Python {platform.python_version()}; {versions}")
        where = f"cuda ({gpu})" if gpu else "cpu"
        print(f"device: {where} | dtype: {str(dtype).replace('torch.', '')} | mode: {env.mode} | seed: {seed}")
        if not gpu and not env.reduced:
            print("No GPU: full mode trains slowly on a CPU. On Colab choose Runtime > Change runtime type > "
                  "T4 GPU; elsewhere run `%env COURSE_SMOKE=1` before this cell for reduced mode.")
    return env


def needs_gpu(what: str) -> bool:
    """Guard for cells that truly need CUDA: prints one line and returns False without a GPU."""
    if is_reduced():
        print(f"Skipped: {what} needs a CUDA GPU, and reduced mode runs on the CPU.")
        return False
    if not has_cuda():
        print(f"Skipped: {what} needs a CUDA GPU and none is available "
              "(on Colab: Runtime > Change runtime type > T4 GPU).")
        return False
    return True


def output_dir(stem: str):
    """Where a notebook writes adapters and checkpoints: ``$COURSE_OUTPUTS/<stem>`` (default
    ``outputs/<stem>`` next to the notebook). Created if missing."""
    from pathlib import Path

    path = Path(os.environ.get(OUTPUTS_VAR, "outputs")) / stem
    path.mkdir(parents=True, exist_ok=True)
    return path
