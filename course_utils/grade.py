"""Grade students' notebooks against the solutions: a gradebook CSV and a feedback file each.

    python -m course_utils.grade SUBMISSION... [--assignment NN] [--out DIR] [--jobs N]
                                 [--solutions DIR] [--timeout S] [--cell-timeout S]

SUBMISSION is a notebook or a folder of notebooks. Name files ``STUDENT__anything.ipynb`` (two
underscores), or put each student's notebook in a folder named after the student.

How a submission is graded (CONTRIBUTING.md, "Exercises" > "How the grader uses them"):

1. The reference: the assignment's solution notebook runs once per grading run in a fresh kernel
   and a temporary folder; its hidden tests (``cu.probe``) record the reference values, which the
   grader keeps in memory only. Its files are deleted before any submission runs.
2. Each submission runs in reduced mode (``COURSE_SMOKE=1``) in a fresh kernel started by a
   separate worker process, in an empty temporary folder, under a per-notebook and a per-cell
   time limit; an error in one cell does not stop the next ones. Right after each self-check
   cell (found by cell metadata or id, not by position) the grader runs the hidden tests of that
   check from the SOLUTION, so they see the notebook in the state the author wrote them for, and
   an exercise tested before a later crash keeps its result. ``pip`` install lines are skipped.
3. The values the student's code recorded are compared with the reference
   (``checks.probe_matches``). An exercise scores ``points * passed / total`` hidden tests (partial
   credit); every record of a test must match, so a notebook that writes many guesses gains
   nothing. Points come from the solution's cell metadata (default 1).

Nothing in a student's kernel can see the reference values: they never reach its process, its
folder or its environment. The working folder is empty and the environment names no grader or
solution path. A submission that replaces ``cu.probe``, patches builtins or writes to the probe
file only records values it produced itself. Submission files are read, never written.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    # A worker never checks IRI formats; jsonschema (imported by nbformat) would otherwise import
    # its optional IRI grammar, which costs more than a second of CPU in every worker process.
    sys.modules.setdefault("rfc3987_syntax", None)

from .build import MarkerError, hidden_tests, validate_solution, without_hidden_tests
from .checks import PROBE_FILE_VAR, probe_matches

# What each status means; the README's instructor section lists the same.
STATUSES = {
    "ok": "every hidden test of the exercise passed",
    "partial": "some hidden tests passed (points in proportion)",
    "wrong": "the code ran but gave different results from the solution",
    "not-implemented": "the exercise still raises NotImplementedError",
    "error": "a cell raised an exception (the cell and the exception are named)",
    "missing-exercise": "the exercise cell was deleted (or lost its metadata and signature)",
    "timeout": "a cell or the whole notebook ran over its time limit and was stopped",
    "kernel-died": "the Python kernel died (os._exit, a crash, out of memory)",
    "output-too-large": "the notebook printed more than the output limit; the rest was dropped",
    "malformed": "the file is not a readable notebook (bad JSON, not a notebook, too big)",
    "wrong-assignment": "the notebook belongs to another assignment",
    "unknown-assignment": "no assignment given and none found in the metadata or file name",
    "manual": "no hidden tests exist for this exercise (e.g. a written answer): grade by hand",
    "reference-failed": "the solution notebook itself failed in reduced mode: fix it and re-grade",
    "grader-error": "the grader could not run the notebook (details in the reason)",
}
TOTAL = "TOTAL"
COLUMNS = ("student", "assignment", "exercise", "points", "max_points", "status", "reason", "file")
MAX_FILE_BYTES = 100 * 2**20
MAX_PROBE_BYTES = 20 * 2**20
TIMEOUT_ENAME = "CellTimeout"
EXPECTED_ERRORS = {"CheckFailed", "NotImplementedError"}  # unfinished exercises, said per exercise
INSTALL_LINE = re.compile(r"^(\s*)[%!]\s*(pip|pip3|conda|mamba|uv|apt|apt-get)\b.*$", re.MULTILINE)
GRACE_S = 60  # worker start and kernel shutdown on top of the notebook's time limit


# ------------------------------------------------------------------------------------ solutions
@dataclass
class Exercise:
    id: str
    points: float
    cell_id: str | None
    signature: str | None  # first `def`/`class` line before the solution region
    markdown: bool = False


@dataclass
class HiddenBlock:
    key: str  # the check id (or the cell id) the hidden tests belong to
    code: str
    cell_id: str | None
    exercise: str | None  # the exercise id when the block sits in an exercise or check cell


@dataclass
class Assignment:
    stem: str
    path: Path
    exercises: dict[str, Exercise]
    hidden: list[HiddenBlock]
    cells: list  # the solution's cells with hidden tests removed (the reference "submission")


def _course(meta) -> dict:
    course = meta.get("course") if isinstance(meta, dict) else None
    return course if isinstance(course, dict) else {}


def _signature(source: str) -> str | None:
    for line in source.splitlines():
        text = line.strip()
        if text.startswith("### BEGIN SOLUTION"):
            return None
        if text.startswith(("def ", "class ", "async def ")):
            return text
    return None


def load_assignment(path: Path) -> Assignment:
    """Read a solution notebook: exercises with their points, hidden-test blocks."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    validate_solution(nb, path.stem)
    exercises, hidden, cells = {}, [], []
    for index, cell in enumerate(nb.cells):
        course = _course(cell.metadata)
        where = f"{path.name}, cell {index}"
        if "exercise" in course:
            ex_id = str(course["exercise"])
            points = course.get("points", 1)
            if isinstance(points, bool) or not isinstance(points, (int, float)) or points < 0:
                raise ValueError(f"{where}: 'points' must be a number >= 0, got {points!r}")
            if ex_id in exercises:
                raise ValueError(f"{where}: exercise id {ex_id!r} is used twice")
            exercises[ex_id] = Exercise(ex_id, float(points), cell.get("id"), _signature(cell.source),
                                        markdown=cell.cell_type != "code")
        code = hidden_tests(cell.source, where) if cell.cell_type == "code" else ""
        if code.strip():
            owner = course.get("check") or course.get("exercise")
            hidden.append(HiddenBlock(str(owner or f"cell-{cell.get('id', index)}"), code,
                                      cell.get("id"), str(owner) if owner else None))
        cells.append(_Cell(index, cell.cell_type, without_hidden_tests(cell.source, cell.cell_type, where),
                           cell.get("id"), course))
    return Assignment(path.stem, path, exercises, hidden, cells)


