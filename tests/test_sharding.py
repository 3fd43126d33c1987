"""Per-GPU memory under DDP, ZeRO and FSDP (course_utils.sharding): the ZeRO paper's own figures,
hand-derived splits of the one-GPU estimate, the one-GPU estimate at N = 1, and the GPU counts."""
from pathlib import Path

import pandas as pd
import pytest

from course_utils import memory, sharding

LLAMA_3B = "meta-llama/Llama-3.2-3B"
LLAMA_70B = "meta-llama/Llama-3.1-70B"
GB = 1e9


# ------------------------------------------------------------------------------- the paper
def test_the_zero_papers_figure_1():
    """7.5B parameters on 64 GPUs with mixed-precision Adam (K = 12): 120 GB per GPU for the
    baseline, 31.4 GB with P_os, 16.6 GB with P_os+g, 1.9 GB with P_os+g+p (Rajbhandari et al.)."""
    psi, n = 7.5e9, 64
    got = {s: sharding.zero_model_state_bytes(psi, n, s)["total"] / GB for s in sharding.STRATEGIES}
    assert got["ddp"] == pytest.approx(120.0)
    assert got["zero1"] == pytest.approx(31.4, abs=0.05)
    assert got["zero2"] == pytest.approx(16.6, abs=0.05)
    assert got["zero3"] == pytest.approx(1.9, abs=0.05)
    # by hand: (2 + 2 + 12) * psi / 64
    assert sharding.zero_model_state_bytes(psi, n, "zero3")["total"] == (2 + 2 + 12) * psi / 64


def test_the_papers_split_is_what_the_estimator_does_to_a_full_fine_tune():
    """A full fine-tune with fp32 master weights keeps 2 + 2 + 12 bytes per parameter; the
    sharded estimate's model states are the paper's, for every strategy."""
    psi = memory.count_parameters(LLAMA_3B).total
    for strategy in sharding.STRATEGIES:
        for n in (2, 8):
            est = sharding.estimate_sharded_memory(LLAMA_3B, method="full16", n_gpus=n, strategy=strategy,
                                                   master_weights=True)
            want = sharding.zero_model_state_bytes(psi, n, strategy)
            got = est.model_states()
            for part in ("params", "grads", "optimizer"):
                assert got[part] == pytest.approx(want[part], rel=1e-12), (strategy, n, part)


def test_without_master_weights_pure_bf16_adamw_keeps_k_4():
    """The one-GPU ``full16`` preset is pure bf16 AdamW: two 16-bit states, K = 4."""
    psi = memory.count_parameters(LLAMA_3B).total
    est = sharding.estimate_sharded_memory(LLAMA_3B, method="full16", n_gpus=4, strategy="zero1")
    assert est.model_states()["optimizer"] == pytest.approx(4 * psi / 4)
    assert est.model_states()["params"] == 2 * psi


# ------------------------------------------------------------------------- the estimator
@pytest.mark.parametrize("method", ["full16", "lora16", "qlora_trl", "qlora_recipe"])
@pytest.mark.parametrize("strategy", list(sharding.STRATEGIES))
def test_one_gpu_is_the_one_gpu_estimate(method, strategy):
    one = memory.estimate_training_memory(LLAMA_3B, method=method, seq_len=1024)
    est = sharding.estimate_sharded_memory(LLAMA_3B, method=method, seq_len=1024, n_gpus=1, strategy=strategy)
    assert est.peak_bytes == pytest.approx(one.peak_bytes, rel=1e-12)
    assert est.paged_bytes == one.paged_bytes
    assert est.phase == one.phase


def test_paged_states_are_split_like_the_others():
    one = memory.estimate_training_memory(LLAMA_3B, method="qlora_recipe")
    assert one.paged_bytes > 0
    for strategy, split in (("ddp", 1), ("zero1", 4), ("zero3", 4)):
        est = sharding.estimate_sharded_memory(one_gpu=one, n_gpus=4, strategy=strategy)
        assert est.paged_bytes == pytest.approx(one.paged_bytes / split)


