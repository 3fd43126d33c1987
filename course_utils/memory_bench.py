"""Measure training memory and step time, one configuration per fresh process (notebook 05).

Memory left over from an earlier run in the same process (cached blocks, autocast caches,
allocator fragmentation) corrupts a peak, so the parent process never imports torch's CUDA side:
it starts ``python -m course_utils.memory_bench --child CONFIG`` for every configuration, which
builds an architecture-only model (random weights: weight values do not change memory), calls
``torch.cuda.reset_peak_memory_stats()``, trains a few steps with the trainer students use
(TRL's ``SFTTrainer``, or ``transformers.Trainer`` for PEFT's QLoRA, ``qlora_hf``) and reports
``max_memory_allocated()``, ``max_memory_reserved()`` and the median step time, with the GPU
name, the library versions and the configuration. The parent writes the rows to a CSV.

The shipped table is produced on a GPU with (resumable; see ``course_utils/data/memory_measurements.md``)::

    python -m course_utils.memory_bench --grid course --resume --out course_utils/data/memory_measurements.csv

Other uses::

    python -m course_utils.memory_bench --plan --grid course --out table.csv   # estimates only
    python -m course_utils.memory_bench --shape Llama-3.2-3B --method qlora_recipe --out -
    python -m course_utils.memory_bench --shape Llama-3.2-3B --method qlora_recipe --snapshot snap.pickle
        # also writes where the peak's memory went, by category, to data/recipe_snapshot.csv

On a machine without CUDA, ``--device cpu`` runs the same plumbing on the CPU: the GPU columns
stay empty, ``device`` says ``cpu``, and ``cpu_peak_alloc_mib`` holds the CPU peak that PyTorch's
profiler saw (a CPU figure, never a GPU one).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

from .memory import (METHODS, MIB, TrainConfig, estimate_training_memory, offload_configs,
                     recipe_walk_configs)

DEFAULT_OUT = Path(__file__).parent / "data" / "memory_measurements.csv"
REPRODUCE = ("python -m course_utils.memory_bench --grid course --resume "
             "--out course_utils/data/memory_measurements.csv")
VERSION_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes",
                    "liger-kernel", "unsloth")
CONFIG_FIELDS = [f.name for f in fields(TrainConfig)]
FIELD_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}
COLUMNS = (["status", "label", "backend", "device", "gpu", "versions"]
           + [c for c in CONFIG_FIELDS if c != "shape"] + ["shape", "liger_used"]
           + ["peak_alloc_mib", "peak_reserved_mib", "device_used_mib", "cpu_peak_alloc_mib",
              "step_ms", "steps", "shared_gpu", "estimate_mib", "estimate_phase", "paged_estimate_mib",
              "measured_at", "error"])
KEY_FIELDS = ["backend", "device", "shape"] + [c for c in CONFIG_FIELDS if c != "shape"]

GRIDS = {
    # The shipped table: shapes x methods x checkpointing x sequence x attention x optimizer.
    "course": dict(shapes=["SmolLM2-135M", "Llama-3.2-1B", "Llama-3.2-3B"],
                   methods=["full16", "lora16", "qlora_hf", "qlora_trl", "qlora_recipe"],
                   grad_ckpt=[False, True], seq_len=[512, 2048], attn=["eager", "sdpa"],
                   optim=["adamw", "adamw_8bit"], walk=True, mix=True, offload=True),
    # The headline rows (LoRA and QLoRA with checkpointing off and on, the recipe), the walk and
    # activation offloading at Llama-3.2-3B, sequence 512, batch 1 (15 runs).
    "targets": dict(shapes=["Llama-3.2-3B"], methods=["lora16", "qlora_hf", "qlora_trl", "qlora_recipe"],
                    grad_ckpt=[False, True], seq_len=[512], attn=["sdpa"], optim=["adamw"], walk=True, mix=False,
                    offload=True),
    # Notebook 05's "mixing and matching" table alone (at Llama-3.2-1B), for its step times.
    "mix": dict(shapes=[], methods=[], walk=False, mix=True),
    # A few rows a notebook can measure live on a Colab T4.
    "notebook": dict(shapes=["SmolLM2-135M"], methods=["lora16", "qlora_trl"], grad_ckpt=[False, True],
                     seq_len=[512], attn=["eager", "sdpa"], optim=["adamw"], walk=False, mix=False),
}


# The "mixing and matching" table of notebook 05: one change at a time, at Llama-3.2-1B, 512 tokens.
MIX_SHAPE = "meta-llama/Llama-3.2-1B"
MIX_TABLE: list[tuple[str, dict]] = [
    ("full fine-tune, AdamW, eager attention", dict(method="full16", attn="eager", grad_ckpt=False, optim="adamw")),
    ("+ gradient checkpointing", dict(method="full16", attn="eager", grad_ckpt=True, optim="adamw")),
    ("+ 8-bit AdamW", dict(method="full16", attn="eager", grad_ckpt=True, optim="adamw_8bit")),
    ("LoRA r=16 instead (eager, no checkpointing)", dict(method="lora16", attn="eager", grad_ckpt=False, optim="adamw")),
    ("LoRA + SDPA attention", dict(method="lora16", attn="sdpa", grad_ckpt=False, optim="adamw")),
    ("LoRA + SDPA + gradient checkpointing", dict(method="lora16", attn="sdpa", grad_ckpt=True, optim="adamw")),
    ("LoRA + SDPA, batch 4", dict(method="lora16", attn="sdpa", grad_ckpt=False, optim="adamw", batch=4)),
    ("LoRA + SDPA, sequence 2048", dict(method="lora16", attn="sdpa", grad_ckpt=False, optim="adamw", seq_len=2048)),
    ("QLoRA, TRL defaults (SDPA, checkpointing on)", dict(method="qlora_trl", attn="sdpa", grad_ckpt=True, optim="adamw")),
    ("QLoRA course recipe", dict(method="qlora_recipe", attn="sdpa")),
]


def mix_configs(shape: str = MIX_SHAPE, seq_len: int = 512) -> list[tuple[str, TrainConfig]]:
    """The configurations of ``MIX_TABLE``. Gradient accumulation has no row: the harness does not
    accumulate, so nothing here measures it."""
    return [(label, TrainConfig(**{"shape": shape, "seq_len": seq_len, **f}).resolved()) for label, f in MIX_TABLE]


# The headline comparison at Llama-3.2-3B, 512 tokens, batch 1 (memory_measurements.md, notebook 05,
# the README): each way of training with checkpointing off and with the library's default (on).
HEADLINE: list[tuple[str, dict]] = [
    ("LoRA on a 16-bit base, checkpointing off", dict(method="lora16", grad_ckpt=False, optim="adamw")),
    ("QLoRA, PEFT + `Trainer`, checkpointing off", dict(method="qlora_hf", grad_ckpt=False, optim="adamw")),
    ("QLoRA, HF defaults (`prepare_model_for_kbit_training` turns checkpointing on)",
     dict(method="qlora_hf", grad_ckpt=True, optim="adamw")),
    ("QLoRA, TRL `SFTTrainer`, checkpointing off", dict(method="qlora_trl", grad_ckpt=False, optim="adamw")),
    ("QLoRA, TRL defaults (`SFTConfig` turns checkpointing on)",
     dict(method="qlora_trl", grad_ckpt=True, optim="adamw")),
    ("QLoRA, course recipe (TRL defaults + paged 8-bit AdamW + Liger)", dict(method="qlora_recipe")),
]


def headline_configs(shape: str = "meta-llama/Llama-3.2-3B", seq_len: int = 512,
                     batch: int = 1) -> list[tuple[str, TrainConfig]]:
    """The configurations of ``HEADLINE`` at a shape."""
    return [(label, TrainConfig(shape=shape, seq_len=seq_len, batch=batch, **f).resolved()) for label, f in HEADLINE]


def headline_table(rows: list[dict] | None = None, **shape) -> list[dict]:
    """``HEADLINE``'s rows as the table (default: the shipped one) holds them: peak allocated,
    device memory in use (MiB, and GB = 10^9 bytes, the unit published figures use), step time and
    step time against the first row, LoRA on a 16-bit base (``step / LoRA 16-bit``). NaN where not measured."""
    rows = read_table(DEFAULT_OUT) if rows is None else rows
    out = []
    for label, cfg in headline_configs(**shape):
        r = find_row(cfg, rows)
        used = measured(r, "device_used_mib")
        out.append({"configuration": label, "peak allocated MiB": measured(r, "peak_alloc_mib"),
                    "device in use MiB": used, "device in use GB": used * MIB / 1e9,
                    "step ms": measured(r, "step_ms"),
                    "measured on": r["gpu"] if r and r.get("status") == "measured" else ""})
    for row in out:
        row["step / LoRA 16-bit"] = row["step ms"] / out[0]["step ms"]
    return out


def headline_markdown(rows: list[dict] | None = None) -> list[str]:
    """``headline_table`` as the lines of a markdown table (memory_measurements.md quotes them)."""
    lines = ["| configuration | peak allocated | device memory in use | step |", "| --- | --- | --- | --- |"]
    for i, r in enumerate(headline_table(rows)):
        step = f"{r['step ms']:.0f} ms" + ("" if i == 0 else f" ({r['step / LoRA 16-bit']:.2f}×)")
        lines.append(f"| {r['configuration']} | {r['peak allocated MiB']:,.0f} MiB | "
                     f"{r['device in use MiB']:,.0f} MiB ({r['device in use GB']:.2f} GB) | {step} |")
    return lines


# ------------------------------------------------------------------------------------- grid
def grid_configs(name: str = "course", *, layers: int | None = None) -> list[tuple[str, TrainConfig]]:
    """``(label, config)`` for every configuration of a named grid, duplicates removed.

    A method's ``fixed`` fields (the recipe always checkpoints and uses paged 8-bit AdamW) do not
    vary with the grid.
    """
    if name not in GRIDS:
        raise ValueError(f"Unknown grid {name!r}; choose one of {', '.join(GRIDS)}.")
    g = GRIDS[name]
    out, seen = [], set()

    def add(label, cfg):
        cfg = cfg.resolved()
        key = config_key(cfg)
        if key not in seen:
            seen.add(key)
            out.append((label, cfg))

    for shape, method in itertools.product(g["shapes"], g["methods"]):
        fixed = METHODS[method].get("fixed", ())
        axes = {k: ([None] if k in fixed else g[k]) for k in ("grad_ckpt", "seq_len", "attn", "optim")}
        for ck, s, attn, optim in itertools.product(axes["grad_ckpt"], axes["seq_len"], axes["attn"], axes["optim"]):
            add("", TrainConfig(shape=shape, method=method, grad_ckpt=ck, seq_len=s or 512, attn=attn,
                                optim=optim, layers=layers))
    if g["walk"]:
        for i, (label, cfg) in enumerate(recipe_walk_configs(), 1):
            add(f"walk {i}: {label}", replace(cfg, layers=layers))
    if g["mix"]:
        for label, cfg in mix_configs():
            add(f"mix: {label}", replace(cfg, layers=layers))
    if g.get("offload"):
        for label, cfg in offload_configs():
            add(f"offload: {label}", replace(cfg, layers=layers))
    return out


def config_key(cfg: TrainConfig, backend: str = "hf", device: str = "cuda") -> tuple:
    d = asdict(cfg)
    d.update(backend=backend, device=device)
    return tuple(str(d[k]) for k in KEY_FIELDS)


def row_key(row: dict) -> tuple:
    return tuple(str(_parse_value(k, row.get(k, ""))) for k in KEY_FIELDS)


def _parse_value(name, value):
    """CSV text back to the TrainConfig field's Python value."""
    if name not in CONFIG_FIELDS:
        return value
    if value in ("", "None", None):
        return FIELD_DEFAULTS[name]  # also a column the table predates (act_offload: False)
    if name in ("seq_len", "batch", "lora_r", "layers"):
        return int(float(value))
    if name == "lora_dropout":
        return float(value)
    if name in ("grad_ckpt", "double_quant", "upcast", "liger", "amp", "act_offload"):
        return str(value).strip().lower() in ("true", "1", "yes")
    return value


