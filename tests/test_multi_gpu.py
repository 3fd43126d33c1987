"""course_utils/data/multi_gpu/: notebook 03's Yoda LoRA SFT launched on several processes, proven on the 2-core CPU.

Three launches, each run once (module-scoped fixtures) on the real SmolLM2-135M-Instruct (the
offline copy), STEPS optimizer steps, max_length 64, float32, gloo:
- ``single``: ``trl sft`` on one process, per-device batch BATCH, gradient accumulation 2;
- ``ddp``: ``trl sft --accelerate_config course_utils/data/multi_gpu/accelerate/ddp.yaml --num_processes 2`` with
  ``use_cpu`` (accelerate's MULTI_CPU, gloo), per-device batch BATCH, no accumulation;
- ``fsdp``: ``torchrun --nproc_per_node 2 tests/fsdp_cpu_check.py`` (torch's ``fully_shard``,
  since accelerate does not shard on a CPU: see test_accelerate_fsdp_is_plain_ddp_on_cpu).

The same global batch of 2 * BATCH rows per step, the same seed and the same data order: accelerate
gives batch i to process i % 2 (``split_batches=False``), the one-process run accumulates batches
2s and 2s+1, and the Trainer divides every micro-batch's summed token loss by the completion tokens
of the whole global batch (``num_items_in_batch``, summed across processes by
``average_tokens_across_devices``) and multiplies it by the world size, which DDP's gradient mean
divides out. So the logged loss of each step must agree up to float32 rounding.

LoRA dropout is 0 in these runs: with 0.05 (the recipe's), each process draws its own masks, so the
runs differ by design (measured: up to 7e-4 relative from step 2 on; step 1 agrees, LoRA's B is 0).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from course_utils import launch

pytestmark = pytest.mark.xdist_group("multi_gpu")  # one worker: the launches are module fixtures, MEASURED is shared

ROOT = Path(__file__).resolve().parent.parent
MULTI = ROOT / "course_utils" / "data" / "multi_gpu"
SFT_YAML = MULTI / "sft_yoda.yaml"
SHIPPED = ROOT / "course_utils" / "data" / "multi_gpu_cpu.json"  # one run of this file, with its machine
# Every shipped accelerate config and the distributed type it claims.
ACCELERATE_YAMLS = {"ddp.yaml": "MULTI_GPU", "fsdp2.yaml": "FSDP", "fsdp2_offload.yaml": "FSDP",
                    "zero3.yaml": "DEEPSPEED", "zero3_offload.yaml": "DEEPSPEED"}
STEPS, BATCH, MAX_LENGTH, N_EVAL = 4, 2, 64, 16
# float32 losses summed over a few hundred tokens and gradients reduced in another order differ by
# ~1e-7..1e-6 relative; 1e-5 leaves room for other CPUs and thread counts. A different example in a
# batch, or different dropout masks, moves the loss by 1e-4 to 1e-1 (measured 7e-4 for dropout).
RTOL = 1e-5
LAUNCH_TIMEOUT = 420
# LoRA: frozen base weights are sharded on dim 0, so a rank can hold at most one row of the largest
# tensor beyond an even split; plus 1 % for anything else.
SHARD_RTOL = 0.01

# The lesson's own SFTConfig fields and the LoRA fields sft_yoda.yaml must share with course_utils.yoda.
LESSON_FIELDS = ("learning_rate", "lr_scheduler_type", "warmup_steps", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "num_train_epochs", "max_length", "completion_only_loss",
                 "logging_steps", "seed")
MACHINE_FIELDS = ("output_dir", "use_cpu", "bf16", "fp16", "gradient_checkpointing", "disable_tqdm",
                  "save_strategy", "report_to")  # trainer_settings() decides these from the machine
LORA_FIELDS = ("r", "lora_alpha", "lora_dropout", "target_modules", "task_type", "bias", "use_rslora", "use_dora")

MEASURED: dict = {}  # what the runs measured; written to the runs folder at the end of the module


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("OMP_NUM_THREADS", None)  # let the launchers split the cores between processes
    return env


def _run(cmd: list[str], name: str) -> float:
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    wall = time.time() - start
    if proc.returncode != 0:
        pytest.fail(f"{name} failed ({proc.returncode}): {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-4000:]}")
    MEASURED.setdefault("wall_s", {})[name] = round(wall, 1)
    return wall


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """Where the runs write; at the end, ``measured.json`` holds what they measured with the machine
    and versions (the shape of ``course_utils/data/multi_gpu_cpu.json``, which ships one such run)."""
    from course_utils import timing

    path = tmp_path_factory.mktemp("multi_gpu")
    yield path
    MEASURED.update(machine=timing.machine(), versions=timing.versions(),
                    measured_at=time.strftime("%Y-%m-%d"), steps=STEPS, per_device_batch=BATCH, max_length=MAX_LENGTH)
    (path / "measured.json").write_text(json.dumps(MEASURED, indent=1))
    print(f"\nmulti_gpu measured: {json.dumps(MEASURED)}")


@pytest.fixture(scope="module")
def data(runs_dir):
    """``python -m course_utils.launch prepare-data``: the training rows and the model path it prints,
    plus a fixed eval split (the first N_EVAL training rows) to see the loss move."""
    out = runs_dir / "data"
    proc = subprocess.run([sys.executable, "-m", "course_utils.launch", "prepare-data", str(out)], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (out / "train.jsonl").read_text(encoding="utf-8").splitlines()
    (out / "test.jsonl").write_text("\n".join(lines[:N_EVAL]) + "\n", encoding="utf-8")
    return {"dir": out, "model": proc.stdout.strip().splitlines()[-1], "rows": [json.loads(x) for x in lines]}


def _sft(data, out_dir, grad_accum, n_processes) -> list[str]:
    """The notebook's launch command (course_utils.launch.sft_command) for a tiny CPU run."""
    return launch.sft_command(
        data["model"], data["dir"], out_dir, n_processes=n_processes, device="cpu",
        max_steps=STEPS, max_length=MAX_LENGTH, warmup_steps=0, per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=grad_accum, lora_dropout=0, logging_steps=1,
        # the last step's checkpoint carries trainer_state.json (log_history) and one rng state per process
        save_strategy="steps", save_steps=STEPS,
        eval_strategy="steps", eval_steps=STEPS, eval_on_start=True, dataset_test_split="test",
        per_device_eval_batch_size=8)


