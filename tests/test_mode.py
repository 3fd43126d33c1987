import pytest
import torch

import course_utils as cu
from course_utils import mode


def test_reduced_mode_follows_the_variable(monkeypatch):
    monkeypatch.setenv("COURSE_SMOKE", "1")
    assert cu.is_reduced() and cu.for_mode(full=200, reduced=5) == 5
    for off in ("", "0", "false"):
        monkeypatch.setenv("COURSE_SMOKE", off)
        assert not cu.is_reduced() and cu.for_mode(full=200, reduced=5) == 200
    monkeypatch.delenv("COURSE_SMOKE")
    assert not cu.is_reduced()


@pytest.mark.parametrize("capability, native", [((7, 5), False), ((7, 0), False), ((8, 0), True), ((9, 0), True)])
def test_bf16_only_from_ampere_on(capability, native):
    # A T4 (7.5) reports is_bf16_supported() == True through emulation; we decide by capability.
    assert mode.gpu_has_native_bf16(capability) is native


def test_dtype_per_device(monkeypatch):
    assert cu.pick_dtype("cpu") is torch.float32
    monkeypatch.setattr(mode, "gpu_has_native_bf16", lambda capability=None: False)
    assert cu.pick_dtype("cuda") is torch.float16
    assert mode.training_precision("cuda") == {"bf16": False, "fp16": True}
    monkeypatch.setattr(mode, "gpu_has_native_bf16", lambda capability=None: True)
    assert cu.pick_dtype("cuda") is torch.bfloat16
    monkeypatch.setenv("COURSE_GPU_DTYPE", "fp16")  # the T4's path on a newer GPU
    assert cu.pick_dtype("cuda") is torch.float16 and cu.training_precision("cuda") == {"bf16": False, "fp16": True}
    assert cu.pick_dtype("cpu") is torch.float32
    monkeypatch.setenv("COURSE_GPU_DTYPE", "fp8")
    with pytest.raises(ValueError, match="fp16"):
        cu.pick_dtype("cuda")
    monkeypatch.delenv("COURSE_GPU_DTYPE")
    assert mode.training_precision("cpu") == {"bf16": False, "fp16": False}


def test_trainer_settings_follow_the_machine(monkeypatch):
    monkeypatch.setattr(mode, "has_cuda", lambda: True)
    monkeypatch.setattr(mode, "gpu_has_native_bf16", lambda capability=None: False)  # a T4
    monkeypatch.setenv("COURSE_SMOKE", "0")
    t4 = cu.trainer_settings()
    assert t4["fp16"] and not t4["bf16"] and t4["gradient_checkpointing"] and not t4["use_cpu"]
    monkeypatch.setenv("COURSE_SMOKE", "1")  # reduced mode trains on the CPU even beside a GPU
    cpu = cu.trainer_settings()
    assert not (cpu["fp16"] or cpu["bf16"] or cpu["gradient_checkpointing"]) and cpu["use_cpu"]
    assert cpu["report_to"] == "none" and cpu["save_strategy"] == "no"


def test_reduced_mode_stays_on_cpu(monkeypatch):
    monkeypatch.setenv("COURSE_SMOKE", "1")
    monkeypatch.setattr(mode, "has_cuda", lambda: True)
    assert cu.pick_device() == "cpu"
    monkeypatch.setenv("COURSE_SMOKE", "0")
    assert cu.pick_device() == "cuda"


def test_setup_prints_versions_device_and_seeds(capsys):
    env = cu.setup(seed=7)
    out = capsys.readouterr().out
    for word in ("torch", "transformers", "trl", "peft", "datasets", "device: cpu", "dtype: float32", "seed: 7"):
        assert word in out
    assert env.device == "cpu" and env.reduced
    a = torch.rand(3)
    cu.setup(seed=7, quiet=True)
    assert torch.equal(a, torch.rand(3))


def test_needs_gpu_says_why_it_skips(capsys, monkeypatch):
    assert cu.needs_gpu("4-bit training") is False
    assert "4-bit training needs a CUDA GPU" in capsys.readouterr().out
    monkeypatch.setenv("COURSE_SMOKE", "0")
    monkeypatch.setattr(mode, "has_cuda", lambda: False)
    assert cu.needs_gpu("measured VRAM") is False
    assert "Runtime > Change runtime type" in capsys.readouterr().out


def test_output_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_OUTPUTS", str(tmp_path))
    assert cu.output_dir("03_yoda_sft") == tmp_path / "03_yoda_sft"
    assert (tmp_path / "03_yoda_sft").is_dir()


def test_setup_says_when_full_mode_has_no_gpu(monkeypatch, capsys):
    monkeypatch.setattr(mode, "has_cuda", lambda: False)
    monkeypatch.setenv("COURSE_SMOKE", "0")
    env = cu.setup()
    assert env.device == "cpu" and "No GPU: full mode trains slowly" in capsys.readouterr().out
    monkeypatch.setenv("COURSE_SMOKE", "1")
    cu.setup()
    assert "No GPU" not in capsys.readouterr().out
