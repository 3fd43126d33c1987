"""What notebooks 06 (DPO) and 07 (capstone) say about TRL 1.16 and transformers 5.17, checked
against the libraries themselves (issue 17): tiny random models with the real tokenizer, seconds."""
import math
import re
from pathlib import Path

import nbformat
import pytest
import torch

from course_utils import dpo

ROOT = Path(__file__).resolve().parents[1]
NB06 = ROOT / "solutions" / "06_dpo.ipynb"
NB07 = ROOT / "solutions" / "07_instruction_tuning.ipynb"

ROWS = [
    {"sentence": "You must trust your feelings.", "translation": "Trust your feelings, you must.",
     "translation_extra": "Trust your feelings, you must. Hmm."},
    {"sentence": "The dog sleeps by the fire.", "translation": "By the fire, the dog sleeps.",
     "translation_extra": "By the fire, the dog sleeps. Yes, hrrrm."},
    {"sentence": "We walked home.", "translation": "Home, we walked.",
     "translation_extra": "Home, we walked. Hmmm."},
    {"sentence": "The ship is fast.", "translation": "Fast, the ship is.",
     "translation_extra": "Fast, the ship is. Hmm, yes."},
]


def tiny_model(seed=0, attn_implementation=None):
    from course_utils import load_architecture

    torch.manual_seed(seed)
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    return load_architecture("HuggingFaceTB/SmolLM2-135M-Instruct", num_hidden_layers=1, hidden_size=32,
                             intermediate_size=64, num_attention_heads=2, num_key_value_heads=1, **kwargs).eval()


def parameters(path):
    """The literals of a notebook's `parameters` cell."""
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values = {}
    exec(cell.source, {}, values)
    return values


def markdown(path):
    return "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")


def lora_dpo_trainer(tokenizer, tmp_path, **config):
    from peft import LoraConfig
    from trl import DPOTrainer

    torch.manual_seed(0)
    args = dpo.dpo_config(tmp_path, per_device_train_batch_size=2, learning_rate=1e-2, **config)
    return DPOTrainer(model=tiny_model(0), args=args, processing_class=tokenizer,
                      train_dataset=dpo.yoda_preferences(ROWS, system_prompt="Be Yoda."),
                      peft_config=LoraConfig(r=4, lora_dropout=0.0, target_modules="all-linear"))


# ------------------------------------------------------------------------------- 06 DPO
def test_step_one_rewards_are_zero_and_strict_comparison_gives_accuracy_zero(tokenizer, tmp_path):
    """06 cell 21: a new LoRA is zero at step 1, so policy = reference, every reward is 0 and TRL's
    strict `chosen_rewards > rejected_rewards` counts no pair as ranked right: accuracy 0, not 0.5."""
    trainer = lora_dpo_trainer(tokenizer, tmp_path, max_steps=2, logging_steps=1)
    trainer.train()
    first, second = dpo.dpo_history(trainer.state.log_history).iloc[:2].to_dict("records")
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0
    assert first["rewards/margins"] == 0.0 and first["rewards/accuracies"] == 0.0
    assert second["rewards/margins"] != 0.0  # after one update the adapter is no longer zero