def _sft_run(data, runs_dir, name, grad_accum, n_processes) -> dict:
    out = runs_dir / name
    wall = _run(_sft(data, out, grad_accum, n_processes), name)
    ckpt = out / f"checkpoint-{STEPS}"
    history = launch.log_history(out, STEPS)
    (runs_dir / f"{name}_log_history.json").write_text(json.dumps(history, indent=1))
    return {"history": history, "checkpoint": ckpt, "wall": wall,
            "train": [h for h in history if "loss" in h], "eval": [h for h in history if "eval_loss" in h]}


@pytest.fixture(scope="module")
def single(data, runs_dir):
    return _sft_run(data, runs_dir, "single", 2, 1)


@pytest.fixture(scope="module")
def ddp(data, runs_dir):
    return _sft_run(data, runs_dir, "ddp", 1, 2)


@pytest.fixture(scope="module")
def fsdp(data, runs_dir):
    out = runs_dir / "fsdp.json"
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(launch.free_port()),
          str(ROOT / "tests" / "fsdp_cpu_check.py"), "--model", data["model"], "--data", str(data["dir"]), "--out", str(out),
          "--max_steps", str(STEPS), "--per_device_train_batch_size", str(BATCH), "--max_length", str(MAX_LENGTH)],
         "fsdp")
    return json.loads(out.read_text())


def _max_rel_diff(a, b) -> float:
    assert len(a) == len(b) and a, (a, b)
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


# ---------------------------------------------------------------------------- course_utils.launch
def test_launch_argument_errors(tmp_path, capsys):
    from course_utils import launch

    for argv, says in ([], "required"), (["prepare-data"], "OUT_DIR"), (["nonsense"], "invalid choice"), \
            (["prepare-data", str(tmp_path), "--source", "web"], "invalid choice"):
        with pytest.raises(SystemExit) as err:
            launch.main(argv)
        assert err.value.code == 2, argv
        assert says in capsys.readouterr().err, argv
    a_file = tmp_path / "train.jsonl"
    a_file.write_text("")
    with pytest.raises(SystemExit) as err:
        launch.main(["prepare-data", str(a_file)])
    assert err.value.code == 2
    assert "is a file" in capsys.readouterr().err


