"""The command line and the grading run: references first, then the class, then the gradebook."""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import io
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

from ..build import MarkerError
from . import sandbox as sb
from .feedback import feedback
from .process import STOP, Settings, kill_all, run_notebook
from .scoring import COLUMNS, STATUSES, TOTAL, Reference, Row, reference_from, score, unrunnable_rows
from .solutions import Catalog, default_solutions_dir
from .submissions import detect_assignment, expand, read_submission


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a whole file or nothing: a temporary file in the same folder, then a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", name).strip("._") or "student"


def grade(paths, *, assignment: str | None = None, out: str | Path = "grades",
          solutions: str | Path | None = None, jobs: int | None = None, timeout: float = 900,
          cell_timeout: float = 300, max_output_mb: float = 10, progress: bool = True,
          sandbox: bool = True, limits: sb.Limits | None = None) -> list[Row]:
    """Grade notebooks; write ``out/gradebook.csv``, ``out/feedback/*.md``, ``out/executed/``.

    Each kernel runs in a bubblewrap sandbox (``sandbox.py``) unless ``sandbox=False``; with no
    sandbox tool here, a ValueError says what is missing and what to install.
    Returns the gradebook rows (per exercise, then one ``TOTAL`` row per submission).
    Raises ValueError for a bad command line (no submissions, unknown assignment, no solutions).
    """
    from tqdm.auto import tqdm

    if sandbox and (why := sb.missing()):
        raise ValueError("cannot sandbox the kernels: " + why + ". Without a sandbox, "
                         + "; ".join(sb.PROTECTIONS))
    if not sandbox and progress:
        print("grading WITHOUT a sandbox (--no-sandbox): " + "; ".join(sb.PROTECTIONS), file=sys.stderr)

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
    staged = tempfile.TemporaryDirectory(prefix="course-stage-") if sandbox else None
    if staged is not None:
        from ..models import cache_dir, fallback_model_dir

        fallback_model_dir()  # converted now: the sandbox shows the cache read-only
        settings.limits = limits or sb.Limits(cpu_s=int(timeout * 2 + 600))
        settings.site = str(sb.stage(Path(staged.name)))
        settings.cache = str(cache_dir())

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
            results[i] = unrunnable_rows(sub, known, "refused" if sub.refused else "malformed", sub.problem)
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
        futures = {pool.submit(run_notebook, catalog.get(s), None, settings): s for s in stems}
        for fut in concurrent.futures.as_completed(futures):
            stem = futures[fut]
            references[stem] = reference_from(fut.result(), catalog.get(stem), settings)
            bar.set_postfix_str(f"reference {stem}")
            bar.update()
        futures = {pool.submit(run_notebook, catalog.get(s), subs[i].cells, settings): i
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
        STOP.set()
        pool.shutdown(wait=False, cancel_futures=True)
        kill_all()
        raise
    finally:
        bar.close()
        if staged is not None:
            staged.cleanup()
    pool.shutdown()

    rows = [row for i in range(len(subs)) for row in results[i]]
    out.mkdir(parents=True, exist_ok=True)
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(COLUMNS)
    for row in sorted(rows, key=lambda r: (r.student, r.assignment, r.file)):
        writer.writerow(row.csv())
    _write_atomic(out / "gradebook.csv", text.getvalue().encode("utf-8"))
    (out / "feedback").mkdir(exist_ok=True)
    used: set[str] = set()
    for i, sub in enumerate(subs):
        base = f"{_safe(sub.student)}__{results[i][-1].assignment or 'unknown'}"
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name)
        _write_atomic(out / "feedback" / f"{name}.md", feedback(results[i], settings).encode("utf-8"))
        if i in executed:
            (out / "executed").mkdir(exist_ok=True)
            _write_atomic(out / "executed" / f"{name}.ipynb", executed[i])
    return rows


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from . import __doc__ as doc

    parser = argparse.ArgumentParser(prog="python -m course_utils.grade", description=doc,
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
    default = sb.Limits()
    box = parser.add_argument_group("sandbox (bubblewrap, Linux; README: 'What the sandbox protects')")
    box.add_argument("--no-sandbox", action="store_true",
                     help="run kernels unsandboxed: only for a class you trust, or inside the grading container")
    box.add_argument("--memory-mb", type=int, default=default.memory_mb,
                     help=f"address space per kernel (default {default.memory_mb})")
    box.add_argument("--max-procs", type=int, default=default.procs,
                     help=f"processes per submission (default {default.procs})")
    box.add_argument("--cpu-seconds", type=int, default=None,
                     help="CPU seconds per kernel (default: twice --timeout plus 600)")
    box.add_argument("--max-file-mb", type=int, default=default.file_mb,
                     help=f"largest file a kernel may write (default {default.file_mb})")
    box.add_argument("--disk-mb", type=int, default=default.disk_mb,
                     help=f"size of each of the kernel's /submission and /tmp (default {default.disk_mb})")
    args = parser.parse_args(argv)
    limits = sb.Limits(memory_mb=args.memory_mb, procs=args.max_procs,
                       cpu_s=args.cpu_seconds or int(args.timeout * 2 + 600), file_mb=args.max_file_mb,
                       disk_mb=args.disk_mb)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    try:
        rows = grade(args.submissions, assignment=args.assignment, out=args.out, solutions=args.solutions,
                     jobs=args.jobs, timeout=args.timeout, cell_timeout=args.cell_timeout,
                     max_output_mb=args.max_output_mb, sandbox=not args.no_sandbox, limits=limits)
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