class Catalog:
    """The solution notebooks of a folder, loaded on demand."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.paths = {p.stem: p for p in sorted(self.folder.glob("*.ipynb"))}
        self._loaded: dict[str, Assignment] = {}
        self._ids: dict[str, set[str]] | None = None

    def get(self, stem: str) -> Assignment:
        if stem not in self._loaded:
            self._loaded[stem] = load_assignment(self.paths[stem])
        return self._loaded[stem]

    def resolve(self, name: str) -> str | None:
        """'1', '01', '01_chat_templates' or a path to a solution -> the stem, or None."""
        name = Path(str(name)).stem
        if name in self.paths:
            return name
        if name.isdigit():
            hits = [s for s in self.paths if s.split("_", 1)[0] == f"{int(name):02d}"]
            return hits[0] if len(hits) == 1 else None
        return None

    def exercise_ids(self) -> dict[str, set[str]]:
        if self._ids is None:
            self._ids = {}
            for stem, path in self.paths.items():
                try:
                    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
                    self._ids[stem] = {str(_course(c.get("metadata"))["exercise"]) for c in cells
                                       if "exercise" in _course(c.get("metadata"))}
                except (OSError, ValueError, AttributeError):
                    self._ids[stem] = set()
        return self._ids

    def stem_in_name(self, text: str) -> str | None:
        hits = [s for s in self.paths if s in text]
        if len(hits) == 1:
            return hits[0]
        m = re.search(r"(?:^|[^0-9])(\d\d)_", text)
        return self.resolve(m.group(1)) if m else None


def default_solutions_dir() -> Path:
    here = Path.cwd() / "solutions"
    return here if here.is_dir() else Path(__file__).resolve().parent.parent / "solutions"


# ---------------------------------------------------------------------------------- submissions
@dataclass
class _Cell:
    index: int  # position in the notebook (0-based)
    cell_type: str
    source: str
    id: str | None
    course: dict


@dataclass
class Submission:
    path: Path
    student: str
    cells: list[_Cell] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    problem: str | None = None  # why the file is malformed


def student_name(path: Path) -> str:
    """``alice__01_chat_templates.ipynb`` -> alice; ``alice/01_chat_templates.ipynb`` -> alice."""
    name = path.stem
    if "__" in name and name.split("__", 1)[0].strip():
        return name.split("__", 1)[0].strip()
    if re.match(r"^(copy of )?\d\d_", name, re.IGNORECASE) and path.parent.name:
        return path.parent.name
    return name


def _text(value) -> str:
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return value if isinstance(value, str) else ""


def read_submission(path: Path) -> Submission:
    """Read (never write) a submission; a file that is not a notebook gets ``problem`` set."""
    sub = Submission(Path(path), student_name(Path(path)))
    try:
        size = sub.path.stat().st_size
        if size > MAX_FILE_BYTES:
            sub.problem = (f"the file is {size / 2**20:.0f} MB, over the {MAX_FILE_BYTES // 2**20} MB "
                           "limit: clear the outputs (Edit > Clear all outputs) and submit again")
            return sub
        data = sub.path.read_bytes()
    except OSError as err:
        sub.problem = f"the file could not be read ({err.strerror or err})"
        return sub
    if not data.strip():
        sub.problem = "the file is empty"
        return sub
    try:
        nb = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        sub.problem = "the file is not text (is it really a .ipynb notebook?)"
        return sub
    except json.JSONDecodeError as err:
        sub.problem = (f"the file is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
                       "it may be cut short: download the notebook again (File > Download > .ipynb)")
        return sub
    except RecursionError:
        sub.problem = "the file's JSON is nested too deeply to be a notebook"
        return sub
    if isinstance(nb, dict) and "worksheets" in nb:  # an nbformat 3 notebook
        try:
            import nbformat

            nb = json.loads(nbformat.writes(nbformat.reads(json.dumps(nb), as_version=4)))
        except Exception as err:  # noqa: BLE001 - any conversion failure means "not a notebook"
            sub.problem = f"an old-format notebook that could not be converted ({type(err).__name__})"
            return sub
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        sub.problem = "the file is JSON but not a Jupyter notebook (it has no list of cells)"
        return sub
    sub.metadata = nb.get("metadata") if isinstance(nb.get("metadata"), dict) else {}
    for index, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict):
            continue
        meta = cell.get("metadata") if isinstance(cell.get("metadata"), dict) else {}
        cell_id = cell.get("id") if isinstance(cell.get("id"), str) else meta.get("id")
        sub.cells.append(_Cell(index, str(cell.get("cell_type", "")), _text(cell.get("source")),
                               cell_id if isinstance(cell_id, str) else None, _course(meta)))
    return sub


def detect_assignment(sub: Submission, catalog: Catalog, forced: str | None) -> tuple[str | None, str | None]:
    """``(stem, problem)``: which assignment the submission is for, and why it can't be graded."""
    meta = sub.metadata.get("course_utils") if isinstance(sub.metadata.get("course_utils"), dict) else {}
    claimed = meta.get("assignment") or meta.get("generated_from")
    claimed = Path(str(claimed)).stem if claimed else None
    ids = {str(c.course["exercise"]) for c in sub.cells if "exercise" in c.course}
    by_ids = None
    if ids:
        overlap = {s: len(ids & set(e)) for s, e in catalog.exercise_ids().items()}
        best = max(overlap, key=overlap.get, default=None)
        by_ids = best if best and overlap[best] else None
    by_name = catalog.stem_in_name(sub.path.name)
    if forced:
        other = claimed if claimed and claimed != forced else None
        if other is None and by_ids and by_ids != forced and not ids & catalog.exercise_ids().get(forced, set()):
            other = by_ids
        if other is None and not claimed and not by_ids and by_name and by_name != forced:
            other = by_name
        if other:
            return forced, f"this is the notebook of assignment {other}, not {forced}"
        return forced, None
    for stem in (claimed, by_ids, by_name):
        if stem and stem in catalog.paths:
            return stem, None
    if claimed:
        return None, (f"the notebook says it is assignment {claimed}, which has no solution in "
                      f"{catalog.folder}")
    return None, "no assignment found in the notebook or its file name: pass --assignment NN"


