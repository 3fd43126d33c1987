"""Running one graded notebook: a worker process per notebook, its folders, its time limit, its end.

Every run gets fresh folders with no telling names: the kernel's work folder (in the sandbox, a
private tmpfs instead), the probe folder (the only host folder the kernel writes), the kernel's
socket folder, and the worker's log folder, which no kernel can see. The worker is killed with its
whole process group at the time limit; in the sandbox its kernel and everything the submission
started go with it (``--die-with-parent``, the PID namespace).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..checks import PROBE_FILE_VAR
from .planning import Step, plan
from .sandbox import WORK, Limits, Sandbox
from .solutions import Assignment, Cell
from .worker import read_probes

GRACE_S = 60  # worker start and kernel shutdown on top of the notebook's time limit


@dataclass
class Settings:
    timeout: float = 900
    cell_timeout: float = 300
    max_output: int = 10 * 2**20
    threads: int = 1
    hide: list = field(default_factory=list)  # paths the kernel's environment must not mention
    limits: Limits | None = None  # None: no sandbox (--no-sandbox)
    site: str | None = None  # the staged course_utils copy the sandbox shows
    cache: str | None = None  # the offline model's cache folder


@dataclass
class Run:
    steps: list[Step]
    done: dict[int, dict]  # step index -> {"status", "ename", "evalue", "probe_lines"}
    end: str  # done | timeout | stuck | kernel-died | grader-error
    end_step: int | None
    error: str
    truncated_at: int | None
    probes: list[dict | None]  # the probe file's records (None: a line that is not a record)
    executed: bytes | None
    seconds: float


_LIVE: set = set()
_LIVE_LOCK = threading.Lock()
STOP = threading.Event()


def kernel_env(workdir: str, threads: int, hide: list[str]) -> dict:
    drop = {PROBE_FILE_VAR, "OLDPWD", "JPY_PARENT_PID", "JPY_SESSION_NAME", "PYTEST_CURRENT_TEST",
            "PYTHONPATH", "COURSE_CACHE"}
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not any(h and h in v for h in hide)}
    env.update(COURSE_SMOKE="1", TQDM_DISABLE="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0", PWD=workdir, MPLBACKEND="Agg",
               COURSE_OUTPUTS=str(Path(workdir) / "outputs"))
    if "COURSE_CACHE" in os.environ and not any(h in os.environ["COURSE_CACHE"] for h in hide):
        env["COURSE_CACHE"] = os.environ["COURSE_CACHE"]
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, str(threads))
    return env


def kill_group(pid: int | None) -> None:
    if pid and hasattr(os, "killpg"):
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


def _kill_kernel(pid: int | None) -> None:
    """Kill a kernel left behind by a dead worker (checked to be an ipykernel or bwrap first)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if pid else b""
    except OSError:
        return
    if b"ipykernel" in cmdline or b"bwrap" in cmdline:
        kill_group(pid)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def kill_all() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        kill_group(proc.pid)  # its kernel notices its parent is gone and exits


def _shown(step: Step) -> str | None:
    """What the executed copy shows: the student's source for their cells, nothing of the grader's."""
    if step.kind == "exercise":
        return step.student.source
    if step.kind == "solution":
        return step.cell.source
    return None


def run_notebook(assignment: Assignment, student_cells: list[Cell] | None, settings: Settings) -> Run:
    """Execute one graded run (``student_cells=None``: the reference) in a worker process."""
    folders = [tempfile.mkdtemp(prefix="course-grade-") for _ in range(4)]
    work, probe_dir, log_dir, conn = folders
    started = time.monotonic()
    try:
        probe_file = Path(probe_dir) / "probes.jsonl"
        probe_file.touch()
        steps = plan(assignment, student_cells, str(probe_file))
        log = Path(log_dir) / "log.jsonl"
        sandbox = None
        if settings.limits is not None:
            sandbox = Sandbox(settings.site, settings.cache, conn, probe_dir, settings.limits).to_dict()
        inside = WORK if sandbox else work
        job = {"sources": [s.source for s in steps], "shown": [_shown(s) for s in steps],
               "workdir": inside, "probe_file": str(probe_file), "log": str(log),
               "executed": str(Path(log_dir) / "executed.ipynb"), "sandbox": sandbox,
               "env": kernel_env(inside, settings.threads, settings.hide + [probe_dir, log_dir, conn]),
               "timeout": settings.timeout, "cell_timeout": settings.cell_timeout,
               "max_output": settings.max_output}
        with open(Path(log_dir) / "worker.txt", "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "course_utils.grade.worker"],
                                    stdin=subprocess.PIPE, stdout=out, stderr=out, cwd=log_dir,
                                    start_new_session=True)
            with _LIVE_LOCK:
                _LIVE.add(proc)
                if STOP.is_set():
                    kill_group(proc.pid)
            killed = False
            try:
                proc.communicate(json.dumps(job).encode(), timeout=settings.timeout + GRACE_S)
            except subprocess.TimeoutExpired:
                killed = True
                kill_group(proc.pid)
                proc.wait()
            finally:
                with _LIVE_LOCK:
                    _LIVE.discard(proc)
        run = _read_run(steps, log, probe_file, Path(log_dir), killed)
        run.seconds = round(time.monotonic() - started, 1)
        return run
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def _read_run(steps, log: Path, probe_file: Path, log_dir: Path, killed: bool) -> Run:
    done, started, end, kernel_pid, truncated, error = {}, None, None, None, None, ""
    try:
        lines = log.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "kernel_pid" in rec:
            kernel_pid = rec["kernel_pid"]
        elif "start" in rec:
            started = rec["start"]
        elif "step" in rec and "status" in rec:
            done[rec["step"]] = rec
        if "end" in rec:
            end, truncated, error = rec, rec.get("truncated_at"), rec.get("error", "")
    if end is None:  # the worker was killed: by the time limit, from inside the notebook, or a bug
        _kill_kernel(kernel_pid)
        said = (log_dir / "worker.txt").read_bytes()[-3000:].decode(errors="replace").strip()
        if killed:
            end = {"end": "timeout", "step": started}
        elif kernel_pid is None or "Traceback" in said:
            end = {"end": "grader-error", "step": started}
            error = said[-500:] or "the worker process ended without a word"
        else:
            end = {"end": "kernel-died", "step": started}
    probes = []
    for line in read_probes(str(probe_file)).decode("utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            rec = None
        probes.append(rec if isinstance(rec, dict) and isinstance(rec.get("exercise"), str)
                      and isinstance(rec.get("name"), str) else None)
    executed = None
    with contextlib.suppress(OSError):  # written by the worker, in a folder no kernel sees
        executed = (log_dir / "executed.ipynb").read_bytes()
    return Run(steps, done, end["end"], end.get("step"), error, truncated, probes, executed, 0.0)