def test_lora_under_zero3_splits_the_frozen_weights_too():
    one = memory.estimate_training_memory(LLAMA_70B, method="lora16", seq_len=2048, grad_ckpt=True)
    weights = one.parts["weights"] + one.parts["LoRA weights"]
    for n in (2, 4, 8):
        est = sharding.estimate_sharded_memory(one_gpu=one, n_gpus=n, strategy="zero3")
        assert est.parts["parameters"] == pytest.approx(weights / n)
        assert est.parts["optimizer states"] == pytest.approx(one.parts["optimizer states"] / n)
        # ZeRO-1/2 keep every weight on every GPU: for LoRA they barely help
        z2 = sharding.estimate_sharded_memory(one_gpu=one, n_gpus=n, strategy="zero2")
        assert z2.parts["parameters"] == pytest.approx(weights)
        assert z2.peak_bytes > 0.9 * one.peak_bytes


def test_zero3_gathers_the_root_and_two_layers():
    one = memory.estimate_training_memory(LLAMA_3B, method="full16")
    est = sharding.estimate_sharded_memory(one_gpu=one, n_gpus=4, strategy="zero3")
    pc = memory.count_parameters(LLAMA_3B)
    layers = memory.get_shape(LLAMA_3B)["num_hidden_layers"]
    by_hand = 2 * (pc.embedding + pc.lm_head) + 2 * 2 * (pc.linear + pc.other) / layers  # bf16
    assert est.parts["gathered layers (ZeRO-3/FSDP)"] == pytest.approx(by_hand)


def test_ddp_adds_the_gradient_buckets_and_never_saves_memory():
    one = memory.estimate_training_memory(LLAMA_3B, method="full16")
    est = sharding.estimate_sharded_memory(one_gpu=one, n_gpus=8, strategy="ddp")
    assert est.parts["DDP gradient buckets"] == pytest.approx(one.phases["the optimizer step"]["gradients"])
    assert est.peak_bytes > one.peak_bytes


@pytest.mark.parametrize("strategy", list(sharding.STRATEGIES))
def test_more_gpus_never_need_more_memory_each(strategy):
    one = memory.estimate_training_memory(LLAMA_70B, method="qlora_trl", seq_len=2048, grad_ckpt=True)
    peaks = [sharding.estimate_sharded_memory(one_gpu=one, n_gpus=n, strategy=strategy).peak_bytes
             for n in (2, 3, 4, 8, 16, 64)]
    assert peaks == sorted(peaks, reverse=True)


