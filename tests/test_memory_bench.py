"""The measurement harness (course_utils.memory_bench): grid, CSV schema, process isolation, a
tiny CPU run, and the shipped table's honesty. GPU measurements are marked ``gpu``."""
import math
import os
import sys
from pathlib import Path

import pytest

from course_utils import memory as M
from course_utils import memory_bench as B

REQUIRED_COLUMNS = {"gpu", "versions", "shape", "method", "seq_len", "batch", "grad_ckpt", "attn", "optim",
                    "peak_alloc_mib", "peak_reserved_mib", "step_ms", "estimate_mib"}
SHIPPED = B.DEFAULT_OUT
TINY = M.TrainConfig(shape="SmolLM2-135M", method="lora16", loss="full_logits", layers=2, seq_len=128)


def test_course_grid_covers_the_issue():
    configs = [cfg for _, cfg in B.grid_configs("course")]
    keys = [B.config_key(c) for c in configs]
    assert len(keys) == len(set(keys))
    shapes = {c.short_shape for c in configs}
    assert {"SmolLM2-135M", "Llama-3.2-1B", "Llama-3.2-3B"} <= shapes
    assert {c.method for c in configs} == {"full16", "lora16", "qlora_hf", "qlora_trl", "qlora_recipe"}
    for field, values in [("seq_len", {512, 2048}), ("attn", {"eager", "sdpa"}), ("grad_ckpt", {False, True}),
                          ("optim", {"adamw", "adamw_8bit", "paged_adamw_8bit"})]:
        assert {getattr(c, field) for c in configs} >= values, field
    recipe = [c for c in configs if c.method == "qlora_recipe" and c.liger and not c.act_offload]
    assert recipe and all(c.grad_ckpt and c.optim == "paged_adamw_8bit" for c in recipe)
    # 4 methods x 16 combinations + the recipe x 4, per shape; plus the walk's extra steps
    assert len(configs) >= 3 * (4 * 16 + 4)
    labels = [label for label, _ in B.grid_configs("course") if label]
    assert len(labels) >= 5 and labels[0].startswith("walk 2")  # walk 1 is a grid row already


def test_unknown_grid():
    with pytest.raises(ValueError, match="Unknown grid"):
        B.grid_configs("everything")


def test_rows_round_trip_through_the_csv(tmp_path):
    label, cfg = B.grid_configs("targets")[0]
    row = B.plan_row(label, cfg)
    assert REQUIRED_COLUMNS <= set(B.COLUMNS) and set(row) == set(B.COLUMNS)
    assert row["status"] == "not measured" and row["peak_alloc_mib"] == "" and row["estimate_mib"] > 0
    path = tmp_path / "t.csv"
    B.write_table([row], path)
    back = B.read_table(path)
    assert len(back) == 1 and B.config_from_row(back[0]) == cfg and B.row_key(back[0]) == B.config_key(cfg)
    newer = dict(row, status="measured", peak_alloc_mib=123.0)
    merged = B.merge_rows(back, [newer])
    assert len(merged) == 1 and merged[0]["status"] == "measured"


def test_plan_command_writes_estimates_only(tmp_path):
    out = tmp_path / "plan.csv"
    assert B.main(["--plan", "--grid", "targets", "--out", str(out)]) == 0
    rows = B.read_table(out)
    assert rows and all(r["status"] == "not measured" and r["peak_alloc_mib"] == "" for r in rows)
    with pytest.raises(SystemExit):
        B.main(["--out", str(out)])  # neither --grid nor --shape