def test_prepare_data_writes_the_recipe_rows(data):
    from course_utils import yoda

    expected = yoda.to_conversations(yoda.load_yoda("train", quiet=True))
    assert len(data["rows"]) == len(expected)
    assert data["rows"][0] == {"prompt": expected[0]["prompt"], "completion": expected[0]["completion"]}
    assert all([m["role"] for m in r["prompt"]] == ["system", "user"] and r["completion"][0]["role"] == "assistant"
               for r in data["rows"])
    assert (Path(data["model"]) / "model.safetensors").exists(), "reduced mode: the offline model folder"


# ------------------------------------------------------------------------------------ the configs
@pytest.mark.parametrize("name", sorted(ACCELERATE_YAMLS))
def test_accelerate_yaml_loads_and_names_its_type(name):
    from accelerate.commands.config.config_args import load_config_from_file

    path = MULTI / "accelerate" / name
    config = load_config_from_file(str(path))
    assert str(config.distributed_type).split(".")[-1] == ACCELERATE_YAMLS[name]
    assert config.num_processes == 2 and config.num_machines == 1
    assert config.mixed_precision == "no", "the SFT config's bf16/fp16 choose the precision"
    assert not config.use_cpu
    offload = "offload" in name
    if ACCELERATE_YAMLS[name] == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_offload_params"] is offload
    if ACCELERATE_YAMLS[name] == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == 3
        want = "cpu" if offload else "none"
        assert config.deepspeed_config["offload_optimizer_device"] == want
        assert config.deepspeed_config["offload_param_device"] == want


def test_every_accelerate_yaml_is_tested():
    assert sorted(p.name for p in (MULTI / "accelerate").glob("*.yaml")) == sorted(ACCELERATE_YAMLS)


def test_sft_yaml_is_the_course_recipe(monkeypatch, tmp_path):
    """sft_yoda.yaml, parsed by `trl sft`'s own parser, has yoda_sft_config()'s and yoda_lora_config()'s values
    (full mode), and trainer_settings()'s on a GPU with bf16."""
    import yaml
    from trl import SFTConfig, get_peft_config
    from trl.scripts.sft import make_parser

    import course_utils.mode as mode
    from course_utils import yoda
    from course_utils.models import FALLBACK_ID

    monkeypatch.delenv("COURSE_SMOKE", raising=False)  # the full-mode recipe (warmup 5 %)
    # `--use_cpu true`: this CPU refuses bf16 on a GPU (the yaml's), which a GPU run would take.
    script, cfg, model, _ = make_parser().parse_args_and_config(
        ["--config", str(SFT_YAML), "--output_dir", str(tmp_path), "--use_cpu", "true"])
    recipe, default = yoda.yoda_sft_config(tmp_path), SFTConfig(output_dir=str(tmp_path), use_cpu=True)
    got, want, base = cfg.to_dict(), recipe.to_dict(), default.to_dict()
    for field in LESSON_FIELDS:
        assert got[field] == want[field], field
    # and every other field the recipe (or the yaml) sets away from TRL's defaults
    differ = {k for k in base if k not in MACHINE_FIELDS and (got[k] != base[k] or want[k] != base[k])}
    assert {k: got[k] for k in differ} == {k: want[k] for k in differ}

    lora, course_lora = get_peft_config(model), yoda.yoda_lora_config()
    for field in LORA_FIELDS:
        assert getattr(lora, field) == getattr(course_lora, field), field
    assert model.use_peft and model.model_name_or_path == FALLBACK_ID
    assert script.dataset_train_split == "train"

    monkeypatch.setattr(mode, "pick_device", lambda: "cuda")
    monkeypatch.setattr(mode, "gpu_has_native_bf16", lambda capability=None: True)
    raw = yaml.safe_load(SFT_YAML.read_text())
    for key, value in mode.trainer_settings().items():
        assert raw[key] == value, key


