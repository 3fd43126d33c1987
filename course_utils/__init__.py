"""Helpers shared by the fine-tuning workbook's notebooks.

Each module matches a topic: ``mode`` (reduced/full mode, device, dtype, setup), ``models``
(loading with the offline fallback), ``chat`` (templates, notebook 01), ``checks`` (self-checks
and hidden probes), ``build`` (solutions -> student and Colab notebooks).
"""
from .checks import CheckFailed, check_close, check_equal, check_true, checking, probe
from .mode import (Env, for_mode, has_cuda, is_reduced, needs_gpu, output_dir, pick_device, pick_dtype,
                   seed_everything, setup, training_precision)
from .models import (FALLBACK_ID, generate, load_architecture, load_model, load_tokenizer,
                     resolve_model_id)
from .shapes import SHAPES

__version__ = "0.1.0"

__all__ = [
    "CheckFailed", "check_close", "check_equal", "check_true", "checking", "probe",
    "Env", "for_mode", "has_cuda", "is_reduced", "needs_gpu", "output_dir", "pick_device", "pick_dtype",
    "seed_everything", "setup", "training_precision",
    "FALLBACK_ID", "generate", "load_architecture", "load_model", "load_tokenizer", "resolve_model_id",
    "SHAPES",
]