# ------------------------------------------------------------------------------------- planning
@dataclass
class Step:
    source: str
    cell: _Cell | None = None  # a student cell
    block: HiddenBlock | None = None  # injected hidden tests


def _find_exercise(cells: list[_Cell], ex: Exercise) -> _Cell | None:
    for match in (lambda c: c.course.get("exercise") == ex.id,
                  lambda c: ex.cell_id is not None and c.id == ex.cell_id,
                  lambda c: ex.signature is not None and c.cell_type == "code"
                  and ex.signature in (line.strip() for line in c.source.splitlines())):
        found = [c for c in cells if match(c)]
        if found:
            return found[-1]
    return None


def _find_anchor(cells: list[_Cell], block: HiddenBlock, assignment: Assignment) -> _Cell | None:
    code = [c for c in cells if c.cell_type == "code"]
    for match in (lambda c: c.course.get("check") == block.key,
                  lambda c: block.cell_id is not None and c.id == block.cell_id,
                  lambda c: re.search(rf"""checking\(\s*["']{re.escape(block.key)}["']""", c.source)):
        found = [c for c in code if match(c)]
        if found:
            return found[-1]
    ex = assignment.exercises.get(block.exercise or "")
    return _find_exercise(code, ex) if ex else None


def _neutralise_installs(source: str) -> str:
    return INSTALL_LINE.sub(lambda m: f"{m.group(1)}pass  # skipped by the grader: package install",
                            source)


def plan(cells: list[_Cell], assignment: Assignment, probe_path: str) -> list[Step]:
    """The student's code cells in their order, each check followed by the solution's hidden tests."""
    after: dict[int | None, list[HiddenBlock]] = {}
    for block in assignment.hidden:
        anchor = _find_anchor(cells, block, assignment)
        after.setdefault(anchor.index if anchor else None, []).append(block)
    prefix = (f"__import__('os').environ[{PROBE_FILE_VAR!r}] = {probe_path!r}\n"
              "import course_utils as cu\n")
    steps = []
    for cell in cells:
        if cell.cell_type == "code":
            steps.append(Step(_neutralise_installs(cell.source), cell=cell))
        steps += [Step(prefix + b.code, block=b) for b in after.get(cell.index, [])]
    steps += [Step(prefix + b.code, block=b) for b in after.get(None, [])]
    return steps


# --------------------------------------------------------------------------------------- worker
def _kernel_env(workdir: str, threads: int, hide: list[str]) -> dict:
    drop = {PROBE_FILE_VAR, "OLDPWD", "JPY_PARENT_PID", "JPY_SESSION_NAME", "PYTEST_CURRENT_TEST"}
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not any(h and h in v for h in hide)}
    env.update(COURSE_SMOKE="1", TQDM_DISABLE="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0", PWD=workdir,
               COURSE_OUTPUTS=str(Path(workdir) / "outputs"))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, str(threads))
    return env


def _worker_main() -> int:
    """``python -m course_utils.grade --worker``: run one job (JSON on stdin), log to files."""
    job = json.loads(sys.stdin.read())
    asyncio.run(_execute(job))
    return 0


