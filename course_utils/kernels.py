"""The one way the project runs notebook code in a fresh IPython kernel (tooling, not for students).

The grader's worker (``course_utils.grade.worker``), the timing runs (``course_utils.timing``) and
the tests (``tests/test_exercises.py``) all go through :class:`Kernel`: it starts a kernel (in a
sandbox when given one), runs cells one at a time under a time limit, keeps at most
``max_output`` bytes of what they print or display, and says how each cell ended.

    with Kernel(cwd=folder, env=env, cell_timeout=300) as k:
        result = k.run("1 + 1")        # CellResult(status="ok", ...)

:func:`run_notebook` runs every code cell of a notebook in order, writing outputs and nbclient's
timing metadata into it (what ``course_utils.timing`` records).
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import time
from dataclasses import dataclass, field

TIMEOUT_ENAME = "CellTimeout"
DROPPED = "\n[the grader dropped the rest of the output]\n"


@dataclass
class CellResult:
    status: str  # ok | error | timeout | died
    ename: str = ""
    evalue: str = ""
    traceback: str = ""
    seconds: float = 0.0
    outputs: list = field(default_factory=list)

    def __str__(self) -> str:  # what a test prints when a cell fails
        return f"{self.status}: {self.ename}: {self.evalue}\n{self.traceback}"


def _client_class():
    from nbclient import NotebookClient

    class Client(NotebookClient):
        """Counts every kernel message that carries output (streams, displays, display updates,
        widget messages) and drops all of them once ``max_output`` bytes have been kept."""

        max_output: int | None = None
        kept = 0
        truncated_at: int | None = None

        def process_message(self, msg, cell, cell_index):
            kind = msg.get("msg_type", "")
            if self.max_output is None or kind in ("status", "execute_input"):
                return super().process_message(msg, cell, cell_index)
            if self.truncated_at is not None:
                return None
            content = msg.get("content", {})
            size = len(json.dumps(content, default=str)) + sum(len(b) for b in msg.get("buffers") or [])
            room = self.max_output - self.kept
            self.kept += size
            if size <= room:
                return super().process_message(msg, cell, cell_index)
            self.truncated_at = cell_index
            if kind == "stream" and room > 0:  # keep the part that fits
                msg = {**msg, "content": {**content, "text": str(content.get("text", ""))[:room]}}
                super().process_message(msg, cell, cell_index)
            import nbformat

            cell.outputs.append(nbformat.v4.new_output("stream", name="stderr", text=DROPPED))
            return None

    return Client


class Kernel:
    """A fresh kernel for one notebook's worth of cells; see the module docstring.

    ``sandbox`` is a :class:`course_utils.grade.sandbox.Sandbox` (the kernel then runs inside
    it), or None for a plain kernel that inherits ``env`` and runs in ``cwd``.
    """

    def __init__(self, *, cwd: str, env: dict | None = None, cell_timeout: float | None = None,
                 max_output: int | None = None, sandbox=None, startup_timeout: int = 180,
                 record_timing: bool = False):
        import nbformat

        self.nb = nbformat.v4.new_notebook(metadata={"kernelspec": {
            "name": "python3", "display_name": "Python 3", "language": "python"}})
        import os

        self.cwd, self.env, self.sandbox = cwd, dict(os.environ) if env is None else env, sandbox
        self.cell_timeout = cell_timeout
        self._replies: dict[int, dict] = {}
        kwargs = {}
        if sandbox is not None:
            kwargs["km"] = sandbox.kernel_manager()
        self.client = _client_class()(
            self.nb, kernel_name="python3", timeout=None if cell_timeout is None else int(cell_timeout),
            allow_errors=True, interrupt_on_timeout=True, shutdown_kernel="immediate",
            startup_timeout=startup_timeout, record_timing=record_timing,
            error_on_timeout={"ename": TIMEOUT_ENAME, "evalue": "", "traceback": []},
            on_cell_executed=self._on_executed, resources={"metadata": {"path": cwd}}, **kwargs)
        self.client.max_output = max_output
        self._stack = contextlib.ExitStack()

    def _on_executed(self, cell, cell_index, execute_reply):
        self._replies[cell_index] = (execute_reply or {}).get("content", {})

    def __enter__(self) -> "Kernel":
        # a sandboxed kernel changes into its own folder inside (bwrap --chdir); bwrap starts in
        # the sandbox's socket folder, which exists outside
        cwd = self.sandbox.conn if self.sandbox is not None else self.cwd
        setup = self.client.setup_kernel(env=self.env, cwd=cwd, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        self._stack.enter_context(setup)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @property
    def pid(self) -> int | None:
        with contextlib.suppress(Exception):
            return self.client.km.provisioner.pid
        return None

    @property
    def truncated_at(self) -> int | None:
        return self.client.truncated_at

    def run(self, source: str, *, timeout: float | None = None, keep: bool = True) -> CellResult:
        """Run one cell; ``keep=False`` leaves it out of :attr:`nb` (the grader's hidden tests)."""
        import nbformat
        from nbclient.exceptions import DeadKernelError

        cell = nbformat.v4.new_code_cell(source)
        self.nb.cells.append(cell)
        index = len(self.nb.cells) - 1
        limit = timeout if timeout is not None else self.cell_timeout
        self.client.timeout = None if limit is None else max(1, int(limit))
        started = time.monotonic()
        try:
            self.client.execute_cell(cell, index)
        except DeadKernelError as err:
            return CellResult("died", "DeadKernelError", str(err)[:500], seconds=time.monotonic() - started)
        finally:
            if not keep:
                self.nb.cells.pop(index)
        reply = self._replies.pop(index, {})
        result = CellResult("ok", seconds=round(time.monotonic() - started, 2), outputs=list(cell.outputs))
        if reply.get("status", "ok") != "ok":
            result.status = "timeout" if reply.get("ename") == TIMEOUT_ENAME else "error"
            result.ename = str(reply.get("ename", ""))[:200]
            result.evalue = str(reply.get("evalue", ""))[:500]
            result.traceback = _plain("\n".join(reply.get("traceback") or []))[-3000:]
        return result

    def responsive(self, wait: float = 15) -> bool:
        """After a cell timed out and was interrupted: does the kernel answer again?"""
        from jupyter_core.utils import run_sync

        msg_id = self.client.kc.execute("pass", store_history=False)
        end = time.monotonic() + wait
        while (left := end - time.monotonic()) > 0:
            try:
                msg = run_sync(self.client.kc.get_shell_msg)(timeout=left)
            except Exception:  # noqa: BLE001 - queue.Empty: no answer in time
                return False
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return True
        return False


def _plain(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def run_notebook(nb, *, cwd: str, env: dict | None = None, cell_timeout: float | None = None) -> dict:
    """Run every code cell of ``nb`` in order in one fresh kernel, stopping at the first that fails;
    outputs and timing metadata are written into ``nb``. Returns ``{"status", "error"}`` with
    status ``ok``, ``error in cell N``, ``timeout`` or ``kernel died``."""
    import nbformat

    with Kernel(cwd=cwd, env=env, cell_timeout=cell_timeout, record_timing=True) as k:
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            result = k.run(cell.source)
            ran = k.nb.cells[-1]
            cell.outputs = ran.outputs
            cell.execution_count = ran.execution_count
            cell.metadata["execution"] = ran.metadata.get("execution", {})
            if result.status == "ok":
                continue
            if result.status == "timeout":
                return {"status": "timeout", "error": f"cell {i} ran over {cell_timeout} s"}
            if result.status == "died":
                return {"status": "kernel died", "error": result.evalue[:300]}
            return {"status": f"error in cell {i}", "error": f"{result.ename}: {result.evalue}"[:300]}
    nbformat.validate(nb)
    return {"status": "ok", "error": ""}
