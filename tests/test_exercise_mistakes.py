"""Each exercise's self-check rejects the mistakes students typically make, not only the stub.

For a notebook whose checks need only its first cells (imports, parameters, mode), the check cell
runs in-process (hidden tests removed) after a plausible wrong answer is defined: it must raise
``CheckFailed``, and pass again on the solution.
"""
from pathlib import Path

import nbformat
import pytest

import course_utils as cu
from course_utils import build

ROOT = Path(__file__).resolve().parent.parent

# (notebook stem, exercise) -> wrong answers, each a typical mistake, as source code.
MISTAKES = {
    ("09_multi_gpu", "model_states_per_gpu"): {
        "every stage splits everything (ZeRO-3's answer for ZeRO-1 and 2)": '''
def model_states_per_gpu(psi, n_gpus, strategy, k=12):
    n = 1 if strategy == "ddp" else n_gpus
    return {"params": 2 * psi / n, "grads": 2 * psi / n, "optimizer": k * psi / n}
''',
        "ZeRO-2 splits the gradients but forgets the optimizer states": '''
def model_states_per_gpu(psi, n_gpus, strategy, k=12):
    split = {"ddp": (), "zero1": ("optimizer",), "zero2": ("grads",),
             "zero3": ("optimizer", "grads", "params")}[strategy]
    full = {"params": 2 * psi, "grads": 2 * psi, "optimizer": k * psi}
    return {name: v / n_gpus if name in split else v for name, v in full.items()}
''',
        "fp32 parameters and gradients (4 bytes each)": '''
def model_states_per_gpu(psi, n_gpus, strategy, k=12):
    split = {"ddp": (), "zero1": ("optimizer",), "zero2": ("optimizer", "grads"),
             "zero3": ("optimizer", "grads", "params")}[strategy]
    full = {"params": 4 * psi, "grads": 4 * psi, "optimizer": k * psi}
    return {name: v / n_gpus if name in split else v for name, v in full.items()}
''',
    },
    ("09_multi_gpu", "accumulation_steps"): {
        "forgets the processes (the single-GPU formula)": '''
def accumulation_steps(global_batch, per_device_batch, n_processes):
    return global_batch // per_device_batch
''',
        "rounds down instead of refusing a batch that does not divide": '''
def accumulation_steps(global_batch, per_device_batch, n_processes):
    return max(1, global_batch // (per_device_batch * n_processes))
''',
    },
}


def _course(cell):
    return cell.get("metadata", {}).get("course", {})


def _namespace_and_cells(stem):
    nb = nbformat.read(ROOT / "solutions" / f"{stem}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    ns = {}
    for cell in code[:3]:  # imports and setup, parameters, mode
        exec(compile(cell.source, f"{stem} setup", "exec"), ns)
    exercises = {_course(c)["exercise"]: c.source for c in code if _course(c).get("exercise")}
    checks = {_course(c)["check"]: build.without_hidden_tests(c.source) for c in code if _course(c).get("check")}
    return ns, exercises, checks


def test_every_exercise_listed_exists():
    for stem, exercise in MISTAKES:
        _, exercises, checks = _namespace_and_cells(stem)
        assert exercise in exercises and exercise in checks, (stem, exercise)


@pytest.mark.parametrize("stem, exercise, mistake", [(s, e, m) for (s, e), ms in MISTAKES.items() for m in ms],
                         ids=lambda v: v if len(v) < 40 else v[:40])
def test_the_check_rejects_a_typical_mistake(stem, exercise, mistake):
    ns, exercises, checks = _namespace_and_cells(stem)
    exec(MISTAKES[(stem, exercise)][mistake], ns)
    with pytest.raises(cu.CheckFailed):
        exec(checks[exercise], ns)
    exec(exercises[exercise], ns)  # the solution passes the same check
    exec(checks[exercise], ns)