def test_a_failed_child_becomes_a_row_not_a_crash(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'CUDA error: out of memory' >&2\nexit 3\n")
    fake.chmod(0o755)
    row = B.run_isolated(TINY, device="cpu", python=str(fake))
    assert row["status"] == "oom" and "exit 3" in row["error"]


def test_tiny_cpu_run_in_its_own_process():
    """The whole plumbing on the CPU: a fresh process trains a 2-layer architecture-only model;
    the GPU columns stay empty, the CPU peak (profiler) is recorded apart and agrees with the
    estimator's CPU figure."""
    row = B.run_isolated(TINY, steps=1, warmup=1, device="cpu", timeout=900)
    assert row["status"] == "cpu", row.get("error")
    assert row["device"] == "cpu" and row["gpu"] == ""
    assert row["peak_alloc_mib"] == "" and row["peak_reserved_mib"] == ""
    assert row["pid"] != os.getpid()
    assert float(row["step_ms"]) > 0 and "torch=" in row["versions"]
    cpu_estimate = M.estimate_training_memory(TINY, device="cpu").peak_mib
    assert float(row["cpu_peak_alloc_mib"]) == pytest.approx(cpu_estimate, rel=0.10)


def test_course_recipe_path_runs_on_cpu():
    """The recipe's code path (4-bit NF4 with double quantisation, no fp32 upcast, bf16 LoRA weights,
    gradient checkpointing, paged 8-bit AdamW, TRL's trainer) runs end to end before any GPU
    sees it; its memory is a GPU question (tests marked gpu)."""
    cfg = M.TrainConfig(shape="SmolLM2-135M", method="qlora_recipe", layers=2, seq_len=64)
    row = B.run_isolated(cfg, steps=1, warmup=1, device="cpu", timeout=900)
    assert row["status"] == "cpu", row.get("error")
    assert (row["quant"], row["double_quant"], row["upcast"], row["lora_dtype"], row["optim"], row["grad_ckpt"]) == (
        "nf4", True, False, "bf16", "paged_adamw_8bit", True)
    assert float(row["cpu_peak_alloc_mib"]) > 0 and float(row["step_ms"]) > 0


def _fake_runs(monkeypatch, statuses=None):
    """run_isolated replaced by a fake that records how many runs overlap."""
    import threading
    import time

    state = {"now": 0, "most": 0, "calls": []}
    lock = threading.Lock()

    def fake(cfg, *, label="", device="cuda", backend="hf", **kw):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            state["calls"].append(cfg.seq_len)
        time.sleep(0.05)
        row = B.plan_row(label, cfg, device=device, status="measured")
        status = (statuses or {}).get(cfg.seq_len, ["measured"])
        row.update(status=status.pop(0) if len(status) > 1 else status[0], gpu="fake", step_ms=12.0,
                   peak_alloc_mib=1.0, device_used_mib=5.0)
        with lock:
            state["now"] -= 1
        return row

    monkeypatch.setattr(B, "run_isolated", fake)
    return state


def _configs(n):
    return [("", M.TrainConfig(shape="SmolLM2-135M", method="lora16", seq_len=64 * (i + 1), layers=2))
            for i in range(n)]


def test_jobs_share_the_gpu_within_its_memory(monkeypatch, tmp_path):
    """--jobs runs configurations side by side only while their shares fit the GPU, drops the
    step time (and the device-wide reading) of runs that shared it, and keeps every row."""
    state = _fake_runs(monkeypatch)
    cfgs = _configs(6)
    share = max(B.gpu_share_mib(c) for _, c in cfgs)
    rows = B.run_grid(cfgs, tmp_path / "t.csv", jobs=4, gpu_mib=2.2 * share / 0.92, log=lambda *_: None)
    assert state["most"] == 2, "two shares fit the GPU, never more"
    assert len(rows) == 6 and all(r["status"] == "measured" for r in rows)
    assert all(r["shared_gpu"] is True and r["step_ms"] == "" and r["device_used_mib"] == "" for r in rows)
    assert len(B.read_table(tmp_path / "t.csv")) == 6
    state = _fake_runs(monkeypatch)
    rows = B.run_grid(cfgs, tmp_path / "alone.csv", jobs=1, gpu_mib=1e9, log=lambda *_: None)
    assert state["most"] == 1 and all(r["step_ms"] == 12.0 and not r.get("shared_gpu") for r in rows)
    # resuming alone re-measures the shared rows (for their step times); resuming shared does not
    state = _fake_runs(monkeypatch)
    B.run_grid(cfgs, tmp_path / "t.csv", jobs=2, gpu_mib=1e9, log=lambda *_: None)
    assert state["calls"] == []
    rows = B.run_grid(cfgs, tmp_path / "t.csv", jobs=1, gpu_mib=1e9, log=lambda *_: None)
    assert len(state["calls"]) == 6 and all(float(r["step_ms"]) == 12.0 for r in rows)


def test_a_run_that_fails_while_sharing_is_run_again_alone(monkeypatch, tmp_path):
    state = _fake_runs(monkeypatch, statuses={128: ["oom", "measured"]})
    rows = B.run_grid(_configs(3), tmp_path / "t.csv", jobs=3, gpu_mib=1e9, log=lambda *_: None)
    assert state["calls"].count(128) == 2 and state["calls"][-1] == 128
    again = next(r for r in rows if int(r["seq_len"]) == 128)
    assert again["status"] == "measured" and again["step_ms"] == 12.0 and not again.get("shared_gpu")


def test_measured_values_are_numbers_or_nan():
    import math

    assert B.measured({"status": "measured", "step_ms": "12.5"}, "step_ms") == 12.5
    assert math.isnan(B.measured({"status": "measured", "step_ms": ""}, "step_ms"))  # a shared-GPU run
    assert math.isnan(B.measured({"status": "not measured", "step_ms": "3"}, "step_ms"))
    assert math.isnan(B.measured(None, "peak_alloc_mib"))


def test_shipped_snapshot_adds_up_to_its_measured_peak():
    """The recipe's memory snapshot (where the peak's bytes were allocated) sums to the peak the
    same run measured, and the same configuration's row in the shipped table agrees."""
    rows = B.read_table(B.SNAPSHOT_TABLE)
    total = sum(float(r["mib_at_peak"]) for r in rows)
    assert total == pytest.approx(float(rows[0]["peak_alloc_mib"]), rel=0.01)
    recipe = B.find_row(M.TrainConfig(shape="meta-llama/Llama-3.2-3B", method="qlora_recipe").resolved())
    assert recipe["gpu"] == rows[0]["gpu"]
    assert float(recipe["peak_alloc_mib"]) == pytest.approx(total, rel=0.01)


def test_snapshot_summary_finds_the_peak():
    frames = lambda name: [{"filename": name, "line": 1, "name": "f"}]  # noqa: E731
    snap = {"segments": [{"blocks": [{"address": 1, "size": 100 * 2**20, "state": "active_allocated",
                                      "frames": frames("bitsandbytes/nn/modules.py")}]}],
            "device_traces": [[
                {"action": "alloc", "addr": 2, "size": 50 * 2**20, "frames": frames("transformers/models/llama/modeling_llama.py")},
                {"action": "alloc", "addr": 3, "size": 30 * 2**20, "frames": frames("trl/kernels/chunked_logprob.py")},
                {"action": "free_completed", "addr": 3, "size": 30 * 2**20},
                {"action": "free_completed", "addr": 2, "size": 50 * 2**20},
                {"action": "alloc", "addr": 4, "size": 10 * 2**20, "frames": frames("bitsandbytes/optim/optimizer.py")},
            ]]}
    summary = dict(B.summarize_snapshot(snap))
    assert summary == {"4-bit weights and dequantisation": 100, "activations (decoder layers)": 50,
                       "LM head and loss": 30}


def _fake_snapshot_run(monkeypatch, status):
    """run_isolated replaced by a fake that leaves a snapshot file, as a measured GPU run does."""
    import pickle

    frames = lambda name: [{"filename": name, "line": 1, "name": "f"}]  # noqa: E731
    snap = {"segments": [{"blocks": [{"address": 1, "size": 96 * 2**20, "state": "active_allocated",
                                      "frames": frames("bitsandbytes/nn/modules.py")}]}],
            "device_traces": [[{"action": "alloc", "addr": 2, "size": 32 * 2**20,
                                "frames": frames("peft/tuners/lora/layer.py")}]]}

    def fake(cfg, *, label="", device="cuda", backend="hf", snapshot=None, **kw):
        row = B.plan_row(label, cfg, device=device, status=status)
        if status == "measured":
            Path(snapshot).write_bytes(pickle.dumps(snap))
            row.update(gpu="fake GPU", versions="torch=x", peak_alloc_mib=128.0, measured_at="2026-11-23")
        else:
            row["error"] = "OutOfMemoryError: CUDA out of memory"
        return row

    monkeypatch.setattr(B, "run_isolated", fake)
    monkeypatch.setattr(B, "gpu_memory_mib", lambda *a, **k: 80_000.0)


def test_snapshot_run_writes_where_the_peak_went(monkeypatch, tmp_path, capsys):
    """``--snapshot`` writes the snapshot table itself (no figure copied by hand): one row per
    category, summing to the run's measured peak, with the run's GPU, versions and configuration."""
    _fake_snapshot_run(monkeypatch, "measured")
    table = tmp_path / "snap.csv"
    assert B.main(["--shape", "Llama-3.2-3B", "--method", "qlora_recipe", "--snapshot",
                   str(tmp_path / "s.pickle"), "--snapshot-table", str(table), "--out", "-"]) == 0
    rows = B.read_table(table)
    assert list(rows[0]) == B.SNAPSHOT_COLUMNS
    assert {r["allocated_by"]: float(r["mib_at_peak"]) for r in rows} == {
        "4-bit weights and dequantisation": 96.0, "LoRA (weights, activations)": 32.0}
    assert sum(float(r["mib_at_peak"]) for r in rows) == pytest.approx(float(rows[0]["peak_alloc_mib"]))
    assert {r["gpu"] for r in rows} == {"fake GPU"}
    assert rows[0]["config"] == "Llama-3.2-3B qlora_recipe seq 512 batch 1 r=16"
    # the shipped table was written by the same code: same columns, same description of the run
    shipped = B.read_table(B.SNAPSHOT_TABLE)
    assert list(shipped[0]) == B.SNAPSHOT_COLUMNS and shipped[0]["config"] == rows[0]["config"]


def test_failed_snapshot_run_leaves_the_table_alone(monkeypatch, tmp_path, capsys):
    _fake_snapshot_run(monkeypatch, "oom")
    table = tmp_path / "snap.csv"
    table.write_text("kept\n")
    B.main(["--shape", "Llama-3.2-3B", "--method", "qlora_recipe", "--snapshot", str(tmp_path / "s.pickle"),
            "--snapshot-table", str(table), "--out", "-"])
    assert table.read_text() == "kept\n"
    assert "did not finish (oom" in capsys.readouterr().out


def test_shipped_table_is_honest():
    """Every row of the shipped table is either measured on a GPU (with the GPU, the versions and
    the figures) or says it is not measured and carries no measured figure. Measured rows meet
    the estimator accuracy target (within 10%)."""
    rows = B.read_table(SHIPPED)
    assert rows and REQUIRED_COLUMNS <= set(rows[0])
    for r in rows:
        assert r["status"] in ("measured", "not measured", "oom", "skipped: estimate exceeds GPU memory"), r["status"]
        est = M.estimate_training_memory(B.config_from_row(r)).peak_mib
        assert float(r["estimate_mib"]) == pytest.approx(est, abs=0.2), "re-run --plan: the estimator changed"
        if r["status"] == "measured":
            assert r["gpu"] and r["versions"] and float(r["peak_alloc_mib"]) > 0
            # a run that shared the GPU (--jobs) has no step time: another run slowed it down
            assert (r["step_ms"] == "") if r.get("shared_gpu") == "True" else float(r["step_ms"]) > 0
            assert est == pytest.approx(float(r["peak_alloc_mib"]), rel=0.10), B.row_key(r)
        else:
            assert r["peak_alloc_mib"] == r["peak_reserved_mib"] == r["step_ms"] == r["gpu"] == ""
    assert len({B.row_key(r) for r in rows}) == len(rows)
    # one row per configuration of the course grid, none left over from an older grid
    assert {B.row_key(r) for r in rows if r["backend"] == "hf"} == {B.config_key(c) for _, c in B.grid_configs("course")}
    assert (SHIPPED.parent / "memory_measurements.md").exists()


def _docs(root):
    """README, memory_measurements.md and notebook 05's markdown, each with all whitespace runs made
    single spaces (line breaks fall anywhere in prose)."""
    import nbformat

    nb = nbformat.read(root / "solutions" / "05_qlora_memory.ipynb", as_version=4)
    return tuple(" ".join(text.split()) for text in (
        (root / "README.md").read_text(), (SHIPPED.parent / "memory_measurements.md").read_text(),
        " ".join(c.source for c in nb.cells if c.cell_type == "markdown")))


def _shipped(method, column="peak_alloc_mib", **kw):
    r = B.find_row(M.TrainConfig(shape="Llama-3.2-3B", method=method, **kw))
    assert r and r["status"] == "measured", (method, kw)
    return float(r[column])


def test_docs_state_what_the_shipped_table_holds(root):
    """The README, memory_measurements.md and notebook 05 quote the shipped table: how many rows
    are measured, and the headline figures at Llama-3.2-3B. Re-measuring a row (or measuring the
    rest on a GPU) fails here until the text says what the table now says."""
    rows = B.read_table(SHIPPED)
    n_measured = sum(r["status"] == "measured" for r in rows)
    n_unmeasured = sum(r["status"] == "not measured" for r in rows)
    readme, details, notebook = _docs(root)
    assert f"{n_measured} of {len(rows)} rows measured" in readme
    assert f"{n_unmeasured} still estimated" in readme
    assert f"**{n_measured} of the {len(rows)} rows are measured**" in details
    assert f"The other {n_unmeasured} rows say `not measured`" in details

    def both(method, **kw):
        return _shipped(method, **kw), _shipped(method, "step_ms", **kw)

    lora_mib, lora_ms = both("lora16", grad_ckpt=False)
    hf_mib, hf_ms = both("qlora_hf", grad_ckpt=True)          # PEFT's default: checkpointing on
    trl_off_mib, trl_off_ms = both("qlora_trl", grad_ckpt=False)
    trl_mib, trl_ms = both("qlora_trl", grad_ckpt=True)       # SFTConfig's default: checkpointing on
    recipe_mib, recipe_ms = both("qlora_recipe")
    used = {m: _shipped(m, "device_used_mib", **kw) for m, kw in
            [("qlora_hf", dict(grad_ckpt=True)), ("qlora_trl", dict(grad_ckpt=True)), ("qlora_recipe", {})]}
    saved = trl_mib - recipe_mib
    paged = _shipped("qlora_recipe", "paged_estimate_mib")
    # memory_measurements.md: the headline table as headline_markdown writes it, then its reading
    for line in B.headline_markdown():
        assert " ".join(line.split()) in details, line
    published = M.load_lecture_table().set_index("params_b").loc[3, "qlora_4bit_gb"]
    for text in [f"the recipe saves {saved:,.0f} MiB of peak allocated memory ({100 * saved / trl_mib:.1f}%), "
                 f"uses {used['qlora_recipe'] - used['qlora_trl']:,.0f} MiB more device memory",
                 f"its step takes {100 * (recipe_ms / trl_ms - 1):.0f}% longer",
                 f"its paged optimizer states, {paged:,.0f} MiB by the estimate",
                 f"the recipe took {used['qlora_recipe'] * M.MIB / 1e9:.2f} GB, above the {published:g} GB Unsloth publishes",
                 f"and so did TRL's defaults ({used['qlora_trl'] * M.MIB / 1e9:.2f} GB)",
                 f"makes the step {_shipped('lora16', 'step_ms', grad_ckpt=True) / lora_ms:.2f}× (LoRA) to "
                 f"{trl_ms / trl_off_ms:.2f}× (QLoRA with TRL) slower",
                 f"runs at {trl_off_ms / lora_ms:.2f}× ({trl_off_mib:,.0f} MiB)",
                 f"about {round((trl_off_mib - trl_mib) / 100) * 100:,.0f} MiB per step"]:
        assert text in details, text
    offload = [M.estimate_training_memory(cfg).peak_mib for _, cfg in M.offload_configs()]
    assert (f"{offload[0]:,.0f} MiB (TRL, checkpointing off, offloading on) and {offload[1]:,.0f} MiB") in details
    snap = {r["allocated_by"]: float(r["mib_at_peak"]) for r in B.read_table(B.SNAPSHOT_TABLE)}
    four_bit, embed = snap["4-bit weights and dequantisation"], snap["weights (loading)"]
    training = sum(v for k, v in snap.items() if k not in ("4-bit weights and dequantisation", "weights (loading)",
                                                           "activations (decoder layers)"))
    assert (f"{four_bit:,.0f} MiB of 4-bit weights and dequantisation, {embed:,.0f} MiB for the bf16 embedding "
            f"tied to the LM head, {snap['activations (decoder layers)']:,.0f} MiB of activations, and under "
            f"{math.ceil(training / 10) * 10:,.0f} MiB") in details
    # README: the three configurations, allocated and in use
    assert (f"peak allocated: the course's QLoRA recipe {recipe_mib:,.0f} MiB, TRL's defaults {trl_mib:,.0f} MiB, "
            f"Hugging Face's defaults {hf_mib:,.0f} MiB; device memory in use: {used['qlora_recipe']:,.0f}, "
            f"{used['qlora_trl']:,.0f} and {used['qlora_hf']:,.0f} MiB") in readme
    # notebook 05: the comparison with the real defaults, the walk, the snapshot, the step times
    walk = [B.measured(B.find_row(cfg), "peak_alloc_mib") for _, cfg in M.recipe_walk_configs(
        "meta-llama/Llama-3.2-3B", seq_len=512, batch=1)]
    lora_ckpt_ms = _shipped("lora16", "step_ms", grad_ckpt=True)
    table = B.load_measurements()
    table = table[(table["status"] == "measured") & table["device_used_mib"].notna()]
    gap = table["device_used_mib"] - table["peak_alloc_mib"]
    rest = round((recipe_mib - four_bit - embed) / 10) * 10
    for text in [f"HF's defaults peak at {hf_mib:,.0f} MiB ({hf_ms:.0f} ms a step), TRL's at {trl_mib:,.0f} MiB "
                 f"({trl_ms:.0f} ms)",
                 f"the recipe saves {saved:,.0f} MiB of peak allocated memory ({100 * saved / trl_mib:.1f}%) and its "
                 f"step takes {100 * (recipe_ms / trl_ms - 1):.0f}% longer ({recipe_ms:.0f} against {trl_ms:.0f} ms)",
                 f"{used['qlora_recipe']:,.0f} against {used['qlora_trl']:,.0f} MiB",
                 f"Part of that is the paged 8-bit AdamW states ({paged:,.0f} MiB by the estimate)",
                 f"{used['qlora_recipe']:,.0f} MiB is {used['qlora_recipe'] * M.MIB / 1e9:.2f} GB, above the "
                 f"{published:g} GB Unsloth publishes",
                 f"pay off only where {saved:,.0f} MiB decide",
                 f"PEFT's way {walk[0]:,.0f} MiB; without the fp32 upcast {walk[1]:,.0f} MiB; with TRL's chunked loss "
                 f"{walk[2]:,.0f} MiB",
                 f"the recipe's {recipe_mib:,.0f} MiB go: {four_bit:,.0f} MiB of 4-bit weights",
                 f"{embed:,.0f} MiB for the embedding", f"about {rest:,.0f} MiB for everything training adds",
                 f"{lora_ckpt_ms / lora_ms:.2f}× slower for LoRA ({lora_ckpt_ms:.0f} against {lora_ms:.0f} ms) and "
                 f"{trl_ms / trl_off_ms:.2f}× for QLoRA with TRL ({trl_ms:.0f} against {trl_off_ms:.0f} ms)",
                 f"stays at {trl_off_ms / lora_ms:.2f}× LoRA's step ({trl_off_ms:.0f} ms) for {trl_off_mib:,.0f} MiB",
                 f"The recipe's step took {recipe_ms:.0f} ms, {recipe_ms / lora_ms:.2f}× LoRA on a 16-bit base",
                 f"the last {recipe_ms - trl_ms:.0f} ms between TRL's defaults and the recipe",
                 f"HF's defaults measured {hf_mib:,.0f} MiB on an H100, TRL's {trl_mib:,.0f} MiB",
                 f"measured {recipe_mib:,.0f} MiB, {100 * saved / trl_mib:.1f}% less than TRL's defaults, at "
                 f"{recipe_ms / trl_ms:.2f}× their step time",
                 f"{gap.min():,.0f} to {gap.max():,.0f} MiB above the peak allocated",
                 f"device memory in use sat {gap.min():,.0f} to {gap.max():,.0f} MiB above it"]:
        assert text in notebook, text
    # the mixing table's full fine-tune
    full, full_ckpt, full_8bit = (B.measured(B.find_row(cfg), "peak_alloc_mib") for _, cfg in B.mix_configs()[:3])
    assert (f"checkpointing saved only {full - full_ckpt:,.0f} MiB on the H100 ({full:,.0f} to {full_ckpt:,.0f} MiB), "
            f"8-bit AdamW another {full_ckpt - full_8bit:,.0f} MiB") in notebook



def test_docs_state_the_estimators_accuracy_and_checkpoint_size(root):
    """memory_measurements.md's accuracy figures are the shipped table's, and the checkpoint size
    is the parameter count in bf16."""
    _, details, _ = _docs(root)
    table = B.load_measurements()
    measured = table[table["status"] == "measured"]
    err = (measured["estimate_mib"] / measured["peak_alloc_mib"] - 1).abs()
    worst = measured.loc[err.idxmax()]
    assert (worst["shape"], worst["method"], worst["attn"], worst["seq_len"], worst["optim"], bool(worst["grad_ckpt"])) == (
        "HuggingFaceTB/SmolLM2-135M", "qlora_trl", "eager", 512, "adamw_8bit", True)
    assert (f"Estimator accuracy over the {len(measured)} measured rows: worst {100 * err.max():.1f}% (SmolLM2-135M, "
            f"QLoRA with checkpointing, eager attention, 512 tokens, 8-bit AdamW), mean {100 * err.mean():.1f}%") in details
    params = M.count_parameters("Llama-3.2-3B").total
    assert f"({2 * params / 1e9:.1f} GB for Llama-3.2-3B: {params / 1e9:.1f} billion parameters in bf16)" in details

def test_defaults_name_the_rows_that_use_the_defaults():
    """PEFT's prepare_model_for_kbit_training and TRL's SFTConfig turn gradient checkpointing on
    by default (transformers' TrainingArguments does not): every row or configuration called
    'defaults' checkpoints, and every walk step before checkpointing says it runs without."""
    import dataclasses
    import inspect

    from peft import prepare_model_for_kbit_training
    from transformers import TrainingArguments
    from trl import SFTConfig

    assert inspect.signature(prepare_model_for_kbit_training).parameters["use_gradient_checkpointing"].default is True
    assert {f.name: f.default for f in dataclasses.fields(SFTConfig)}["gradient_checkpointing"] is True
    assert {f.name: f.default for f in dataclasses.fields(TrainingArguments)}["gradient_checkpointing"] is False
    named = ([(label, cfg) for label, cfg in B.grid_configs("course") if label]
             + B.grid_configs("mix") + B.headline_configs() + M.defaults_configs() + M.offload_configs()
             + [(r["label"], B.config_from_row(r)) for r in B.read_table(SHIPPED) if r["label"]])
    for label, cfg in named:
        if "defaults" in label and "recipe" not in label:
            assert cfg.grad_ckpt and cfg.method in ("qlora_hf", "qlora_trl"), label
        if not cfg.grad_ckpt and cfg.method.startswith("qlora") and not label.startswith("mix"):
            assert "no checkpointing" in label or "checkpointing off" in label or "without checkpointing" in label \
                or "instead of checkpointing" in label, label
    # the relabelled rows are the measured ones the defaults were once said to be
    hf, trl = (B.headline_configs()[i][1] for i in (2, 4))
    assert (hf.method, hf.grad_ckpt, trl.method, trl.grad_ckpt) == ("qlora_hf", True, "qlora_trl", True)


def test_headline_reports_device_memory_beside_allocated():
    """The headline table takes peak allocated and device memory in use from the same shipped rows,
    the latter also in GB (10^9 bytes, the unit published figures use)."""
    table = B.headline_table()
    assert [r["configuration"] for r in table] == [label for label, _ in B.HEADLINE]
    for r, (_, cfg) in zip(table, B.headline_configs()):
        row = B.find_row(cfg)
        assert r["peak allocated MiB"] == float(row["peak_alloc_mib"])
        assert r["device in use MiB"] == float(row["device_used_mib"]) > r["peak allocated MiB"]
        assert r["device in use GB"] == pytest.approx(float(row["device_used_mib"]) * 2**20 / 1e9)
    assert B.headline_markdown()[0] == "| configuration | peak allocated | device memory in use | step |"


def test_mixing_table_has_one_row_per_measured_configuration():
    """Every row of the mixing table is a configuration of its own (an accumulation row that
    repeated batch 1's figures was asserted, not measured)."""
    configs = [B.config_key(cfg) for _, cfg in B.mix_configs()]
    assert len(configs) == len(set(configs))
    assert not any("accumulation" in label for label, _ in B.mix_configs())


@pytest.mark.gpu
def test_gpu_measurement_meets_the_estimate():
    cfg = M.TrainConfig(shape="SmolLM2-135M", method="qlora_recipe", seq_len=512)
    row = B.run_isolated(cfg, device="cuda")
    assert row["status"] == "measured", row.get("error")
    assert row["gpu"] and float(row["peak_reserved_mib"]) >= float(row["peak_alloc_mib"]) > 0
    assert float(row["estimate_mib"]) == pytest.approx(float(row["peak_alloc_mib"]), rel=0.10)


@pytest.mark.gpu
@pytest.mark.xfail(strict=True, reason="device memory in use 3,467 MiB = 3.64 GB on an H100 (2026-11-23), above "
                   "the 3.5 GB Unsloth publishes for a 3B QLoRA: a pass means the recipe got smaller: update the docs")
def test_gpu_recipe_device_memory_against_the_published_3b_figure():
    """Compared in the published figure's unit (GB = 10^9 bytes) and quantity (what the GPU holds,
    not what PyTorch allocates)."""
    recipe = B.run_isolated(M.TrainConfig(shape="Llama-3.2-3B", method="qlora_recipe"), device="cuda")
    assert recipe["status"] == "measured", recipe.get("error")
    published_gb = M.load_lecture_table().set_index("params_b").loc[3, "qlora_4bit_gb"]
    assert float(recipe["device_used_mib"]) * M.MIB / 1e9 <= published_gb


@pytest.mark.gpu
@pytest.mark.xfail(strict=True, reason="the recipe's step measured 2.46x LoRA 16-bit's on an H100 (2026-11-23): "
                   "gradient checkpointing alone costs 1.5-1.6x; a pass means the recipe got faster: update the docs")
def test_gpu_recipe_step_time_target_at_3b():
    recipe = B.run_isolated(M.TrainConfig(shape="Llama-3.2-3B", method="qlora_recipe"), device="cuda")
    lora = B.run_isolated(M.TrainConfig(shape="Llama-3.2-3B", method="lora16"), device="cuda")
    assert float(recipe["step_ms"]) <= 1.3 * float(lora["step_ms"])


def test_command_line_help():
    import subprocess

    out = subprocess.run([sys.executable, "-m", "course_utils.memory_bench", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--grid" in out.stdout and "--resume" in out.stdout


def test_activation_offloading_rows_are_gpu_rows(monkeypatch, tmp_path):
    """The offloading alternatives are in the benchmark targets (measured with their step times on
    a GPU); on a CPU they become an error row saying why, before any checkpoint is built; the
    column survives the CSV, and a table written before it existed reads as not offloaded."""
    offload = [(label, cfg) for label, cfg in B.grid_configs("targets") if cfg.act_offload]
    assert [label for label, _ in offload] == [f"offload: {label}" for label, _ in M.offload_configs()]

    def no_build(*a, **kw):
        raise AssertionError("built a checkpoint for a run that cannot happen")

    monkeypatch.setattr(B, "_build_checkpoint", no_build)
    row = B.run_isolated(offload[0][1], device="cpu")
    assert row["status"] == "error" and "needs --device cuda" in row["error"]

    path = tmp_path / "t.csv"
    B.write_table([B.plan_row(*offload[0])], path)
    back = B.read_table(path)
    assert back[0]["act_offload"] == "True" and B.config_from_row(back[0]) == offload[0][1]
    old_columns = [c for c in B.COLUMNS if c != "act_offload"]
    B.write_table([B.plan_row("", TINY.resolved())], path, columns=old_columns)
    assert B.row_key(B.read_table(path)[0]) == B.config_key(TINY.resolved())


def test_trl_still_offers_activation_offloading():
    """The harness passes ``activation_offloading`` to TRL's SFTConfig: a release that drops or
    renames it must fail here, not on the next GPU."""
    import dataclasses

    from trl import SFTConfig

    assert "activation_offloading" in {f.name for f in dataclasses.fields(SFTConfig)}
