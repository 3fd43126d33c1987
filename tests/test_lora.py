"""Unit tests of course_utils.lora (notebook 04), on tiny random models: no download, seconds."""
import math

import pytest
import torch
from torch import nn

from course_utils import lora

from tests.tiny import tiny_inputs, tiny_model


def test_lora_scaling():
    assert lora.lora_scaling(8, 16) == 2.0
    assert lora.lora_scaling(16, 8, use_rslora=True) == pytest.approx(2.0)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            lora.lora_scaling(bad, 16)


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_lora_linear_matches_the_formula(rslora):
    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    A, B = torch.randn(6, 3), torch.randn(3, 4)
    layer = lora.peft_lora_linear(base, A, B, alpha=5, use_rslora=rslora)
    x = torch.randn(2, 6)
    scale = 5 / math.sqrt(3) if rslora else 5 / 3
    with torch.no_grad():
        torch.testing.assert_close(layer(x), base(x) + scale * x @ A @ B)
    # the given base layer is copied, not wrapped in place
    assert isinstance(base, nn.Linear) and not hasattr(base, "lora_A")


def test_peft_lora_linear_rejects_bad_input():
    with pytest.raises(ValueError, match="torch.nn.Linear"):
        lora.peft_lora_linear(nn.Conv1d(2, 2, 1), torch.zeros(2, 1), torch.zeros(1, 2), alpha=1)
    with pytest.raises(ValueError, match="A must be"):
        lora.peft_lora_linear(nn.Linear(6, 4), torch.zeros(4, 2), torch.zeros(2, 6), alpha=1)


def _peft(model, **kw):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", **kw))


def test_randomize_adapter_is_seeded_and_moves_the_output():
    x = tiny_inputs()
    base_logits = lora.logits(tiny_model(), x)
    a, b = _peft(tiny_model()), _peft(tiny_model())
    assert lora.max_abs_diff(lora.logits(a, x), base_logits) == 0  # B = 0: a no-op
    lora.randomize_adapter(a, seed=3)
    lora.randomize_adapter(b, seed=3)
    assert lora.max_abs_diff(lora.logits(a, x), lora.logits(b, x)) == 0
    assert lora.max_abs_diff(lora.logits(a, x), base_logits) > 1e-4
    with pytest.raises(ValueError, match="No LoRA adapter named 'nope'"):
        lora.randomize_adapter(a, "nope")


def test_delta_weight_and_lora_layers():
    model = _peft(tiny_model())
    lora.randomize_adapter(model, seed=1)
    layers = lora.lora_layers(model)
    assert len(layers) == 2 * 7  # 7 linear layers per block, lm_head excluded
    layer = next(iter(layers.values()))
    expected = layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    torch.testing.assert_close(lora.delta_weight(layer), expected)


def test_init_effects():
    rows = {r["init"]: r for r in lora.init_effects(tiny_model(), tiny_inputs(), r=4)}
    assert set(rows) == set(lora.LORA_INITS)
    for name in ("default", "gaussian"):
        assert rows[name]["max |B|"] == 0 and rows[name]["base W moved (max)"] == 0
        assert rows[name]["output moved (max logit)"] == 0
    for name in ("olora", "pissa"):
        assert rows[name]["base W moved (max)"] > 1e-3
        assert rows[name]["output moved (max logit)"] < 1e-4
    with pytest.raises(ValueError, match="Unknown init"):
        lora.init_effects(tiny_model(), tiny_inputs(), inits=("loftq",))


def test_init_effects_leaves_the_model_alone():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora.init_effects(model, tiny_inputs(), inits=("pissa",), r=2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_merged_vs_unmerged_times_leaves_the_adapter_unmerged():
    model = _peft(tiny_model())
    lora.randomize_adapter(model, seed=0)
    x = tiny_inputs()
    before = lora.logits(model, x)
    times = lora.merged_vs_unmerged_times(model, x, rounds=2, repeats=1, warmup=0)
    assert set(times) == {"merged", "unmerged"} and all(t > 0 for t in times.values())
    assert not any(layer.merged for layer in lora.lora_layers(model).values())
    assert lora.max_abs_diff(lora.logits(model, x), before) < 1e-5
    with pytest.raises(ValueError, match="at least 1"):
        lora.merged_vs_unmerged_times(model, x, rounds=0)


def test_folder_size_mb(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 1_000_000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"x" * 500_000)
    assert lora.folder_size_mb(tmp_path) == pytest.approx(1.5)
    assert lora.folder_size_mb(tmp_path / "a.bin") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="does not exist"):
        lora.folder_size_mb(tmp_path / "missing")


def test_base_parameter_count_counts_tied_weights_once():
    model = tiny_model()
    assert model.config.tie_word_embeddings
    assert lora.base_parameter_count(model) == sum(p.numel() for p in set(model.parameters()))


def test_logits_runs_in_eval_mode_and_restores_the_mode():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model(), LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.5))
    lora.randomize_adapter(model, seed=0)
    model.train()
    first, second = lora.logits(model, tiny_inputs()), lora.logits(model, tiny_inputs())
    assert torch.equal(first, second) and model.training
