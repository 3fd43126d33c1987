"""Runs inside the kernel being graded: the student's exercise code, apart and watched.

The grader runs the instructor's notebook and, in place of each exercise's solution, calls
:func:`run_exercise` with the student's cell. That code is compiled under the file name
``<exercise ID>``, so every function it defines carries the exercise's name in its code objects.
While it runs, and while the exercise's check cell and hidden tests run (:func:`watch` ..
:func:`unwatch`), a profile hook looks for calls to the exercise's forbidden callables (the
solution's ``metadata.course.forbid``, ``"module:qualname"``) made with the student's code on the
call stack; each is recorded in the probe file as ``{"name": USES_REFERENCE, "value": spec}``.
Calls the instructor's cells make themselves are not counted.

After the exercise cell ends, whatever it changed in ``builtins`` and in the ``course_utils``
modules is put back, so patching a helper the check uses (or ``cu.probe``) does not reach the
hidden tests. The other cells of the student's notebook never run.

This is a tripwire in the student's own process, not a wall: code written to defeat it (removing
the hook and putting it back around the call) is not caught; the sandbox around the kernel is what
protects the machine, and the submitted source shows what a student did.
"""
from __future__ import annotations

import builtins
import importlib
import json
import linecache
import sys

USES_REFERENCE = "__uses_reference__"
PREFIX = "<exercise "

_targets: dict = {}  # code object -> {exercise id: spec}
_pending: dict[str, list[str]] = {}  # exercise -> specs not resolved yet (defined by a later cell)
_watching: set[str] = set()
_flagged: set[tuple[str, str]] = set()
_probe_file: str | None = None


def resolve(spec: str):
    """``"module:qualname"`` -> the code objects a call to it runs (a wrapper's and what it wraps)."""
    module, _, qualname = spec.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    codes = []
    while obj is not None and len(codes) < 4:
        func = getattr(obj, "__func__", obj)
        code = getattr(func, "__code__", None)
        if code is not None:
            codes.append(code)
        obj = getattr(func, "__wrapped__", None)
    if not codes:
        raise TypeError(f"{spec} is not a Python function or method")
    return codes


def start(forbid: dict[str, list[str]], probe_file: str) -> None:
    """Called once, before any student code: the exercises' forbidden callables, where to report."""
    global _probe_file
    _probe_file = probe_file
    for exercise, specs in forbid.items():
        _pending.setdefault(exercise, []).extend(specs)
    _resolve_pending(quiet=True)


def _resolve_pending(quiet: bool) -> None:
    """Resolve what can be now (a ``__main__:`` helper exists once its cell has run)."""
    for exercise, specs in _pending.items():
        for spec in list(specs):
            try:
                codes = resolve(spec)
            except Exception as err:  # noqa: BLE001 - not there yet, or the author's mistake
                if not quiet:
                    print(f"grader: cannot watch {spec} ({type(err).__name__}: {err})", file=sys.stderr)
                continue
            specs.remove(spec)
            for code in codes:
                _targets.setdefault(code, {})[exercise] = spec


def _record(exercise: str, spec: str) -> None:
    if (exercise, spec) in _flagged:
        return
    _flagged.add((exercise, spec))
    if _probe_file:
        with open(_probe_file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"exercise": exercise, "name": USES_REFERENCE, "value": spec}) + "\n")


def _profile(frame, event, arg):
    if event != "call":
        return
    hit = _targets.get(frame.f_code)
    if not hit:
        return
    caller = frame.f_back
    while caller is not None:
        name = caller.f_code.co_filename
        if name.startswith(PREFIX):
            exercise = name[len(PREFIX):-1]
            if exercise in hit and exercise in _watching:
                _record(exercise, hit[exercise])
        caller = caller.f_back


def _arm() -> None:
    if _watching and _targets:
        sys.setprofile(_profile)


def watch(exercise: str) -> None:
    if _pending.get(exercise):
        _resolve_pending(quiet=False)
    _watching.add(exercise)
    _arm()


def unwatch(exercise: str) -> None:
    """End the watch; a hook that is no longer ours means the student's code removed it."""
    if _targets and exercise in _watching and sys.getprofile() is not _profile:
        _record(exercise, "sys.setprofile (the grader's call monitor was switched off)")
    _watching.discard(exercise)
    if not _watching:
        sys.setprofile(None)


def _namespaces():
    spaces = [("builtins", builtins.__dict__)]
    spaces += [(n, m.__dict__) for n, m in list(sys.modules.items())
               if m is not None and (n == "course_utils" or n.startswith("course_utils."))]
    return spaces


def _snapshot():
    return {name: dict(space) for name, space in _namespaces()}


def _restore(before) -> list[str]:
    changed = []
    for name, space in _namespaces():
        old = before.get(name)
        if old is None:
            continue
        for key in [k for k in space if k not in old and not isinstance(space[k], type(sys))]:
            del space[key]  # (a submodule the cell imported stays)
            changed.append(f"{name}.{key}")
        for key, value in old.items():
            if space.get(key, _restore) is not value:
                space[key] = value
                changed.append(f"{name}.{key}")
    return changed


def run_exercise(exercise: str, source: str) -> None:
    """Run the student's exercise cell as code of its own, watched; then undo its patches."""
    ip = get_ipython()  # noqa: F821 - defined in every IPython kernel
    filename = f"{PREFIX}{exercise}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    code = compile(ip.transform_cell(source), filename, "exec")
    before = _snapshot()
    watch(exercise)
    try:
        exec(code, ip.user_ns)
    finally:
        unwatch(exercise)
        changed = _restore(before)
        if changed:
            print(f"grader: undid what the exercise cell changed in {', '.join(sorted(changed)[:5])}",
                  file=sys.stderr)
