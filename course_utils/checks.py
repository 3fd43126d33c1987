"""Self-checks that tell a student in plain words what is right or wrong, and hidden probes.

``checking(exercise)`` wraps the checks of one exercise; ``check_*`` compare one thing each;
``probe`` records a value for the grader (see CONTRIBUTING.md, "Exercises").
"""
from __future__ import annotations

import contextlib
import json
import math
import os

PROBE_FILE_VAR = "COURSE_PROBE_FILE"
PROBES: list[dict] = []


class CheckFailed(AssertionError):
    """A self-check failed; the message says what is wrong and what to do."""


class _Counter:
    def __init__(self):
        self.passed = 0


_active: list[_Counter] = []


def _ok():
    if _active:
        _active[-1].passed += 1


@contextlib.contextmanager
def checking(exercise: str):
    """Run the checks of ``exercise``; a stub or a failure becomes a plain-words ``CheckFailed``."""
    counter = _Counter()
    _active.append(counter)
    try:
        yield counter
    except NotImplementedError:
        raise CheckFailed(
            f"Exercise '{exercise}' is not implemented yet: replace `raise NotImplementedError()` "
            "with your code, run that cell, then run this check again.") from None
    except CheckFailed as err:
        raise CheckFailed(f"Exercise '{exercise}': {err}") from None
    except Exception as err:  # the student's code raised something else
        raise CheckFailed(
            f"Exercise '{exercise}': your code raised {type(err).__name__}: {err}") from err
    finally:
        _active.pop()
    print(f"\u2705 Exercise '{exercise}': all {counter.passed} checks passed.")


def _first_difference(a: str, b: str) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            lo = max(0, i - 20)
            return (f"they first differ at character {i}: yours has {a[lo:i + 20]!r}, "
                    f"expected {b[lo:i + 20]!r}")
    shorter, longer = ("yours", "expected") if len(a) < len(b) else ("expected", "yours")
    n = min(len(a), len(b))
    rest = (b if len(a) < len(b) else a)[n:n + 40]
    return f"{shorter} stops after {n} characters; {longer} goes on with {rest!r}"


def check_equal(name: str, got, expected) -> None:
    """``got == expected``; for strings the message shows where they first differ."""
    if isinstance(expected, str) and not isinstance(got, str):
        raise CheckFailed(f"{name}: expected a string, got {type(got).__name__} ({got!r:.80})")
    if _to_plain(got) != _to_plain(expected):
        if isinstance(got, str):
            raise CheckFailed(f"{name}: {_first_difference(got, expected)}")
        if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)) and len(got) != len(expected):
            raise CheckFailed(f"{name}: expected {len(expected)} items, got {len(got)}")
        raise CheckFailed(f"{name}: expected {_short(expected)}, got {_short(got)}")
    _ok()


def check_close(name: str, got, expected, *, atol: float = 1e-5, rtol: float = 0.0) -> None:
    """Numbers or tensors equal within ``atol + rtol * |expected|``; says the largest difference."""
    import torch

    g = torch.as_tensor(_to_plain(got), dtype=torch.float64)
    e = torch.as_tensor(_to_plain(expected), dtype=torch.float64)
    if g.shape != e.shape:
        raise CheckFailed(f"{name}: expected shape {tuple(e.shape)}, got {tuple(g.shape)}")
    if torch.isnan(g).any():
        raise CheckFailed(f"{name}: your result contains NaN")
    diff = (g - e).abs()
    tol = atol + rtol * e.abs()
    if (diff > tol).any():
        worst = diff.max().item()
        raise CheckFailed(f"{name}: max difference {worst:.3g} is above the tolerance "
                          f"{atol:g}{f' + {rtol:g}*|expected|' if rtol else ''}")
    _ok()


def check_true(name: str, condition: bool, hint: str = "") -> None:
    """A yes/no check; ``hint`` tells the student what to look at when it fails."""
    if not condition:
        raise CheckFailed(f"{name}: not satisfied. {hint}".strip())
    _ok()


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _to_plain(value):
    """Tensors, arrays and tuples to plain lists/numbers, so results compare and serialise."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        return value.item() if value.ndim == 0 else value.tolist()
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def probe(exercise: str, name: str, fn, *, atol: float | None = None) -> None:
    """Hidden test: evaluate ``fn()`` and record its value for the grader.

    The grader compares what the student's kernel records with what the solution records in a
    separate kernel (with ``atol`` for numbers). An exception is recorded, never raised, so one
    broken exercise does not stop the others from being graded.
    """
    record = {"exercise": exercise, "name": name, "atol": atol}
    try:
        value = _to_plain(fn())
        json.dumps(value)
        record["value"] = value
    except NotImplementedError:
        record["error"] = "not implemented"
    except Exception as err:  # noqa: BLE001 - any student error becomes a recorded failure
        record["error"] = f"{type(err).__name__}: {err}"[:500]
    PROBES.append(record)
    path = os.environ.get(PROBE_FILE_VAR)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def _within(got, want, atol: float, where: str) -> str:
    """``""`` when ``got`` matches ``want`` (numbers within ``atol``, lists and dicts item by item,
    anything else equal), else why not, naming the first item that differs."""
    at = f"{where}: " if where else ""
    if isinstance(want, (int, float)) and not isinstance(want, bool):
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            return f"{at}not a number ({_short(got, 60)})"
        if math.isnan(want) or math.isnan(got):
            return "" if math.isnan(want) and math.isnan(got) else f"{at}{got} instead of {want}"
        worst = abs(got - want)
        return "" if worst <= atol else f"{at}off by {worst:.3g} (tolerance {atol:g})"
    if isinstance(want, list):
        if not isinstance(got, list):
            return f"{at}not a list or an array ({_short(got, 60)})"
        if len(got) != len(want):
            return f"{at}shape {_shape(got)} instead of {_shape(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            why = _within(g, w, atol, f"{where}[{i}]")
            if why:
                return why
        return ""
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            keys = sorted(got) if isinstance(got, dict) else type(got).__name__
            return f"{at}keys {keys} instead of {sorted(want)}"
        for k in want:
            why = _within(got[k], want[k], atol, f"{where}[{k!r}]")
            if why:
                return why
        return ""
    return "" if got == want else f"{at}{_short(got, 60)} instead of {_short(want, 60)}"


def _shape(value) -> tuple:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return tuple(shape)


def probe_matches(student: dict, reference: dict) -> tuple[bool, str]:
    """Compare a student's probe record with the solution's; ``(passed, reason)``.

    With the reference's ``atol``, numbers anywhere in the value (nested in lists and dicts too)
    match within it and everything else must be equal; without it, the values must be equal.
    """
    if "error" in student:
        return False, student["error"]
    if "error" in reference:
        return False, f"the reference itself failed: {reference['error']}"
    got, want = student.get("value"), reference.get("value")
    atol = reference.get("atol")
    if atol is not None:
        why = _within(got, want, float(atol), "")
        return not why, why
    return (got == want, "" if got == want else "a different result from the reference")
