"""``python -m course_utils.grade.worker``: run one graded notebook (a job, JSON on stdin).

A process of its own per notebook, started by :mod:`course_utils.grade.process`, outside the
sandbox: it starts the kernel (inside the sandbox when the job has one) and runs the steps with
:class:`course_utils.kernels.Kernel`, logging one JSON line per event to a file in a folder the
kernel cannot see. The executed notebook (the student's cells with their outputs, without the
hidden tests and the grader's own steps) is written next to it.
"""
from __future__ import annotations

import json
import sys
import time

sys.modules.setdefault("rfc3987_syntax", None)  # jsonschema's optional IRI grammar: >1 s of CPU per worker

MAX_PROBE_BYTES = 20 * 2**20


def read_probes(path: str) -> bytes:
    """At most MAX_PROBE_BYTES of the probe file, which the kernel may have swapped for a link, a
    pipe or a device: opened without following links or blocking, read only if a regular file."""
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return b""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        chunks, size = [], 0
        while size < MAX_PROBE_BYTES and (chunk := os.read(fd, min(2**20, MAX_PROBE_BYTES - size))):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def execute(job: dict) -> None:
    import nbformat

    from ..kernels import Kernel
    from .sandbox import Sandbox

    log = open(job["log"], "a", encoding="utf-8")

    def emit(**record):
        log.write(json.dumps(record) + "\n")
        log.flush()

    def probe_lines() -> int:
        return read_probes(job["probe_file"]).count(b"\n")

    sandbox = Sandbox.from_dict(job["sandbox"]) if job.get("sandbox") else None
    env = sandbox.env(job["env"]) if sandbox else job["env"]
    kernel = Kernel(cwd=job["workdir"], env=env, cell_timeout=job["cell_timeout"], max_output=job["max_output"],
                    sandbox=sandbox)
    deadline = time.monotonic() + job["timeout"]
    end: dict = {"end": "done"}
    truncated = None  # the step at which the output limit was reached
    try:
        with kernel:
            emit(kernel_pid=kernel.pid)
            for i, source in enumerate(job["sources"]):
                remaining = deadline - time.monotonic()
                if remaining < 1:
                    end = {"end": "timeout", "step": i}
                    break
                emit(start=i)
                shown = job["shown"][i]  # what the executed copy shows for the step (None: left out)
                result = kernel.run(source, timeout=min(job["cell_timeout"], remaining), keep=shown is not None)
                if shown is not None:
                    kernel.nb.cells[-1].source = shown
                if truncated is None and kernel.truncated_at is not None:
                    truncated = i
                if result.status == "died":
                    end = {"end": "kernel-died", "step": i}
                    break
                emit(step=i, status=result.status, ename=result.ename, evalue=result.evalue,
                     probe_lines=probe_lines(), seconds=result.seconds)
                if result.status == "timeout":
                    if time.monotonic() >= deadline - 1:
                        end = {"end": "timeout", "step": i}
                        break
                    if not kernel.responsive(min(15, job["cell_timeout"])):
                        end = {"end": "stuck", "step": i}
                        break
    except Exception as err:  # noqa: BLE001 - e.g. the kernel did not start
        if end.get("end") == "done":
            end = {"end": "grader-error", "error": f"{type(err).__name__}: {err}"[:500]}
    with open(job["executed"], "w", encoding="utf-8") as fh:
        nbformat.write(kernel.nb, fh)
    emit(truncated_at=truncated, **end)
    log.close()


def main() -> int:
    execute(json.loads(sys.stdin.read()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
