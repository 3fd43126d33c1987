"""Each exercise's self-check rejects the mistakes students typically make, not only the stub.

For a notebook whose checks need only its first cells (imports, parameters, mode), the check cell
runs in-process (hidden tests removed) after a plausible wrong answer is defined: it must raise
``CheckFailed``, and pass again on the solution. A check that needs what later cells compute (a
trained model, a batch) gets a stand-in from ``CONTEXT``, built the way those cells build it.
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


MISTAKES.update({
    ("08_rl_rewards", "verifiable_rewards"): {
        "exact match on the whole completion, not its first line": '''
def exact_match_reward(completions, answer, **kwargs):
    return [float(c.strip() == a) for c, a in zip(completions, answer)]
''',
        "exact match without stripping the leading space": '''
def exact_match_reward(completions, answer, **kwargs):
    return [float(c.split("\\n")[0] == a) for c, a in zip(completions, answer)]
''',
        "format reward that accepts anything ending in ay (re.search, not fullmatch)": '''
import re
def format_reward(completions, **kwargs):
    return [float(re.search(r"[A-Za-z]+ay", c) is not None) for c in completions]
''',
        "format reward that returns booleans": '''
import re
def format_reward(completions, **kwargs):
    return [re.fullmatch(r"[A-Za-z]+(?:['-][A-Za-z]+)*ay", c.strip()) is not None for c in completions]
''',
    },
    ("08_rl_rewards", "grpo_objective"): {
        "population standard deviation (divided by G, not G - 1)": '''
def group_advantages(rewards, group_size):
    g = rewards.view(-1, group_size)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True, unbiased=False) + 1e-4)).view(-1)
''',
        "the paper's per-answer mean (loss_type grpo), not TRL's default dapo": '''
def grpo_loss(logps, old_logps, ref_logps, advantages, mask, *, beta, epsilon):
    ratio = torch.exp(logps - old_logps)
    adv = advantages.unsqueeze(1)
    surrogate = torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * adv)
    kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
    return (((-surrogate + beta * kl) * mask).sum(1) / mask.sum(1)).mean()
''',
        "clipped term only, without the min": '''
def grpo_loss(logps, old_logps, ref_logps, advantages, mask, *, beta, epsilon):
    ratio = torch.exp(logps - old_logps)
    surrogate = torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * advantages.unsqueeze(1)
    kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
    return ((-surrogate + beta * kl) * mask).sum() / mask.sum()
''',
        "the KL estimator with the log ratio the wrong way round": '''
def grpo_loss(logps, old_logps, ref_logps, advantages, mask, *, beta, epsilon):
    ratio = torch.exp(logps - old_logps)
    adv = advantages.unsqueeze(1)
    surrogate = torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * adv)
    kl = torch.exp(logps - ref_logps) - (logps - ref_logps) - 1
    return ((-surrogate + beta * kl) * mask).sum() / mask.sum()
''',
    },
})

# What a check needs from cells after the first three: the names it reads, built as those cells
# build them (tests/test_rewards.py holds these formulas to GRPOTrainer's own numbers).
CONTEXT = {
    ("08_rl_rewards", "grpo_objective"): '''
import types
_g = torch.Generator().manual_seed(0)
NUM_GENERATIONS, BETA = 4, 0.04
trainer = types.SimpleNamespace(epsilon_low=0.2)
group_rewards = torch.tensor([2.0, 1.4, 1.4, 0.3, 1.0, 1.0, 1.0, 1.0, 0.0, 2.5, 1.2, 0.7])
_grouped = group_rewards.view(-1, NUM_GENERATIONS)
_adv = ((_grouped - _grouped.mean(1, keepdim=True)) / (_grouped.std(1, keepdim=True) + 1e-4)).view(-1)
_mask = torch.ones(12, 6)
for _i, _n in enumerate([6, 3, 4, 1, 6, 2, 5, 6, 2, 3, 4, 6]):
    _mask[_i, _n:] = 0
_logps = -torch.rand(12, 6, generator=_g) * 4
moved = _logps + 0.3 * torch.randn(12, 6, generator=_g)
_ref = _logps + 0.2 * torch.randn(12, 6, generator=_g)
gbatch = {"logps": _logps, "advantages": _adv, "completion_mask": _mask, "ref_per_token_logps": _ref}
_ratio = torch.exp(_logps - moved)
_sur = torch.min(_ratio * _adv[:, None], torch.clamp(_ratio, 0.8, 1.2) * _adv[:, None])
_kl = torch.exp(_ref - _logps) - (_ref - _logps) - 1
trl_value = float(((-_sur + BETA * _kl) * _mask).sum() / _mask.sum())
''',
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
    exec(CONTEXT.get((stem, exercise), ""), ns)
    exec(exercises[exercise], ns)  # the solution, then the mistake in place of one of its functions
    exec(MISTAKES[(stem, exercise)][mistake], ns)
    with pytest.raises(cu.CheckFailed):
        exec(checks[exercise], ns)
    exec(exercises[exercise], ns)  # the solution passes the same check
    exec(checks[exercise], ns)