def config_from_row(row: dict) -> TrainConfig:
    return TrainConfig(**{k: _parse_value(k, row.get(k)) for k in CONFIG_FIELDS
                          if row.get(k) not in (None, "")}).resolved()


def plan_row(label: str, cfg: TrainConfig, *, backend: str = "hf", device: str = "cuda",
             status: str = "not measured") -> dict:
    """A table row for ``cfg`` with the estimate filled in and nothing measured."""
    est = estimate_training_memory(cfg, device="cpu" if device == "cpu" else "cuda")
    row = {c: "" for c in COLUMNS}
    row.update({k: ("" if v is None else v) for k, v in asdict(cfg).items()})
    row.update(status=status, label=label, backend=backend, device=device,
               estimate_mib=round(est.peak_mib, 1), estimate_phase=est.phase,
               paged_estimate_mib=round(est.paged_bytes / MIB, 1))
    return row


# -------------------------------------------------------------------------------- CSV I/O
def read_table(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_table(rows: list[dict], path, columns=COLUMNS) -> None:
    """Write rows with ``columns`` (the measurement table's by default), atomically: a crash
    never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".memtable-", suffix=".csv")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({c: row.get(c, "") for c in columns})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def merge_rows(existing: list[dict], new: list[dict]) -> list[dict]:
    """Rows of ``existing`` with those of ``new`` replacing the ones with the same key."""
    index = {row_key(r): i for i, r in enumerate(existing)}
    out = list(existing)
    for r in new:
        k = row_key(r)
        if k in index:
            out[index[k]] = r
        else:
            index[k] = len(out)
            out.append(r)
    return out


def find_row(cfg: TrainConfig, rows: list[dict] | None = None, *, backend: str = "hf",
             device: str = "cuda") -> dict | None:
    """The row of ``cfg`` in ``rows`` (default: the shipped table), or None."""
    rows = read_table(DEFAULT_OUT) if rows is None else rows
    key = config_key(cfg.resolved(), backend, device)
    return next((r for r in rows if row_key(r) == key), None)


def measured(row: dict | None, column: str) -> float:
    """A measured figure of a table row as a float, NaN where there is none: the row is missing,
    not measured on a GPU, or has no such figure (a run that shared the GPU has no step time)."""
    if not row or row.get("status") != "measured":
        return float("nan")
    try:
        return float(row.get(column))
    except (TypeError, ValueError):
        return float("nan")


SNAPSHOT_TABLE = Path(__file__).parent / "data" / "recipe_snapshot.csv"
SNAPSHOT_COLUMNS = ["allocated_by", "mib_at_peak", "gpu", "versions", "config", "peak_alloc_mib", "measured_at"]


def snapshot_rows(summary: "list[tuple[str, float]]", row: dict) -> list[dict]:
    """The rows of a snapshot table (``SNAPSHOT_TABLE``'s columns): one per category of
    ``summarize_snapshot``'s ``summary``, each carrying the GPU, versions, configuration and
    measured peak of the run ``row`` that recorded the snapshot."""
    cfg = config_from_row(row)
    desc = f"{cfg.short_shape} {cfg.method} seq {cfg.seq_len} batch {cfg.batch}" + (f" r={cfg.lora_r}" if cfg.lora else "")
    common = {c: row.get(c, "") for c in ("gpu", "versions", "peak_alloc_mib", "measured_at")}
    return [dict(common, allocated_by=cat, mib_at_peak=round(mib, 1), config=desc) for cat, mib in summary]


def load_measurements(path=DEFAULT_OUT):
    """The measurement table as a pandas DataFrame (numbers as numbers)."""
    import pandas as pd

    df = pd.read_csv(path)
    for col in ("peak_alloc_mib", "peak_reserved_mib", "device_used_mib", "cpu_peak_alloc_mib",
                "step_ms", "estimate_mib", "paged_estimate_mib"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


# ------------------------------------------------------------------------------ the child
def versions() -> str:
    from .mode import package_version

    return ";".join(f"{p}={package_version(p)}" for p in VERSION_PACKAGES if package_version(p))


def _synthetic_tokenizer():
    """A two-token tokenizer (pad, eos): the trainers want one, the data is already token ids."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1}, unk_token="<pad>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>")


def checkpoint_dir(shape: str, layers: int | None = None) -> Path:
    from .models import cache_dir
    from .shapes import short_name

    return cache_dir() / "architectures" / f"{short_name(shape)}-L{layers or 'all'}"


def ensure_checkpoint(shape: str, layers: int | None = None, device: str = "cpu") -> Path:
    """A saved architecture-only model (random bf16 weights) and the synthetic tokenizer, so
    that quantised models can be loaded the way students load them (``from_pretrained`` with a
    ``BitsAndBytesConfig``). Built once per shape and cached."""
    import torch

    from .models import _file_lock, load_architecture

    target = checkpoint_dir(shape, layers)
    if (target / "config.json").exists():
        return target
    with _file_lock(target.parent / ".build.lock"):
        if (target / "config.json").exists():
            return target
        overrides = {"num_hidden_layers": layers} if layers else {}
        model = load_architecture(shape, dtype=torch.bfloat16, device=device, **overrides)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".build-"))
        model.save_pretrained(tmp)
        _synthetic_tokenizer().save_pretrained(tmp)
        del model
        os.replace(tmp, target)
    return target