async def _execute(job: dict) -> None:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    class Client(NotebookClient):
        """Keeps at most ``max_output`` bytes of outputs; the rest is counted and dropped."""

        kept = 0
        truncated_at = None

        def output(self, outs, msg, display_id, cell_index):
            if self.truncated_at is not None:
                return None
            content = msg.get("content", {})
            size = len(json.dumps(content, default=str))
            room = job["max_output"] - self.kept
            self.kept += size
            if size <= room:
                return super().output(outs, msg, display_id, cell_index)
            self.truncated_at = cell_index
            if msg.get("msg_type") == "stream" and room > 0:  # keep the part that fits
                msg = {**msg, "content": {**content, "text": str(content.get("text", ""))[:room]}}
                super().output(outs, msg, display_id, cell_index)
            outs.append(nbformat.v4.new_output(
                "stream", name="stderr", text="\n[the grader dropped the rest of the output]\n"))
            return None

    log = open(job["log"], "a", encoding="utf-8")

    def emit(**record):
        log.write(json.dumps(record) + "\n")
        log.flush()

    def probe_lines() -> int:
        try:
            with open(job["probe_file"], "rb") as fh:
                return fh.read(MAX_PROBE_BYTES).count(b"\n")
        except OSError:
            return 0

    cells = [nbformat.v4.new_code_cell(s) for s in job["sources"]]
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})
    replies: dict[int, dict] = {}

    def on_executed(cell, cell_index, execute_reply):
        replies[cell_index] = (execute_reply or {}).get("content", {})

    client = Client(nb, kernel_name="python3", timeout=job["cell_timeout"], allow_errors=True,
                    interrupt_on_timeout=True, shutdown_kernel="immediate", startup_timeout=180,
                    error_on_timeout={"ename": TIMEOUT_ENAME, "evalue": "", "traceback": []},
                    on_cell_executed=on_executed, resources={"metadata": {"path": job["workdir"]}})
    deadline = time.monotonic() + job["timeout"]
    end: dict = {"end": "done"}
    try:
        async with client.async_setup_kernel(env=job["env"], cwd=job["workdir"],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
            emit(kernel_pid=client.km.provisioner.pid)
            for i, cell in enumerate(cells):
                remaining = deadline - time.monotonic()
                if remaining < 1:
                    end = {"end": "timeout", "step": i}
                    break
                client.timeout = max(1, int(min(job["cell_timeout"], remaining)))
                emit(start=i)
                started = time.monotonic()
                try:
                    await asyncio.wait_for(client.async_execute_cell(cell, i), timeout=remaining + 5)
                except asyncio.TimeoutError:
                    end = {"end": "timeout", "step": i}
                    break
                except DeadKernelError:
                    end = {"end": "kernel-died", "step": i}
                    break
                reply = replies.pop(i, {})
                status = "ok" if reply.get("status", "ok") == "ok" else "error"
                if reply.get("ename") == TIMEOUT_ENAME:
                    status = "timeout"
                emit(step=i, status=status, ename=str(reply.get("ename", ""))[:200],
                     evalue=str(reply.get("evalue", ""))[:500], probe_lines=probe_lines(),
                     seconds=round(time.monotonic() - started, 2))
                if status == "timeout" and not await _responsive(client, min(15, job["cell_timeout"])):
                    end = {"end": "stuck", "step": i}
                    break
    except Exception as err:  # noqa: BLE001 - e.g. the kernel did not start
        if end.get("end") == "done":
            end = {"end": "grader-error", "error": f"{type(err).__name__}: {err}"[:500]}
    with open(job["executed"], "w", encoding="utf-8") as fh:
        nb.cells = [c for c, keep in zip(nb.cells, job["keep"]) if keep]
        nbformat.write(nb, fh)
    emit(truncated_at=client.truncated_at, **end)
    log.close()


async def _responsive(client, wait: float = 15) -> bool:
    """After a cell timed out and was interrupted: does the kernel answer again?"""
    from jupyter_client.utils import ensure_async

    msg_id = client.kc.execute("pass", store_history=False)
    end = time.monotonic() + wait
    while (left := end - time.monotonic()) > 0:
        try:
            msg = await ensure_async(client.kc.shell_channel.get_msg(timeout=left))
        except Exception:  # noqa: BLE001 - queue.Empty: no answer in time
            return False
        if msg.get("parent_header", {}).get("msg_id") == msg_id:
            return True
    return False


# ---------------------------------------------------------------------------------- running one
@dataclass
class Settings:
    timeout: float = 900
    cell_timeout: float = 300
    max_output: int = 10 * 2**20
    threads: int = 1
    hide: list = field(default_factory=list)  # paths the kernel's environment must not mention


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
_STOP = threading.Event()


def _kill_group(pid: int | None) -> None:
    if pid and hasattr(os, "killpg"):
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


def _kill_kernel(pid: int | None) -> None:
    """Kill a kernel left behind by a dead worker (checked to be an ipykernel first)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if pid else b""
    except OSError:
        return
    if b"ipykernel" in cmdline:
        _kill_group(pid)


def run_notebook(cells: list[_Cell], assignment: Assignment, settings: Settings) -> Run:
    """Execute the plan in a worker process; the grader's files sit in folders of its own."""
    work = tempfile.mkdtemp(prefix="course-grade-")
    probe_dir, log_dir = tempfile.mkdtemp(), tempfile.mkdtemp()  # no telling names
    started = time.monotonic()
    try:
        probe_file = Path(probe_dir) / "probes.jsonl"
        probe_file.touch()
        steps = plan(cells, assignment, str(probe_file))
        log = Path(log_dir) / "log.jsonl"
        job = {"sources": [s.source for s in steps], "keep": [s.block is None for s in steps],
               "workdir": work, "probe_file": str(probe_file), "log": str(log),
               "executed": str(Path(log_dir) / "executed.ipynb"),
               "env": _kernel_env(work, settings.threads, settings.hide + [probe_dir, log_dir]),
               "timeout": settings.timeout, "cell_timeout": settings.cell_timeout,
               "max_output": settings.max_output}
        with open(Path(log_dir) / "worker.txt", "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "course_utils.grade", "--worker"],
                                    stdin=subprocess.PIPE, stdout=out, stderr=out, cwd=log_dir,
                                    start_new_session=True)
            with _LIVE_LOCK:
                _LIVE.add(proc)
                if _STOP.is_set():
                    _kill_group(proc.pid)
            killed = False
            try:
                proc.communicate(json.dumps(job).encode(), timeout=settings.timeout + GRACE_S)
            except subprocess.TimeoutExpired:
                killed = True
                _kill_group(proc.pid)
                proc.wait()
            finally:
                with _LIVE_LOCK:
                    _LIVE.discard(proc)
        run = _read_run(steps, log, probe_file, Path(log_dir), killed)
        run.seconds = round(time.monotonic() - started, 1)
        return run
    finally:
        for folder in (work, probe_dir, log_dir):
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
    probes, raw = [], []
    try:
        with open(probe_file, "rb") as fh:
            raw = fh.read(MAX_PROBE_BYTES).decode("utf-8", errors="replace").splitlines()
    except OSError:
        pass
    for line in raw:
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            rec = None
        probes.append(rec if isinstance(rec, dict) and isinstance(rec.get("exercise"), str)
                      and isinstance(rec.get("name"), str) else None)
    executed = None
    with contextlib.suppress(OSError):
        executed = (log_dir / "executed.ipynb").read_bytes()
    return Run(steps, done, end["end"], end.get("step"), error, truncated, probes, executed, 0.0)


# ------------------------------------------------------------------------------------- scoring
@dataclass
class Row:
    student: str
    assignment: str
    exercise: str
    points: float
    max_points: float
    status: str
    reason: str
    file: str

    def csv(self) -> list[str]:
        return [self.student, self.assignment, self.exercise, _fmt(self.points),
                _fmt(self.max_points), self.status, self.reason, self.file]


def _fmt(x: float) -> str:
    return f"{round(x, 2):g}"


@dataclass
class Reference:
    records: dict[tuple[str, str], dict]
    block_of: dict[tuple[str, str], int]  # probe -> index of the hidden block that records it
    problem: str | None  # why the solution's run failed as a whole


def _snippet(source: str) -> str:
    """The line that says most about a cell: the first that is not an import or a comment."""
    lines = [line.strip() for line in source.splitlines() if line.strip()]
    telling = [t for t in lines if not t.startswith(("#", "import ", "from "))] or lines or [""]
    text = telling[0]
    return text if len(text) <= 50 else text[:47] + "..."


def describe(cell: _Cell | None) -> str:
    if cell is None:
        return "the grader's hidden tests"
    if "exercise" in cell.course:
        return f"your exercise cell '{cell.course['exercise']}'"
    if "check" in cell.course:
        return f"the self-check cell of '{cell.course['check']}'"
    return f"cell {cell.index + 1} (`{_snippet(cell.source)}`)"


def _step_cell(run: Run, step: int | None) -> str:
    if step is None or step >= len(run.steps):
        return "before the first cell"
    s = run.steps[step]
    return describe(s.cell) if s.cell else f"the hidden tests of '{s.block.key}'"


def _end_reason(run: Run, settings: Settings) -> str:
    where = _step_cell(run, run.end_step)
    if run.end == "timeout":
        return (f"the notebook ran over its {settings.timeout:g} s limit; it was stopped in {where}"
                " (look for an endless loop or a very slow cell)")
    if run.end == "stuck":
        return (f"{where} ran over the {settings.cell_timeout:g} s cell limit and could not be "
                "interrupted, so the notebook was stopped there (look for an endless loop)")
    if run.end == "kernel-died":
        return (f"the Python kernel died in {where} (os._exit(), killing a process, a crash or "
                "running out of memory); the cells after it did not run")
    return f"the grader could not run the notebook: {run.error or 'unknown error'}"


def reference_from(run: Run, assignment: Assignment, settings: Settings) -> Reference:
    records, block_of, problems = {}, {}, []
    blocks = [i for i, s in enumerate(run.steps) if s.block is not None]
    start = 0
    for i, step in enumerate(run.steps):
        if i not in run.done:
            continue
        lines = run.done[i]["probe_lines"]
        if step.block is not None:
            for rec in run.probes[start:lines]:
                if rec:
                    key = (rec["exercise"], rec["name"])
                    records[key] = rec
                    block_of[key] = i
            if run.done[i]["status"] != "ok":
                problems.append(f"its hidden tests '{step.block.key}' raised "
                                f"{run.done[i]['ename']}: {run.done[i]['evalue']}")
        start = lines
    if run.end != "done":
        problems.append(_end_reason(run, settings))
    missing = [b for b in blocks if b not in run.done]
    if missing and run.end == "done":
        problems.append("some hidden tests did not run")
    return Reference(records, block_of, "; ".join(problems) or None)


def _exercise_row(ex: Exercise, sub: Submission, stem: str, run: Run, ref: Reference,
                  located: _Cell | None, settings: Settings) -> Row:
    def row(points, status, reason):
        return Row(sub.student, stem, ex.id, points, ex.points, status, reason, str(sub.path))

    names = [k for k in ref.records if k[0] == ex.id]
    if ex.markdown:
        return row(0, "manual", "a written answer: your instructor grades it by hand")
    if not names:
        if ref.problem:
            return row(0, "reference-failed", f"the solution notebook failed: {ref.problem}")
        return row(0, "manual", "the solution has no hidden tests for this exercise: graded by hand")
    bad_ref = [ref.records[k] for k in names if "error" in ref.records[k]]
    if bad_ref:
        return row(0, "reference-failed", f"the solution's own hidden test failed: {bad_ref[0]['error']}")
    mine: dict[tuple, list] = {}
    for rec in run.probes:
        if rec and (rec["exercise"], rec["name"]) in ref.records:
            mine.setdefault((rec["exercise"], rec["name"]), []).append(rec)
    failures = [f for f in (_probe_failure(key, mine.get(key, []), ref, run) for key in names) if f]
    total, passed = len(names), len(names) - len(failures)
    points = round(ex.points * passed / total, 2)
    if not failures:
        return row(points, "ok", f"passed all {total} hidden tests")
    kinds = {kind for _, kind, _ in failures}
    listed = _listed(failures)
    if passed:
        return row(points, "partial", f"passed {passed} of {total} hidden tests; failed {listed}")
    if located is None:
        return row(0, "missing-exercise", "the exercise cell is missing from your notebook (deleted, or "
                   "its metadata removed): take a fresh copy and paste your code into it")
    if "not-run" in kinds:
        status = "timeout" if run.end == "stuck" else run.end
        why = {"kernel-died": "the Python kernel died", "grader-error": "the grader failed"}.get(
            run.end, "it ran out of time")
        return row(0, status, f"not graded: the notebook stopped before this exercise's hidden tests "
                   f"ran ({why} in {_step_cell(run, run.end_step)})")
    if "timeout" in kinds:
        return row(0, "timeout", f"not graded: {listed}")
    if kinds == {"not-implemented"}:
        return row(0, "not-implemented", "not done yet: the exercise still raises NotImplementedError")
    own = next((run.done.get(i) for i, s in enumerate(run.steps) if s.cell is located), None)
    if own and own["status"] == "error" and own["ename"] not in EXPECTED_ERRORS:
        return row(0, "error", f"{describe(located)} raised {own['ename']}: {own['evalue']}; "
                   f"then {listed}")
    if "error" in kinds:
        return row(0, "error", listed)
    return row(0, "wrong", f"all {total} hidden tests gave a different result from the solution: "
               f"{listed}. Run the self-check below the exercise: it says what differs")


def _listed(failures) -> str:
    """'a', 'b': why; 'c': other why -- hidden tests that failed for the same reason together."""
    groups: dict[str, list[str]] = {}
    for name, _, why in failures:
        groups.setdefault(why, []).append(f"'{name}'")
    parts = [f"{', '.join(names)}: {why}" for why, names in groups.items()]
    return "; ".join(parts[:3]) + ("; ..." if len(parts) > 3 else "")


def _probe_failure(key, recs, ref: Reference, run: Run):
    """``None`` when every record of this hidden test matches, else ``(name, kind, why)``."""
    name = key[1]
    if not recs:
        step = ref.block_of.get(key)
        done = run.done.get(step) if step is not None else None
        if done is None:
            return name, "not-run", "not run"
        if done["status"] == "timeout":
            return name, "timeout", "the hidden tests ran over the cell time limit"
        if done["status"] == "error":
            return name, "error", f"the hidden tests stopped with {done['ename']}: {done['evalue']}"
        return name, "wrong", "no result was recorded (did the notebook replace course_utils' probe?)"
    for rec in recs:
        try:
            ok, why = probe_matches(rec, ref.records[key])
        except Exception as err:  # noqa: BLE001 - a value that can't be compared is a failure
            ok, why = False, f"could not compare ({type(err).__name__})"
        if ok:
            continue
        if "error" not in rec:
            if not why or why.startswith("a different result"):
                why = "a different result from the solution's"
            return name, "wrong", why
        if rec["error"] == "not implemented":
            return name, "not-implemented", "not implemented yet"
        return name, "error", f"your code raised {str(rec['error'])[:300]}"
    return None


def score(sub: Submission, assignment: Assignment, run: Run, ref: Reference, settings: Settings) -> list[Row]:
    rows = [_exercise_row(ex, sub, assignment.stem, run, ref, _find_exercise(sub.cells, ex), settings)
            for ex in assignment.exercises.values()]
    auto = [r for r in rows if r.status != "manual"]
    errors = [(i, d) for i, d in sorted(run.done.items()) if run.steps[i].cell is not None
              and d["status"] == "error" and d["ename"] not in EXPECTED_ERRORS]
    timeouts = [i for i, d in sorted(run.done.items()) if d["status"] == "timeout"]
    statuses = {r.status for r in auto}
    if "reference-failed" in statuses:
        status, reason = "reference-failed", "the solution notebook failed: re-grade after fixing it"
    elif run.end != "done":
        status = "timeout" if run.end == "stuck" else run.end
        reason = _end_reason(run, settings)
    elif timeouts:
        status = "timeout"
        reason = (f"{_step_cell(run, timeouts[0])} ran over the {settings.cell_timeout:g} s cell limit "
                  "and was interrupted; the notebook went on after it")
    elif run.truncated_at is not None:
        status = "output-too-large"
        reason = (f"the notebook printed more than {settings.max_output / 2**20:g} MB (from "
                  f"{_step_cell(run, run.truncated_at)} on); the rest of the output was dropped, "
                  "grading went on")
    elif errors:
        i, d = errors[0]
        status = "error"
        more = f" ({len(errors) - 1} more cell(s) raised errors too)" if len(errors) > 1 else ""
        hint = " (sys.exit() does not stop a notebook; remove it)" if d["ename"] == "SystemExit" else ""
        reason = f"{_step_cell(run, i)} raised {d['ename']}: {d['evalue']}{hint}{more}"
    elif "missing-exercise" in statuses:
        status, reason = "missing-exercise", "some exercise cells are missing"
    elif statuses <= {"ok"}:
        status, reason = "ok", "all exercises passed"
    elif len(statuses) == 1:
        status, reason = statuses.pop(), "no exercise passed"
    else:
        status, reason = "partial", f"{sum(r.status == 'ok' for r in auto)} of {len(auto)} exercises passed"
    manual = len(rows) - len(auto)
    if manual:
        reason += f"; {manual} exercise(s) to grade by hand"
    rows.append(Row(sub.student, assignment.stem, TOTAL, sum(r.points for r in rows),
                    sum(r.max_points for r in rows), status, reason, str(sub.path)))
    return rows


def unrunnable_rows(sub: Submission, assignment: Assignment | None, status: str, reason: str) -> list[Row]:
    stem = assignment.stem if assignment else ""
    exercises = list(assignment.exercises.values()) if assignment else []
    rows = [Row(sub.student, stem, ex.id, 0, ex.points, status, reason, str(sub.path)) for ex in exercises]
    rows.append(Row(sub.student, stem, TOTAL, 0, sum(ex.points for ex in exercises), status, reason,
                    str(sub.path)))
    return rows


# ------------------------------------------------------------------------------------- feedback
ICONS = {"ok": "✅", "partial": "⚠️", "manual": "📝"}
STUDENT_WORDS = {
    "timeout": "your notebook ran too long",
    "kernel-died": "the Python kernel stopped",
    "output-too-large": "your notebook printed a lot",
    "error": "a cell raised an error",
    "missing-exercise": "an exercise cell is missing",
}


def feedback(rows: list[Row], settings: Settings) -> str:
    """A short Markdown note for the student: per exercise what passed and what to fix."""
    total = rows[-1]
    lines = [f"# Feedback: {total.assignment or 'unknown assignment'} ({total.student})", "",
             f"**Score: {_fmt(total.points)} / {_fmt(total.max_points)} points**", ""]
    exercise_rows = rows[:-1]
    if total.status in ("malformed", "wrong-assignment", "unknown-assignment"):
        lines += [f"Your submission could not be graded: {total.reason}.", ""]
    else:
        for r in exercise_rows:
            lines.append(f"- {ICONS.get(r.status, '❌')} **{r.exercise}** ({_fmt(r.points)} / "
                         f"{_fmt(r.max_points)}): {r.reason}.")
        if total.status in STUDENT_WORDS:
            lines += ["", f"About the notebook as a whole ({STUDENT_WORDS[total.status]}): {total.reason}."]
    lines += ["", "How it was graded: your notebook ran from top to bottom in a fresh Python kernel, "
              "in reduced mode (small data, on a CPU, time limit "
              f"{settings.timeout:g} s); hidden tests then called your code and compared its results "
              "with the solution's. Before you submit, restart the kernel and run all cells: what you "
              "see then is what the grader sees.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- driver
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", name).strip("._") or "student"


def expand(paths, exclude=()) -> list[Path]:
    """Notebooks named, or found in folders named (not in checkpoints or the excluded folders)."""
    files: list[Path] = []
    skip = [Path(e).resolve() for e in exclude]
    for p in map(Path, paths):
        if p.is_dir():
            found = [f for f in sorted(p.rglob("*.ipynb")) if ".ipynb_checkpoints" not in f.parts]
            files += [f for f in found if not any(e in f.resolve().parents for e in skip)]
        elif p.exists():
            files.append(p)
        else:
            raise ValueError(f"{p}: no such file or folder")
    unique = list(dict.fromkeys(files))
    if not unique:
        raise ValueError("no .ipynb submissions found in " + ", ".join(map(str, paths)))
    return unique


def _kill_all() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        _kill_group(proc.pid)  # its kernel notices its parent is gone and exits


def grade(paths, *, assignment: str | None = None, out: str | Path = "grades",
          solutions: str | Path | None = None, jobs: int | None = None, timeout: float = 900,
          cell_timeout: float = 300, max_output_mb: float = 10, progress: bool = True) -> list[Row]:
    """Grade notebooks; write ``out/gradebook.csv``, ``out/feedback/*.md``, ``out/executed/``.

    Returns the gradebook rows (per exercise, then one ``TOTAL`` row per submission).
    Raises ValueError for a bad command line (no submissions, unknown assignment, no solutions).
    """
    from tqdm.auto import tqdm

    out = Path(out)
    folder = Path(solutions) if solutions else default_solutions_dir()
    if not folder.is_dir() or not any(folder.glob("*.ipynb")):
        raise ValueError(f"no solution notebooks in {folder}: pass --solutions DIR")
    catalog = Catalog(folder)
    forced = None
    if assignment:
        forced = catalog.resolve(assignment)
        if forced is None:
            raise ValueError(f"unknown assignment {assignment!r}; known: {', '.join(catalog.paths)}")
    subs = [read_submission(p) for p in expand(paths, exclude=(out, folder))]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    jobs = max(1, jobs or cores)
    settings = Settings(timeout=timeout, cell_timeout=cell_timeout, max_output=int(max_output_mb * 2**20),
                        threads=max(1, cores // min(jobs, max(1, len(subs)))),
                        hide=[str(folder.resolve()), str(out.resolve())])

    results: dict[int, list[Row]] = {}
    executed: dict[int, bytes] = {}
    todo: dict[int, str] = {}
    for i, sub in enumerate(subs):
        stem, problem = (forced, None) if sub.problem else detect_assignment(sub, catalog, forced)
        if sub.problem and not stem:
            stem = catalog.stem_in_name(sub.path.name)
        try:
            known = catalog.get(stem) if stem else None
        except (MarkerError, ValueError, OSError) as err:
            results[i] = unrunnable_rows(sub, None, "reference-failed", f"solution {stem}: {err}")
            continue
        if sub.problem:
            results[i] = unrunnable_rows(sub, known, "malformed", sub.problem)
        elif problem:
            status = "unknown-assignment" if stem is None else "wrong-assignment"
            results[i] = unrunnable_rows(sub, known, status, problem)
        else:
            todo[i] = stem

    stems = sorted(set(todo.values()))
    bar = tqdm(total=len(stems) + len(todo), desc="grading", unit="notebook", file=sys.stderr,
               disable=not progress)
    references: dict[str, Reference] = {}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
    try:
        # The references run first: their files are gone before any student's kernel starts.
        futures = {pool.submit(run_notebook, catalog.get(s).cells, catalog.get(s), settings): s
                   for s in stems}
        for fut in concurrent.futures.as_completed(futures):
            stem = futures[fut]
            references[stem] = reference_from(fut.result(), catalog.get(stem), settings)
            bar.set_postfix_str(f"reference {stem}")
            bar.update()
        futures = {pool.submit(run_notebook, subs[i].cells, catalog.get(s), settings): i
                   for i, s in todo.items()}
        for fut in concurrent.futures.as_completed(futures):
            i = futures[fut]
            try:
                run = fut.result()
                results[i] = score(subs[i], catalog.get(todo[i]), run, references[todo[i]], settings)
            except Exception as err:  # noqa: BLE001 - a grader bug costs one submission, not the run
                results[i] = unrunnable_rows(subs[i], catalog.get(todo[i]), "grader-error",
                                             f"{type(err).__name__}: {err}"[:500])
                run = None
            if run is not None and run.executed:
                executed[i] = run.executed
            bar.set_postfix_str(subs[i].student)
            bar.update()
    except BaseException:  # Ctrl-C, SIGTERM: stop every worker (and so its kernel) before leaving
        _STOP.set()
        pool.shutdown(wait=False, cancel_futures=True)
        _kill_all()
        raise
    finally:
        bar.close()
    pool.shutdown()

    rows = [row for i in range(len(subs)) for row in results[i]]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "gradebook.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for row in sorted(rows, key=lambda r: (r.student, r.assignment, r.file)):
            writer.writerow(row.csv())
    (out / "feedback").mkdir(exist_ok=True)
    used: set[str] = set()
    for i, sub in enumerate(subs):
        base = f"{_safe(sub.student)}__{results[i][-1].assignment or 'unknown'}"
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name)
        (out / "feedback" / f"{name}.md").write_text(feedback(results[i], settings), encoding="utf-8")
        if i in executed:
            (out / "executed").mkdir(exist_ok=True)
            (out / "executed" / f"{name}.ipynb").write_bytes(executed[i])
    return rows


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--worker"]:
        return _worker_main()
    parser = argparse.ArgumentParser(prog="python -m course_utils.grade", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="statuses:\n" + "\n".join(f"  {k:18} {v}" for k, v in STATUSES.items()))
    parser.add_argument("submissions", nargs="+", metavar="SUBMISSION", help="notebooks or folders")
    parser.add_argument("--assignment", help="NN or NN_slug (default: from each notebook)")
    parser.add_argument("--out", default="grades", help="output folder (default: grades)")
    parser.add_argument("--solutions", help="folder of solution notebooks (default: ./solutions)")
    parser.add_argument("--jobs", type=int, default=None, help="notebooks at once (default: CPU cores)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per notebook (default 900)")
    parser.add_argument("--cell-timeout", type=float, default=300, help="seconds per cell (default 300)")
    parser.add_argument("--max-output-mb", type=float, default=10,
                        help="output kept per notebook; more is dropped (default 10)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    try:
        rows = grade(args.submissions, assignment=args.assignment, out=args.out, solutions=args.solutions,
                     jobs=args.jobs, timeout=args.timeout, cell_timeout=args.cell_timeout,
                     max_output_mb=args.max_output_mb)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no gradebook written", file=sys.stderr)
        return 130
    totals = [r for r in rows if r.exercise == TOTAL]
    counts = {}
    for r in totals:
        counts[r.status] = counts.get(r.status, 0) + 1
    print(f"Graded {len(totals)} submission(s) in {time.monotonic() - started:.0f} s: "
          + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    print(f"Gradebook: {Path(args.out) / 'gradebook.csv'}; feedback: {Path(args.out) / 'feedback'}/")
    broken = {r.reason for r in rows if r.status in ("reference-failed", "grader-error")}
    for reason in sorted(broken):
        print(f"problem: {reason}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