def test_offloading_moves_the_states_to_the_host():
    one = memory.estimate_training_memory(LLAMA_70B, method="lora16", seq_len=2048, grad_ckpt=True)
    grads = one.phases["the optimizer step"]["LoRA gradients"]
    weights = one.parts["weights"] + one.parts["LoRA weights"]
    opt = sharding.estimate_sharded_memory(one_gpu=one, n_gpus=4, strategy="zero3", offload_optimizer=True)
    assert opt.parts["optimizer states"] == 0
    assert opt.cpu_bytes == pytest.approx(one.parts["optimizer states"] + grads)
    both = sharding.estimate_sharded_memory(one_gpu=one, n_gpus=4, strategy="zero3", offload_params=True)
    assert both.parts["parameters"] == 0 and both.offload_optimizer
    assert both.cpu_bytes == pytest.approx(weights + one.parts["optimizer states"] + grads)
    assert both.peak_bytes < opt.peak_bytes < one.peak_bytes


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_gpus=0), "n_gpus must be a positive integer"),
    (dict(n_gpus=1.5), "n_gpus must be a positive integer"),
    (dict(n_gpus=True), "n_gpus must be a positive integer"),
    (dict(strategy="fsdp"), "strategy must be one of"),
    (dict(strategy="zero2", offload_params=True), "offload_params needs sharded parameters"),
    (dict(strategy="ddp", offload_optimizer=True), "DDP cannot offload"),
    (dict(offload_optimizer="yes"), "offload_optimizer must be True or False"),
    (dict(method="lora16", master_weights=True), "master_weights models a full fine-tune"),
])
def test_bad_arguments_say_what_to_do(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sharding.estimate_sharded_memory(LLAMA_3B, **{"n_gpus": 2, **kwargs})


def test_the_table_and_the_text_of_an_estimate():
    est = sharding.estimate_sharded_memory(LLAMA_70B, method="lora16", n_gpus=4, strategy="zero3",
                                           offload_optimizer=True)
    table = est.table()
    assert table["MiB per GPU"].sum() == pytest.approx((est.peak_bytes + est.paged_bytes) / 2 ** 20)
    assert table["MiB on the host"].max() == pytest.approx(est.cpu_bytes / 2 ** 20)
    assert "Llama-3.1-70B lora16 on 4 GPU(s), zero3, optimizer offloaded" in str(est)


# ---------------------------------------------------------------------------- GPU counts
def test_the_reserve_is_the_largest_gap_the_shipped_table_measured():
    table = pd.read_csv(Path(sharding.__file__).parent / "data" / sharding.MEASUREMENTS)
    rows = table[(table["status"] == "measured") & table["device_used_mib"].notna()]
    assert len(rows) > 0
    gaps = rows["device_used_mib"] - rows["peak_alloc_mib"]
    assert sharding.device_reserve_bytes() == pytest.approx(gaps.max() * 2 ** 20)
    assert gaps.min() > 0  # the device always holds more than PyTorch allocated
    contributing = " ".join((Path(__file__).resolve().parent.parent / "CONTRIBUTING.md").read_text().split())
    assert f"in the shipped measurements ({gaps.max():,.0f} MiB on the H100)" in contributing
    assert set(rows["gpu"]) == {"NVIDIA H100 80GB HBM3"}


@pytest.mark.parametrize("strategy", ["zero3", "zero2"])
def test_fewest_gpus_is_the_first_count_that_fits(strategy):
    kw = dict(method="lora16", seq_len=2048, grad_ckpt=True, optim="adamw_8bit")
    reserve = sharding.device_reserve_bytes()
    n = sharding.fewest_gpus(LLAMA_70B, gpu_gb=80, strategy=strategy, max_gpus=64, **kw)
    if strategy == "zero2":  # the 140 GB of bf16 weights stay on every GPU
        assert n is None
        return
    assert n is not None and n > 1
    fits = [sharding.estimate_sharded_memory(LLAMA_70B, n_gpus=k, strategy=strategy, **kw).fits(80, reserve)
            for k in (n - 1, n)]
    assert fits == [False, True]


def test_fewest_gpus_rejects_a_bad_card():
    for bad in (0, -16, "16", True):
        with pytest.raises(ValueError, match="gpu_gb must be a positive number"):
            sharding.fewest_gpus(LLAMA_3B, gpu_gb=bad)


def test_the_lecture_table_answers_every_row_on_every_card():
    table = sharding.lecture_gpu_table()
    lecture = memory.load_lecture_table()
    assert len(table) == 2 * len(lecture)
    assert list(table.columns[-3:]) == list(sharding.CARDS)
    reserve = sharding.device_reserve_bytes()
    for _, row in table.iterrows():
        cfg = memory.TrainConfig(shape=memory.LECTURE_STAND_INS[row["params_b"]],
                                 method={"QLoRA": "qlora_trl", "LoRA": "lora16"}[row["method"]],
                                 **memory.LECTURE_ASSUMPTIONS)
        for card, gb in sharding.CARDS.items():
            n = row[card]
            if pd.isna(n):  # even 4,096 cards do not fit: what stays whole per GPU is too large
                assert not sharding.estimate_sharded_memory(cfg, n_gpus=4096).fits(gb, reserve)
                continue
            assert sharding.estimate_sharded_memory(cfg, n_gpus=int(n)).fits(gb, reserve)
            if n > 1:
                assert not sharding.estimate_sharded_memory(cfg, n_gpus=int(n) - 1).fits(gb, reserve)
    # what the lecture's single-GPU figures say too: 70B LoRA does not fit one 80 GB card, QLoRA does
    row = table[(table["params_b"] == 70)].set_index("method")
    assert row.loc["LoRA", "A100/H100 (80 GB)"] > 1 and row.loc["QLoRA", "A100/H100 (80 GB)"] == 1
    assert (table["published_gb"].values == lecture[["qlora_4bit_gb", "lora_16bit_gb"]].values.ravel()).all()