def _trainer_optim(optim: str, device: str) -> str:
    return {"adamw": "adamw_torch_fused",
            "adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit",
            "paged_adamw_32bit": "paged_adamw_32bit", "sgd": "sgd"}[optim]


def _build_model(cfg: TrainConfig, device: str, backend: str):
    """The model as the configuration loads it; returns ``(model, liger_used)``."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[cfg.compute_dtype]
    overrides = {"num_hidden_layers": cfg.layers} if cfg.layers else {}
    if backend == "unsloth":
        from unsloth import FastLanguageModel  # noqa: F401 - must come before transformers

        path = ensure_checkpoint(cfg.shape, cfg.layers)
        model, _ = FastLanguageModel.from_pretrained(model_name=str(path), max_seq_length=cfg.seq_len,
                                                     dtype=dtype, load_in_4bit=cfg.quant is not None)
        return model, False
    if cfg.quant:
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        path = ensure_checkpoint(cfg.shape, cfg.layers)
        qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.quant,
                                bnb_4bit_use_double_quant=bool(cfg.double_quant),
                                bnb_4bit_compute_dtype=dtype)
        model = AutoModelForCausalLM.from_pretrained(
            path, quantization_config=qc, dtype=dtype, attn_implementation=cfg.attn,
            device_map={"": 0} if device == "cuda" else {"": "cpu"})
        if cfg.upcast:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=bool(cfg.grad_ckpt),
                gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        from .models import load_architecture

        model = load_architecture(cfg.shape, dtype=dtype, device=device, **overrides)
        model.set_attn_implementation(cfg.attn)
    liger_used = False
    if cfg.liger and device == "cuda":
        try:
            from liger_kernel.transformers import _apply_liger_kernel_to_instance

            _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True,
                                            cross_entropy=False, fused_linear_cross_entropy=False)
            liger_used = True
        except ImportError:
            pass
    return model, liger_used


def _dataset(cfg: TrainConfig, vocab: int, n_rows: int):
    import torch
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, vocab, (n_rows, cfg.seq_len), generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def unsupported(cfg: TrainConfig, device: str) -> str | None:
    """Why ``cfg`` cannot run on ``device``, or None."""
    if cfg.act_offload and device != "cuda":
        return ("activation offloading moves a GPU's saved activations to CPU memory: it needs "
                "--device cuda (leave act_offload off for CPU runs)")
    return None


def run_one(cfg: TrainConfig, *, steps: int = 4, warmup: int = 2, device: str = "cuda",
            backend: str = "hf", snapshot: str | None = None, label: str = "") -> dict:
    """Train ``warmup + steps`` steps of ``cfg`` in this process and return the table row.

    Call it in a fresh process (``main`` does): the peak must not include another run's memory.
    """
    cfg = cfg.resolved()
    row = plan_row(label, cfg, backend=backend, device=device, status="error")
    row.update(versions=versions(), measured_at=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
               pid=os.getpid())  # pid: not a column; the tests check that each run has its own process
    problem = unsupported(cfg, device)
    if problem:
        raise ValueError(problem)
    if backend == "unsloth":
        import unsloth  # noqa: F401 - unsloth patches transformers and trl, so it comes first
    import torch
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda needs a CUDA GPU; use --device cpu to test the plumbing.")
        row["gpu"] = torch.cuda.get_device_name(0)
        # without flash attention (before Ampere) SDPA picks other kernels: estimate for this GPU
        flash = torch.cuda.get_device_capability(0) >= (8, 0)
        est = estimate_training_memory(cfg, flash_attention=flash)
        row.update(estimate_mib=round(est.peak_mib, 1), estimate_phase=est.phase)
    torch.manual_seed(0)
    if snapshot and device == "cuda":
        # from the start, so that the weights' blocks carry the stack that allocated them
        torch.cuda.memory._record_memory_history(max_entries=1_000_000)
    model, liger_used = _build_model(cfg, device, backend)
    row["liger_used"] = liger_used
    tok = _synthetic_tokenizer()
    vocab = model.config.get_text_config().vocab_size
    train = _dataset(cfg, vocab, n_rows=(warmup + steps) * cfg.batch)
    times: list[float] = []

    class _Timer(TrainerCallback):
        def __init__(self):
            self.t0 = None
            self.step = 0

        def _sync(self):
            if device == "cuda":
                torch.cuda.synchronize()

        def on_step_begin(self, args, state, control, **kw):
            self.step += 1
            self._sync()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self._sync()
            times.append(time.perf_counter() - self.t0)
            if device == "cuda" and self.step == warmup + steps:
                free, total = torch.cuda.mem_get_info()
                row["device_used_mib"] = round((total - free) / MIB, 1)
                if snapshot:
                    torch.cuda.memory._dump_snapshot(snapshot)
                    torch.cuda.memory._record_memory_history(enabled=None)

    common = dict(output_dir=tempfile.mkdtemp(prefix="membench-"), max_steps=warmup + steps,
                  per_device_train_batch_size=cfg.batch, learning_rate=1e-5 if not cfg.lora else 1e-4,
                  optim=_trainer_optim(cfg.optim, device), gradient_checkpointing=bool(cfg.grad_ckpt),
                  gradient_checkpointing_kwargs={"use_reentrant": False}, logging_steps=10_000,
                  save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
                  bf16=bool(cfg.amp) and cfg.compute_dtype == "bf16",
                  fp16=bool(cfg.amp) and cfg.compute_dtype == "fp16", seed=0,
                  use_cpu=device == "cpu")
    lora_config = None
    if cfg.lora:
        from peft import LoraConfig

        lora_config = LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=cfg.lora_dropout,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        model = FastLanguageModel.get_peft_model(
            model, r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=cfg.lora_dropout,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            use_gradient_checkpointing="unsloth" if cfg.grad_ckpt else False)
        lora_config = None
        common["gradient_checkpointing"] = False  # unsloth checkpoints itself
    if cfg.loss == "chunked":
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(max_length=cfg.seq_len, packing=False, activation_offloading=cfg.act_offload, **common)
        trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tok,
                             peft_config=lora_config, callbacks=[_Timer()])
    else:
        from transformers import Trainer, TrainingArguments, default_data_collator

        if lora_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, lora_config)
            if cfg.grad_ckpt:
                model.enable_input_require_grads()
        args = TrainingArguments(remove_unused_columns=False, **common)
        trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=default_data_collator,
                          callbacks=[_Timer()])
    if cfg.lora and backend == "hf":
        want = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.lora_dtype]
        for p in trainer.model.parameters():
            if p.requires_grad and p.dtype != want:
                p.data = p.data.to(want)
    if device == "cuda":
        import gc

        # what loading left in the allocator's cache would otherwise count as reserved
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        trainer.train()
        row["peak_alloc_mib"] = round(torch.cuda.max_memory_allocated() / MIB, 1)
        row["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / MIB, 1)
    else:
        row["cpu_peak_alloc_mib"] = round(cpu_peak_bytes(trainer.train) / MIB, 1)
    measured = times[warmup:] or times
    row["step_ms"] = round(1000 * statistics.median(measured), 1)
    row["steps"] = len(measured)
    row["status"] = "measured" if device == "cuda" else "cpu"
    return row


def cpu_peak_bytes(fn) -> int:
    """Peak bytes of CPU tensors alive while ``fn`` runs, from PyTorch profiler's memory
    timeline (every tensor's creation and destruction; tensors that existed before, such as the
    weights, count from the start once ``fn`` touches them). A CPU measurement: the CUDA
    allocator's rounding and the CUDA kernels' own buffers are not in it."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        fn()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    return int(max((sum(s) for s in sizes), default=0))


