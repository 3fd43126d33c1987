"""Time whole notebooks: how long each takes top to bottom, and the memory its kernel used.

The README's figures for full mode come from this command::

    python -m course_utils.timing solutions/03_yoda_sft.ipynb solutions/06_dpo.ipynb --out runs/

Each notebook runs in a fresh kernel (started from a fresh Python process, so that one notebook's
peak never counts for another), in the given order, from the notebook's own folder as Jupyter
would, with ``COURSE_OUTPUTS`` pointing at ``OUT/outputs`` for every notebook (06 finds 03's
adapter there). Full mode unless ``--reduced``; progress bars off. It writes each executed
notebook to ``OUT/`` (plots and printed figures included: the notebooks print their own GPU
peaks) and appends one row per notebook to ``OUT/timings.csv``: the seconds, the kernel's peak
resident memory (RAM, not GPU memory), the slowest cells, the machine and the library versions.
A notebook that fails still gets its row (``status`` says which cell raised) and its executed copy.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from .mode import GPU_DTYPE_VAR, OUTPUTS_VAR, PRINTED_PACKAGES, SMOKE_VAR, package_version

COLUMNS = ["notebook", "mode", "status", "seconds", "kernel_peak_rss_mib", "slowest_cells", "gpu",
           "gpu_dtype", "cpu", "cpu_count", "python", "versions", "measured_at", "error"]


def versions() -> str:
    """``name=version;...`` of the packages every notebook's setup cell prints."""
    return ";".join(f"{p}={package_version(p)}" for p in PRINTED_PACKAGES if package_version(p))


def machine() -> dict:
    """The CPU, core count and (if ``nvidia-smi`` sees one) the GPU of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    # nvidia-smi, not torch: a CUDA context in this process would hold GPU memory while the
    # notebooks run
    try:
        query = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=60)
        gpu = query.stdout.strip().splitlines()[0] if query.returncode == 0 and query.stdout.strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        gpu = ""
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "gpu": gpu, "python": platform.python_version()}


def _cell_seconds(cell) -> float | None:
    ex = cell.get("metadata", {}).get("execution", {})
    start, end = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
    if not (start and end):
        return None
    parse = lambda s: _dt.datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def slowest_cells(nb, n: int = 3) -> list[tuple[int, float, str]]:
    """The ``n`` slowest code cells of an executed notebook: ``(index, seconds, first line)``."""
    timed = []
    for i, cell in enumerate(nb.cells):
        secs = _cell_seconds(cell) if cell.cell_type == "code" else None
        if secs is not None:
            first = next((ln for ln in cell.source.splitlines() if ln.strip()), "")
            timed.append((i, secs, first[:60]))
    return sorted(timed, key=lambda t: -t[1])[:n]


def execute(src: Path, dst: Path, *, cell_timeout: int = -1) -> dict:
    """Run ``src`` in a fresh kernel, write the executed copy to ``dst`` and return the row.
    Call it in a fresh process (``main`` does): the kernel's peak memory is read from this
    process's finished children."""
    import nbformat

    from .kernels import run_notebook

    nb = nbformat.read(src, as_version=4)
    start = time.perf_counter()
    ran = run_notebook(nb, cwd=str(src.parent.resolve()), cell_timeout=None if cell_timeout < 0 else cell_timeout)
    status, error = ran["status"], ran["error"]
    seconds = time.perf_counter() - start
    dst.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dst)
    # ru_maxrss is in KiB on Linux: the largest finished child, here the kernel
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    slow = "; ".join(f"[{i}] {s:.0f} s {first}" for i, s, first in slowest_cells(nb))
    return {"status": status, "seconds": round(seconds, 1), "kernel_peak_rss_mib": round(rss, 1),
            "slowest_cells": slow, "error": error}


def append_rows(rows: list[dict], path: Path) -> None:
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _parser():
    p = argparse.ArgumentParser(prog="python -m course_utils.timing",
                                description="Execute notebooks top to bottom, each in a fresh kernel, and time them.")
    p.add_argument("notebooks", nargs="+", help="notebooks to run, in this order (e.g. solutions/03_yoda_sft.ipynb)")
    p.add_argument("--out", default="runs", help="folder for the executed notebooks and timings.csv")
    p.add_argument("--reduced", action="store_true", help="reduced mode (COURSE_SMOKE=1) instead of full mode")
    p.add_argument("--gpu-dtype", choices=["fp16", "bf16"], default=None,
                   help="COURSE_GPU_DTYPE: fp16 makes a newer GPU take a T4's code path")
    p.add_argument("--cell-timeout", type=int, default=-1, help="seconds per cell (-1: no limit)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    out = Path(args.out)
    if args.child:
        src, dst = (Path(p) for p in json.loads(args.child))
        print(json.dumps(execute(src, dst, cell_timeout=args.cell_timeout)))
        return 0
    missing = [nb for nb in args.notebooks if not Path(nb).is_file()]
    if missing:
        print(f"No such notebook: {', '.join(missing)}. Give paths such as solutions/03_yoda_sft.ipynb.",
              file=sys.stderr)
        return 2
    (out / "outputs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TQDM_DISABLE="1")
    env[OUTPUTS_VAR] = str((out / "outputs").resolve())
    env.pop(SMOKE_VAR, None)
    env.pop("MPLBACKEND", None)  # the kernel's inline backend keeps the plots in the executed copy
    if args.reduced:
        env[SMOKE_VAR] = "1"
    if args.gpu_dtype:
        env[GPU_DTYPE_VAR] = args.gpu_dtype
    info = dict(machine(), versions=versions(), mode="reduced" if args.reduced else "full",
                gpu_dtype=args.gpu_dtype or "")
    failed = 0
    for nb in args.notebooks:
        src, dst = Path(nb), out / Path(nb).name
        cmd = [sys.executable, "-m", "course_utils.timing", "--child", json.dumps([str(src), str(dst)]),
               "--cell-timeout", str(args.cell_timeout), nb]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = proc.stdout.strip().splitlines()
        try:
            row = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            row = {"status": "runner failed", "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
        row.update(info, notebook=src.name,
                   measured_at=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"))
        append_rows([row], out / "timings.csv")
        failed += row["status"] != "ok"
        print(f"{src.name}: {row['status']}, {row.get('seconds', '?')} s, kernel peak RSS "
              f"{row.get('kernel_peak_rss_mib', '?')} MiB{'; ' + row['error'] if row.get('error') else ''}")
    print(f"Executed notebooks and timings.csv in {out}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
