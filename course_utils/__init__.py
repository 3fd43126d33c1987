"""Helpers shared by the fine-tuning workbook's notebooks.

Shared plumbing: ``mode`` (reduced/full mode, device, dtype, setup), ``models`` (loading with
the offline fallback, batched greedy generation), ``hub`` (is the hub there; hub data or the
project's sample), ``checks`` (self-checks and hidden probes), ``shapes`` (published model
shapes), ``build`` (solutions -> student and Colab notebooks), ``grade`` (the grader). One module
per notebook topic: ``chat`` (01), ``pig_latin`` and ``collators`` (02), ``yoda`` (03), ``lora``
(04), ``memory`` and ``memory_bench`` (05), ``dpo`` (06), ``instruct`` (07), ``sharding`` and
``launch`` (09).
"""
from .checks import CheckFailed, check_close, check_equal, check_true, checking, probe
from .mode import (Env, for_mode, has_cuda, is_reduced, needs_gpu, output_dir, pick_device, pick_dtype,
                   seed_everything, setup, trainer_settings, training_precision)
from .models import (FALLBACK_ID, generate, load_architecture, load_model, load_tokenizer,
                     resolve_model_id)
from .shapes import SHAPES

__version__ = "0.1.0"

__all__ = [
    "CheckFailed", "check_close", "check_equal", "check_true", "checking", "probe",
    "Env", "for_mode", "has_cuda", "is_reduced", "needs_gpu", "output_dir", "pick_device", "pick_dtype",
    "seed_everything", "setup", "trainer_settings", "training_precision",
    "FALLBACK_ID", "generate", "load_architecture", "load_model", "load_tokenizer", "resolve_model_id",
    "SHAPES",
]