# ------------------------------------------------------------------------------ the parent
def run_isolated(cfg: TrainConfig, *, label: str = "", steps: int = 4, warmup: int = 2,
                 device: str = "cuda", backend: str = "hf", snapshot: str | None = None,
                 timeout: float = 1800, python: str | None = None) -> dict:
    """Run one configuration in a fresh Python process and return its row (never raises for a
    failed run: the row's ``status`` says ``oom`` or ``error`` and ``error`` says why)."""
    cfg = cfg.resolved()
    problem = unsupported(cfg, device)
    if problem:  # before building a checkpoint for it
        row = plan_row(label, cfg, backend=backend, device=device, status="error")
        row["error"] = problem
        return row
    if cfg.quant or backend == "unsloth":
        _build_checkpoint(cfg.shape, cfg.layers, device, python, timeout)
    with tempfile.TemporaryDirectory(prefix="membench-") as tmp:
        result = Path(tmp) / "row.json"
        cmd = [python or sys.executable, "-m", "course_utils.memory_bench", "--child",
               json.dumps(asdict(cfg)), "--result", str(result), "--steps", str(steps),
               "--warmup", str(warmup), "--device", device, "--backend", backend, "--label", label]
        if snapshot:
            cmd += ["--snapshot", str(snapshot)]
        env = dict(os.environ, TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false",
                   PYTORCH_CUDA_ALLOC_CONF=os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            row = plan_row(label, cfg, backend=backend, device=device, status="error")
            row["error"] = f"timed out after {timeout:.0f} s"
            return row
        if result.exists():
            return json.loads(result.read_text())
        row = plan_row(label, cfg, backend=backend, device=device, status="error")
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
        row["error"] = f"exit {proc.returncode}: " + " | ".join(tail)[-400:]
        if "out of memory" in (proc.stderr or "").lower():
            row["status"] = "oom"
        return row


def gpu_memory_mib(python: str | None = None) -> float:
    """Total memory of GPU 0 in MiB (0 without CUDA), asked in a separate process so that this
    one never holds a CUDA context of its own."""
    code = ("import torch; print(torch.cuda.get_device_properties(0).total_memory "
            "if torch.cuda.is_available() else 0)")
    out = subprocess.run([python or sys.executable, "-c", code], capture_output=True, text=True)
    try:
        return float(out.stdout.strip().splitlines()[-1]) / MIB
    except (ValueError, IndexError):
        return 0.0


def _log_row(log, i, n, cfg, row, seconds, shared=False):
    log(f"[{i}/{n}] {cfg.short_shape} {cfg.method} ckpt={cfg.grad_ckpt} s={cfg.seq_len} "
        f"{cfg.attn} {cfg.optim}: {row['status']} peak={row.get('peak_alloc_mib') or row.get('cpu_peak_alloc_mib')} "
        f"MiB est={row['estimate_mib']} ({seconds:.0f} s{', GPU shared' if shared else ''})")


def gpu_share_mib(cfg: TrainConfig) -> float:
    """The GPU memory a configuration is given when runs share the GPU (``--jobs``): its
    estimate with a quarter on top (the estimator's tolerance is 10%) plus 1 GiB for the CUDA
    context and the kernels' workspaces, which the allocator's figures do not count."""
    return 1.25 * estimate_training_memory(cfg).peak_mib + 1024


def run_grid(configs, out, *, resume: bool = True, steps: int = 4, warmup: int = 2,
             device: str = "cuda", backend: str = "hf", gpu_mib: float | None = None,
             jobs: int = 1, log=print) -> list[dict]:
    """Measure ``configs`` (``(label, TrainConfig)`` pairs) one process each, writing ``out``
    after every row. ``resume`` skips rows already measured in ``out``; a configuration whose
    estimate exceeds ``gpu_mib`` is recorded as skipped instead of run into an out-of-memory.

    ``jobs > 1`` runs several processes on the GPU at once, as many as fit in ``gpu_mib`` by
    ``gpu_share_mib``. Each process's peak is its own (the caching allocator counts per process),
    so the memory columns are as good as a run alone, but step times are not: a run that shared
    the GPU gets ``shared_gpu = True`` and no ``step_ms``. A run that fails while sharing is run
    again alone at the end.
    """
    import concurrent.futures as cf
    import threading

    rows = read_table(out) if out != "-" else []
    # a row measured on a shared GPU has no step time: measuring alone (jobs=1) fills it in
    done = {row_key(r) for r in rows if r.get("status") in ("measured", "cpu", "oom")
            and not (jobs <= 1 and str(r.get("shared_gpu")) == "True")}
    todo = []
    for i, (label, cfg) in enumerate(configs, 1):
        if resume and config_key(cfg, backend, device) in done:
            continue
        if gpu_mib and estimate_training_memory(cfg).peak_mib > gpu_mib:
            rows = merge_rows(rows, [plan_row(label, cfg, backend=backend, device=device,
                                              status="skipped: estimate exceeds GPU memory")])
            continue
        todo.append((i, label, cfg))
    n = len(configs)
    lock = threading.Lock()

    def record(row):
        nonlocal rows
        with lock:
            rows = merge_rows(rows, [row])
            if out != "-":
                write_table(rows, out)

    def measure(i, label, cfg, shared):
        t0 = time.time()
        row = run_isolated(cfg, label=label, steps=steps, warmup=warmup, device=device, backend=backend)
        if shared:
            row.update(shared_gpu=True, step_ms="", device_used_mib="")
        with lock:
            _log_row(log, i, n, cfg, row, time.time() - t0, shared)
        return row

    if jobs <= 1 or len(todo) <= 1:
        for i, label, cfg in todo:
            record(measure(i, label, cfg, shared=False))
        return rows
    # Checkpoints first, one at a time: building one inside a measured run would hold the others up.
    for shape, layers in dict.fromkeys((c.shape, c.layers) for _, _, c in todo if c.quant or backend == "unsloth"):
        _build_checkpoint(shape, layers, device)
    budget = 0.92 * (gpu_mib or (gpu_memory_mib() if device == "cuda" else float("inf")))
    pending = sorted(todo, key=lambda t: -gpu_share_mib(t[2]))  # the biggest first
    retry, used, running = [], 0.0, {}
    with cf.ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            # start what fits; with nothing running the first one always fits (need <= budget)
            for item in list(pending):
                need = min(gpu_share_mib(item[2]) if device == "cuda" else 0.0, budget)
                if len(running) < jobs and used + need <= budget:
                    pending.remove(item)
                    used += need
                    running[pool.submit(measure, *item, shared=True)] = (item, need)
            finished, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                item, need = running.pop(fut)
                used -= need
                row = fut.result()
                if row["status"] in ("measured", "cpu"):
                    record(row)
                else:
                    retry.append(item)
    for i, label, cfg in retry:  # alone this time: a failure then is the configuration's own
        record(measure(i, label, cfg, shared=False))
    return rows


def _build_checkpoint(shape: str, layers: int | None, device: str, python: str | None = None,
                      timeout: float = 1800) -> None:
    """Build the architecture-only checkpoint of ``shape`` in a process of its own, so that
    building it never shows in a measurement."""
    if (checkpoint_dir(shape, layers) / "config.json").exists():
        return
    code = ("import sys; from course_utils.memory_bench import ensure_checkpoint; "
            "ensure_checkpoint(sys.argv[1], int(sys.argv[2]) or None, device=sys.argv[3])")
    subprocess.run([python or sys.executable, "-c", code, shape, str(layers or 0), device],
                   capture_output=True, text=True, timeout=timeout)


def plan_table(configs, out, *, device: str = "cuda") -> list[dict]:
    """Write (or refresh) a table whose rows carry estimates only, keeping measured rows."""
    rows = read_table(out)
    measured = {row_key(r) for r in rows if r.get("status") == "measured"}
    new = [plan_row(label, cfg, device=device) for label, cfg in configs
           if config_key(cfg, "hf", device) not in measured]
    rows = merge_rows(rows, new)
    # refresh the estimates of measured rows too: the estimator may have changed
    for r in rows:
        r["estimate_mib"] = round(estimate_training_memory(config_from_row(r)).peak_mib, 1)
    write_table(rows, out)
    return rows


def summarize_snapshot(snapshot) -> "list[tuple[str, float]]":
    """Where the memory is at the peak of a ``torch.cuda.memory._dump_snapshot`` file (or its
    loaded dict): replays the allocation trace, finds the moment of the highest allocated total,
    and sums the blocks alive then by the first recognisable frame of their stack (weights,
    LoRA, optimizer, activations by module, loss...). Returns ``[(category, MiB), ...]``."""
    import pickle

    if not isinstance(snapshot, dict):
        with open(snapshot, "rb") as fh:
            snapshot = pickle.load(fh)
    live: dict[int, tuple[int, str]] = {}
    base = {}
    for seg in snapshot.get("segments", []):
        for blk in seg.get("blocks", []):
            if blk.get("state") == "active_allocated":
                base[blk["address"]] = (blk["size"], _categorize(blk.get("frames", [])))
    # Blocks alive at the start of the trace: alive at the end and never allocated in the trace.
    traced = {e["addr"] for dev in snapshot.get("device_traces", []) for e in dev if e.get("action") == "alloc"}
    live.update({a: v for a, v in base.items() if a not in traced})
    total = sum(v[0] for v in live.values())
    best_total, best = total, dict(live)
    for dev in snapshot.get("device_traces", []):
        for e in dev:
            action = e.get("action")
            if action == "alloc":
                live[e["addr"]] = (e["size"], _categorize(e.get("frames", [])))
                total += e["size"]
                if total > best_total:
                    best_total, best = total, dict(live)
            elif action in ("free_completed",) and e["addr"] in live:
                total -= live.pop(e["addr"])[0]
    sums: dict[str, float] = {}
    for size, cat in best.values():
        sums[cat] = sums.get(cat, 0.0) + size / MIB
    return sorted(sums.items(), key=lambda kv: -kv[1])


_FRAME_CATEGORIES = [
    ("bitsandbytes/optim", "optimizer states"), ("torch/optim", "optimizer states"),
    ("peft/tuners", "LoRA (weights, activations)"), ("chunked_logprob", "LM head and loss"),
    ("loss_utils", "LM head and loss"), ("modeling_llama", "activations (decoder layers)"),
    ("liger_kernel", "activations (decoder layers)"), ("bitsandbytes", "4-bit weights and dequantisation"),
    ("modeling_utils", "weights (loading)"), ("checkpoint", "activations (checkpointing)"),
    ("autograd", "gradients"), ("accelerate", "trainer"), ("trainer", "trainer"),
]


def _categorize(frames) -> str:
    """The category of the innermost frame (snapshots list frames innermost first) that one of
    ``_FRAME_CATEGORIES`` recognises."""
    names = [str(f.get("filename", "")) for f in frames]
    for name in names:
        for needle, cat in _FRAME_CATEGORIES:
            if needle in name:
                return cat
    return "other" if names else "allocated before the trace"


# -------------------------------------------------------------------------------- command
def _parser():
    p = argparse.ArgumentParser(prog="python -m course_utils.memory_bench",
                                description="Measure training memory, one configuration per fresh process.")
    p.add_argument("--grid", choices=sorted(GRIDS), help="a named grid of configurations")
    p.add_argument("--shape", help="one configuration: model shape (e.g. Llama-3.2-3B)")
    p.add_argument("--method", choices=sorted(METHODS), default="qlora_recipe")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--attn", choices=["eager", "sdpa"], default="sdpa")
    p.add_argument("--optim", default=None)
    p.add_argument("--grad-ckpt", choices=["on", "off"], default=None)
    p.add_argument("--act-offload", action="store_true",
                   help="TRL's activation offloading (saved activations to CPU memory; CUDA only)")
    p.add_argument("--layers", type=int, default=None, help="override the number of layers (tests)")
    p.add_argument("--compute-dtype", choices=["bf16", "fp16", "fp32"], default=None)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="CSV to write ('-' prints the rows)")
    p.add_argument("--resume", action="store_true", help="skip rows already measured in --out")
    p.add_argument("--plan", action="store_true", help="write estimates only, measure nothing")
    p.add_argument("--shard", default=None, help="K/N: run only every N-th configuration, from the K-th")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs sharing the GPU at once, as many as fit (their step times are not recorded)")
    p.add_argument("--steps", type=int, default=4, help="measured steps (median step time)")
    p.add_argument("--warmup", type=int, default=2, help="steps before the measured ones")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--backend", choices=["hf", "unsloth"], default="hf")
    p.add_argument("--snapshot", default=None, help="record a memory snapshot of the last step here")
    p.add_argument("--snapshot-table", default=str(SNAPSHOT_TABLE),
                   help="CSV to write the snapshot's memory at the peak by category ('-': print only)")
    p.add_argument("--label", default="")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return p