def test_logged_value_is_the_mean_over_the_logging_window(tokenizer, tmp_path):
    """07 cells 37-38: with logging_steps=k the first logged margin is the mean of steps 1..k,
    not the value at step 1 (DPOTrainer.log averages what each step recorded)."""
    every = lora_dpo_trainer(tokenizer, tmp_path / "1", max_steps=2, logging_steps=1)
    every.train()
    window = lora_dpo_trainer(tokenizer, tmp_path / "2", max_steps=2, logging_steps=2)
    window.train()
    steps = dpo.dpo_history(every.state.log_history)["rewards/margins"]
    logged = dpo.dpo_history(window.state.log_history)["rewards/margins"]
    assert list(logged.index) == [2]
    assert steps.iloc[0] == 0.0 and steps.iloc[1] != 0.0
    assert logged.iloc[0] == pytest.approx(steps.mean(), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("precompute", [False, True])
def test_each_dpo_step_runs_the_reference_unless_precomputed(tokenizer, tmp_path, precompute):
    """06 cells 18 and 29: with LoRA the reference is the model with the adapter off, run again on
    every batch; `precompute_ref_log_probs=True` runs it once over the data before training."""
    trainer = lora_dpo_trainer(tokenizer, tmp_path, max_steps=2, precompute_ref_log_probs=precompute)
    calls = []
    base = trainer.model.get_base_model()
    handle = base.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    try:
        trainer.train()
    finally:
        handle.remove()
    # one batch of 2 pairs per step: the policy's pass (with gradients), then the reference's (without)
    assert calls == ([True] * 2 if precompute else [True, False] * 2)


def test_beta_sweep_push_is_not_monotone_in_beta():
    """06 cells 14 and 18: d loss / d delta = -beta * sigmoid(-beta * delta) (autograd on the loss
    TRL's sigmoid DPO loss computes, see tests/test_dpo.py); for delta > 0 its size first grows
    with beta, then falls, with its maximum at beta * delta = 1.28."""
    delta = torch.tensor(2.0)
    betas = torch.linspace(0.01, 5.0, 2000)
    push = []
    for beta in betas:
        d = delta.clone().requires_grad_(True)
        (-torch.nn.functional.logsigmoid(beta * d)).backward()
        assert d.grad.item() == pytest.approx(-(beta * torch.sigmoid(-beta * delta)).item(), abs=1e-6)
        push.append(-d.grad.item())
    best = betas[int(torch.tensor(push).argmax())].item()
    assert push[0] < max(push) and push[-1] < max(push)
    assert best * delta.item() == pytest.approx(1.28, abs=0.01)


def test_notebook_06_learning_rate_is_dpo_configs(tmp_path):
    """06's LEARNING_RATE and dpo_config's default agree, and sit above TRL's own default (1e-6),
    as dpo.LEARNING_RATE's comment says."""
    from trl import DPOConfig

    assert parameters(NB06)["LEARNING_RATE"] == dpo.LEARNING_RATE == dpo.dpo_config(tmp_path).learning_rate
    defaults = {name: f.default for name, f in DPOConfig.__dataclass_fields__.items()}
    assert defaults["learning_rate"] == 1e-6 < dpo.LEARNING_RATE
    assert defaults["beta"] == 0.1 == parameters(NB06)["BETA"]
    assert parameters(NB07)["DPO_LR"] > defaults["learning_rate"]  # 07's comment: a LoRA's rate


# ----------------------------------------------------------------------------- 07 packing
def test_bfd_packing_truncates_what_bfd_split_keeps():
    """07 cell 26: SFTConfig's default packing strategy, "bfd", cuts an example longer than
    max_length (the rest is dropped); "bfd_split" splits it into further rows."""
    from datasets import Dataset
    from trl import SFTConfig
    from trl.data_utils import pack_dataset

    assert SFTConfig.__dataclass_fields__["packing_strategy"].default == "bfd"
    data = Dataset.from_dict({"input_ids": [list(range(10)), [100, 101, 102]]})
    kept = sum(len(row) for row in pack_dataset(data, 4, "bfd")["input_ids"])
    split = sorted(t for row in pack_dataset(data, 4, "bfd_split")["input_ids"] for t in row)
    assert kept == 4 + 3
    assert split == sorted(list(range(10)) + [100, 101, 102])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_rows_get_a_block_diagonal_mask(attn):
    """07 cell 26: two sequences concatenated in one row, with position ids restarting at 0 and no
    attention_mask (what TRL's padding-free collator sends), give each sequence the logits it has
    alone: transformers builds the block-diagonal mask from the position ids for sdpa and eager.
    It does so only without a cache (`masking_utils._preprocess_mask_arguments`), and SFTTrainer's
    compute_loss passes `use_cache=False`."""
    import inspect

    from trl import SFTTrainer

    assert 'inputs["use_cache"] = False' in inspect.getsource(SFTTrainer.compute_loss)
    model = tiny_model(0, attn_implementation=attn)
    assert model.config._attn_implementation == attn
    a, b = torch.arange(5, 10), torch.arange(20, 24)
    with torch.no_grad():
        alone = torch.cat([model(input_ids=x[None]).logits[0] for x in (a, b)])
        packed = model(input_ids=torch.cat([a, b])[None], use_cache=False,
                       position_ids=torch.cat([torch.arange(5), torch.arange(4)])[None]).logits[0]
        with_mask = model(input_ids=torch.cat([a, b])[None], attention_mask=torch.ones(1, 9, dtype=torch.long),
                          use_cache=False, position_ids=torch.cat([torch.arange(5), torch.arange(4)])[None]).logits[0]
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(with_mask[5:], alone[5:], atol=1e-3)  # an all-ones mask lets b see a


# ------------------------------------------------------------------------------ the text
def test_notebook_07_quotes_no_figures_of_a_run_the_student_does_not_do():
    text = markdown(NB07)
    assert "H100" not in text
    assert not re.search(r"\b2\.30\b|\b2\.83\b", text)


@pytest.mark.parametrize("path", [NB06, NB07], ids=["06", "07"])
def test_no_single_letter_module_aliases(path):
    """Modules are named by their names (`from course_utils import dpo`), not by one letter;
    `torch.nn.functional as F` is PyTorch's own convention and stays."""
    code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    aliases = re.findall(r"^\s*(?:from\s+\S+\s+)?import\s+(\S+)\s+as\s+([A-Za-z])\b", code, re.M)
    assert [a for a in aliases if a != ("torch.nn.functional", "F")] == []


def test_push_column_peak_matches_the_text():
    """06 cell 14 names the peak of beta * sigmoid(-beta * delta) at beta * delta = 1.28: the root
    of x * sigmoid(x) = 1."""
    assert "1.28" in markdown(NB06)
    x = 1.28
    assert x / (1 + math.exp(-x)) == pytest.approx(1.0, abs=2e-3)
