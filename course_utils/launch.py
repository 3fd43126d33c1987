"""Notebook 03's Yoda SFT outside the notebook, for ``trl sft`` / ``accelerate launch`` (``course_utils/data/multi_gpu/``).

The config files ship inside the package (``CONFIG_DIR``), so they are there on Colab too:
``sft_yoda.yaml`` (the recipe for ``trl sft --config``) and ``accelerate/*.yaml`` (DDP, FSDP2,
DeepSpeed ZeRO-3, and the two with CPU offload), for ``trl sft --accelerate_config``.

``python -m course_utils.launch prepare-data OUT_DIR`` writes ``OUT_DIR/train.jsonl``: the
training split of ``yoda.load_yoda("train")`` as conversational prompt/completion rows
(``yoda.to_conversations``), which ``trl sft`` reads with ``dataset_name: OUT_DIR``. It then prints
the model to pass as ``model_name_or_path``: the hub id in full mode, or the offline
SmolLM2-135M-Instruct folder (``models.fallback_model_dir()``) in reduced mode or without the hub.
"""
from __future__ import annotations

import argparse
import json
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from . import yoda
from .models import FALLBACK_ID, resolve_model_id

CONFIG_DIR = Path(__file__).parent / "data" / "multi_gpu"
SFT_CONFIG = CONFIG_DIR / "sft_yoda.yaml"
ACCELERATE_CONFIGS = {p.stem: p for p in sorted((CONFIG_DIR / "accelerate").glob("*.yaml"))}


def write_train_jsonl(out_dir, *, source: str = "auto") -> Path:
    """Write ``out_dir/train.jsonl`` (one ``{"prompt": [...], "completion": [...]}`` per line)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; OUT_DIR must be a folder (it is created if missing).")
    out.mkdir(parents=True, exist_ok=True)
    rows = yoda.to_conversations(yoda.load_yoda("train", source=source, quiet=True))
    path = out / "train.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps({"prompt": row["prompt"], "completion": row["completion"]}) + "\n")
    return path


def trl_command() -> list[str]:
    """The ``trl`` command of this Python environment (its console script, else ``-m trl.cli.main``)."""
    script = Path(sys.executable).with_name("trl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "trl.cli.main"]


def free_port() -> int:
    """A free TCP port on this machine, for the processes of one launch to meet on (two launches at
    once, as when a class is graded in parallel, must not share one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine_args(device: str, precision: dict | None = None) -> list[str]:
    """The ``trl sft`` flags that follow the machine, as ``course_utils.trainer_settings()`` chooses
    them in a notebook: on a CPU float32, no mixed precision, no checkpointing, ``use_cpu`` (which
    makes the launched processes data-parallel over gloo); on a GPU the yaml's checkpointing and
    ``precision`` (``training_precision()``: bf16, or fp16 on a T4 with float32 weights)."""
    if device == "cpu":
        return ["--dtype", "float32", "--bf16", "false", "--fp16", "false", "--use_cpu", "true",
                "--gradient_checkpointing", "false"]
    if device != "cuda":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}.")
    precision = precision or {"bf16": True, "fp16": False}
    dtype = "bfloat16" if precision.get("bf16") else "float32"
    return ["--dtype", dtype, "--bf16", str(bool(precision.get("bf16"))).lower(),
            "--fp16", str(bool(precision.get("fp16"))).lower()]


def sft_command(model: str, data_dir, output_dir, *, n_processes: int = 2, accelerate_config: str = "ddp",
                device: str = "cpu", precision: dict | None = None, port: int | None = None,
                **overrides) -> list[str]:
    """``trl sft`` on ``SFT_CONFIG`` with ``n_processes`` processes under ``accelerate_config``
    (a name of ``ACCELERATE_CONFIGS``), the machine's flags (``machine_args``), and any
    ``SFTConfig``/``ModelConfig`` field in ``overrides`` (``max_steps=4`` becomes ``--max_steps 4``)."""
    if accelerate_config not in ACCELERATE_CONFIGS:
        raise ValueError(f"accelerate_config must be one of {sorted(ACCELERATE_CONFIGS)}, got {accelerate_config!r}.")
    if not isinstance(n_processes, int) or isinstance(n_processes, bool) or n_processes <= 0:
        raise ValueError(f"n_processes must be a positive integer, got {n_processes!r}.")
    cmd = [*trl_command(), "sft", "--config", str(SFT_CONFIG), "--model_name_or_path", str(model),
           "--dataset_name", str(data_dir), "--output_dir", str(output_dir), *machine_args(device, precision)]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    if n_processes > 1:
        cmd += ["--accelerate_config", str(ACCELERATE_CONFIGS[accelerate_config]),
                "--main_process_port", str(port or free_port())]
    return cmd + ["--num_processes", str(n_processes)]


def run_sft(cmd: list[str], *, timeout: float = 1800, env: dict | None = None) -> float:
    """Run a launch command; return its wall time in seconds. A failure raises with the end of
    its output (the error of the first process that failed is usually there)."""
    import time

    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"the launch failed (exit {proc.returncode}):\n{shlex.join(cmd)}\n"
                           f"{(proc.stdout + proc.stderr)[-3000:]}")
    return time.time() - start


def log_history(output_dir, step: int) -> list[dict]:
    """The ``log_history`` of a run saved with ``save_strategy=steps`` at ``step``."""
    path = Path(output_dir) / f"checkpoint-{step}" / "trainer_state.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: launch with --save_strategy steps --save_steps {step} "
                                "(the checkpoint carries the run's log).")
    return json.loads(path.read_text())["log_history"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m course_utils.launch", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare-data", help="write OUT_DIR/train.jsonl and print the model path to train")
    prep.add_argument("out_dir", metavar="OUT_DIR", help="folder for train.jsonl (created if missing)")
    prep.add_argument("--source", choices=("auto", "hub", "local"), default="auto",
                      help="Yoda data: the hub data set, the project's sample, or auto (default)")
    prep.add_argument("--model", default=FALLBACK_ID, help=f"model id to resolve (default {FALLBACK_ID})")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        path = write_train_jsonl(args.out_dir, source=args.source)
    except ValueError as err:
        parser.error(str(err))
    n_rows = sum(1 for _ in open(path, encoding="utf-8"))
    print(f"wrote {n_rows} rows to {path}", file=sys.stderr)
    print(resolve_model_id(args.model, quiet=True))  # stdout: the model_name_or_path to use
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