def _child(args) -> int:
    cfg = TrainConfig(**json.loads(args.child))
    try:
        row = run_one(cfg, steps=args.steps, warmup=args.warmup, device=args.device,
                      backend=args.backend, snapshot=args.snapshot, label=args.label)
    except Exception as err:  # noqa: BLE001 - every failure becomes a row saying why
        row = plan_row(args.label, cfg.resolved(), backend=args.backend, device=args.device, status="error")
        row["versions"] = versions()
        name = type(err).__name__
        row["status"] = "oom" if "OutOfMemory" in name or "out of memory" in str(err).lower() else "error"
        row["error"] = f"{name}: {err}"[:400]
    Path(args.result).write_text(json.dumps(row))
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.child:
        return _child(args)
    if args.grid:
        configs = grid_configs(args.grid, layers=args.layers)
    elif args.shape:
        fields_ = dict(shape=args.shape, method=args.method, seq_len=args.seq_len, batch=args.batch,
                       attn=args.attn, optim=args.optim, layers=args.layers,
                       grad_ckpt=None if args.grad_ckpt is None else args.grad_ckpt == "on",
                       act_offload=args.act_offload)
        if args.compute_dtype:
            fields_["compute_dtype"] = args.compute_dtype
        configs = [(args.label, TrainConfig(**fields_).resolved())]
    else:
        _parser().error("give --grid NAME or --shape SHAPE")
    if args.shard:
        k, n = (int(x) for x in args.shard.split("/"))
        if not 1 <= k <= n:
            _parser().error("--shard K/N needs 1 <= K <= N")
        configs = configs[k - 1::n]
    if args.plan:
        plan_table(configs, args.out, device=args.device)
        print(f"Wrote {len(configs)} estimated rows to {args.out} (nothing measured).")
        return 0
    gpu_mib = None
    if args.device == "cuda":
        gpu_mib = gpu_memory_mib()
        if not gpu_mib:
            print("No CUDA GPU here: run with --device cpu to test the plumbing, or --plan for estimates.")
            return 2
    if args.snapshot and len(configs) == 1:
        row = run_isolated(configs[0][1], label=args.label, steps=args.steps, warmup=args.warmup,
                           device=args.device, backend=args.backend, snapshot=args.snapshot)
        rows = [row]
        if os.path.exists(args.snapshot) and row.get("status") == "measured":
            summary = summarize_snapshot(args.snapshot)
            for cat, mib in summary:
                print(f"{cat:<40} {mib:>10,.1f} MiB")
            if args.snapshot_table != "-":
                write_table(snapshot_rows(summary, row), args.snapshot_table, columns=SNAPSHOT_COLUMNS)
                print(f"Wrote where the peak's memory went to {args.snapshot_table}.")
        elif row.get("status") != "measured":
            print(f"The run did not finish ({row.get('status')}: {row.get('error', '')}); no snapshot table written.")
        if args.out != "-":
            write_table(merge_rows(read_table(args.out), rows), args.out)
    else:
        rows = run_grid(configs, args.out, resume=args.resume, steps=args.steps, warmup=args.warmup,
                        device=args.device, backend=args.backend, gpu_mib=gpu_mib, jobs=args.jobs)
    if args.out == "-":
        writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