# ------------------------------------------------------------------------------------------- DDP
def test_ddp_ran_on_two_processes(ddp, single, data):
    ckpt = ddp["checkpoint"]
    # Trainer._save_rng_state writes rng_state_{process_index}.pth when world_size > 1, else rng_state.pth
    assert sorted(p.name for p in ckpt.glob("rng_state*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert [p.name for p in single["checkpoint"].glob("rng_state*.pth")] == ["rng_state.pth"]
    # epochs: 2 processes x BATCH rows per step (one process at BATCH with no accumulation would take half)
    steps_per_epoch = math.ceil(len(data["rows"]) / (2 * BATCH))
    for run in ddp, single:
        assert [h["step"] for h in run["train"]] == list(range(1, STEPS + 1))
        assert run["train"][-1]["epoch"] == pytest.approx(STEPS / steps_per_epoch, rel=1e-3)


def test_ddp_loss_matches_one_process_with_accumulation(ddp, single):
    for key in ("loss", "grad_norm"):
        diff = _max_rel_diff([h[key] for h in ddp["train"]], [h[key] for h in single["train"]])
        MEASURED[f"ddp_vs_single_max_rel_diff_{key}"] = diff
        assert diff <= RTOL, f"{key}: DDP and one process with accumulation differ by {diff:.2e} relative"
    diff = _max_rel_diff([h["eval_loss"] for h in ddp["eval"]], [h["eval_loss"] for h in single["eval"]])
    MEASURED["ddp_vs_single_max_rel_diff_eval_loss"] = diff
    assert diff <= RTOL


def test_ddp_training_moved_the_eval_loss(ddp):
    assert [h["step"] for h in ddp["eval"]] == [0, STEPS]
    before, after = ddp["eval"][0]["eval_loss"], ddp["eval"][-1]["eval_loss"]
    MEASURED["ddp_eval_loss"] = [before, after]
    assert after < 0.98 * before, f"eval loss {before:.4f} -> {after:.4f}: training did not move it"


# ------------------------------------------------------------------------------------------ FSDP
def test_accelerate_fsdp_is_plain_ddp_on_cpu(tmp_path):
    """Why fsdp_cpu_check.py calls fully_shard itself: with fsdp2.yaml, accelerate on a CPU gives the
    Trainer's Accelerator(cpu=True) MULTI_CPU (data parallel), not FSDP. If this fails, accelerate
    shards on CPUs now: launch the recipe with fsdp2.yaml in the FSDP test instead."""
    probe = tmp_path / "probe.py"
    probe.write_text("import sys\nfrom pathlib import Path\nfrom accelerate import Accelerator\n"
                     "a = Accelerator(cpu=True)\n"
                     "Path(sys.argv[1], f'rank{a.process_index}').write_text(f'{a.num_processes} {a.distributed_type}')\n")
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(MULTI / "accelerate" / "fsdp2.yaml"), "--num_processes", "2",
                           "--main_process_port", str(launch.free_port()), str(probe), str(tmp_path)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    output = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, output
    seen = {p.name: p.read_text() for p in sorted(tmp_path.glob("rank*"))}
    assert seen == {"rank0": "2 DistributedType.MULTI_CPU", "rank1": "2 DistributedType.MULTI_CPU"}, output


def test_fsdp_shards_half_of_each_kind_per_rank(fsdp):
    assert fsdp["world_size"] == 2 and fsdp["backend"] == "gloo"
    ranks = fsdp["ranks"]
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    assert all(r["all_params_dtensor"] for r in ranks), "every parameter is a DTensor shard"
    MEASURED["fsdp_bytes"] = {r["rank"]: {k: r[k]["local"] for k in ("frozen_params", "trainable_params",
                                                                        "optimizer_states")} for r in ranks}
    MEASURED["fsdp_bytes_total"] = {k: ranks[0][k]["total"] for k in ("frozen_params", "trainable_params",
                                                                       "optimizer_states")}
    for kind in ("frozen_params", "trainable_params", "optimizer_states"):
        total = ranks[0][kind]["total"]
        assert all(r[kind]["total"] == total for r in ranks)
        assert sum(r[kind]["local"] for r in ranks) == total, f"{kind}: the shards add up to the whole"
        slack = SHARD_RTOL * total / 2 + ranks[0][{"optimizer_states": "trainable_params"}.get(kind, kind)]["max_row"]
        for r in ranks:
            assert abs(r[kind]["local"] - total / 2) <= slack, f"rank {r['rank']} holds {r[kind]['local']} of {total}"
    # the byte counts do not depend on the machine: the shipped run (which CONTRIBUTING.md quotes) holds them
    shipped = json.loads(SHIPPED.read_text())
    assert shipped["fsdp_bytes_total"] == MEASURED["fsdp_bytes_total"]
    assert {int(k): v for k, v in shipped["fsdp_bytes"].items()} == MEASURED["fsdp_bytes"]
    frozen, trainable = ranks[0]["frozen_params"]["total"], ranks[0]["trainable_params"]["total"]
    assert trainable < 0.1 * frozen, "LoRA: the trainable weights are a small part of the model"
    # AdamW keeps two states (exp_avg, exp_avg_sq) per trainable parameter and none for frozen ones
    assert ranks[0]["optimizer_states"]["total"] == 2 * trainable


def test_fsdp_loss_matches_one_process(fsdp, single):
    for key, fsdp_key in ("loss", "losses"), ("grad_norm", "grad_norms"):
        diff = _max_rel_diff(fsdp[fsdp_key], [h[key] for h in single["train"]])
        MEASURED[f"fsdp_vs_single_max_rel_diff_{key}"] = diff
        assert diff <= RTOL, f"{key}: FSDP and one process differ by {diff:.2e} relative"


# -------------------------------------------------------------------------- the command itself
def test_sft_command_flags_follow_the_machine_and_the_arguments():
    cpu = launch.sft_command("M", "D", "O", n_processes=2, port=1234, max_steps=3, eval_on_start=True)
    assert cpu[cpu.index("--use_cpu") + 1] == "true" and cpu[cpu.index("--dtype") + 1] == "float32"
    assert cpu[cpu.index("--max_steps") + 1] == "3" and cpu[cpu.index("--eval_on_start") + 1] == "true"
    assert cpu[cpu.index("--accelerate_config") + 1] == str(launch.ACCELERATE_CONFIGS["ddp"])
    assert cpu[-2:] == ["--num_processes", "2"] and cpu[cpu.index("--main_process_port") + 1] == "1234"
    t4 = launch.sft_command("M", "D", "O", n_processes=1, device="cuda", precision={"bf16": False, "fp16": True})
    assert "--accelerate_config" not in t4 and "--use_cpu" not in t4
    assert t4[t4.index("--fp16") + 1] == "true" and t4[t4.index("--dtype") + 1] == "float32"
    h100 = launch.sft_command("M", "D", "O", device="cuda", accelerate_config="fsdp2")
    assert h100[h100.index("--dtype") + 1] == "bfloat16"
    assert h100[h100.index("--accelerate_config") + 1].endswith("fsdp2.yaml")


@pytest.mark.parametrize("kwargs, match", [(dict(accelerate_config="zero4"), "accelerate_config must be one of"),
                                           (dict(n_processes=0), "n_processes must be a positive integer"),
                                           (dict(device="tpu"), "device must be 'cpu' or 'cuda'")])
def test_sft_command_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        launch.sft_command("M", "D", "O", **kwargs)


def test_log_history_says_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="--save_strategy steps --save_steps 3"):
        launch.log_history(tmp_path, 3)


def test_contributing_quotes_the_shipped_run(root):
    """CONTRIBUTING.md's "Several GPUs" figures are the shipped run's (bytes per rank of the total, MiB)."""
    shipped = json.loads(SHIPPED.read_text())
    text = " ".join((root / "CONTRIBUTING.md").read_text().split())
    for kind in ("frozen_params", "trainable_params", "optimizer_states"):
        half, total = shipped["fsdp_bytes"]["0"][kind] / 2 ** 20, shipped["fsdp_bytes_total"][kind] / 2 ** 20
        assert f"{half:.1f} of {total:.1f} MiB" in text, kind
    assert shipped["ddp_vs_single_max_rel_diff_loss"] == 0.0 and "bit-identical" in text
    assert shipped["machine"]["cpu_count"] == 2 and "torch=2.13.0" in shipped["versions"]
