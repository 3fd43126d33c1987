"""Yoda data (offline pairs, same columns as the hub set), splits, messages, recipe and chrF."""
import collections
import re

import pytest

from course_utils import hub, yoda


def _words(text):
    return collections.Counter(re.findall(r"[a-z']+", text.lower()))


@pytest.fixture(scope="module")
def local():
    return yoda.load_yoda(source="local", quiet=True)


def test_local_pairs_have_the_hub_columns(local):
    assert local.column_names == list(yoda.YODA_COLUMNS)
    assert len(local) >= 100
    assert len(set(local["sentence"])) == len(local)
    for row in local:
        assert all(isinstance(row[c], str) and row[c].strip() == row[c] and row[c] for c in yoda.YODA_COLUMNS)
        assert row["translation"] != row["sentence"]
        # Yoda reorders the words: every word of the sentence is still there
        assert not _words(row["sentence"]) - _words(row["translation"]), row
        # translation_extra is the translation with grunts added
        assert not _words(row["translation"]) - _words(row["translation_extra"]), row
        assert len(row["translation_extra"]) > len(row["translation"])


def test_reduced_mode_loads_local_pairs(monkeypatch, local):
    monkeypatch.setenv("COURSE_SMOKE", "1")
    assert yoda.load_yoda(quiet=True)["sentence"] == local["sentence"]


def test_offline_full_mode_falls_back_quickly(monkeypatch, local, capsys):
    monkeypatch.setenv("COURSE_SMOKE", "0")
    monkeypatch.setattr(hub, "reachable", lambda *a, **k: False)
    assert len(yoda.load_yoda()) == len(local)
    assert f"instead of {yoda.YODA_HUB_ID} (the dataset hub is unreachable)" in capsys.readouterr().out


def test_a_failing_hub_load_falls_back_only_in_auto(monkeypatch, local, capsys):
    def broken():
        raise ConnectionError("reset by peer")

    monkeypatch.setenv("COURSE_SMOKE", "0")
    monkeypatch.setattr(hub, "reachable", lambda *a, **k: True)
    monkeypatch.setattr(yoda, "load_hub_yoda", broken)
    assert len(yoda.load_yoda()) == len(local)
    assert "(loading it failed: ConnectionError)" in capsys.readouterr().out
    with pytest.raises(ConnectionError):
        yoda.load_yoda(source="hub")
    with pytest.raises(ValueError, match="source must be"):
        yoda.load_yoda(source="web")


def test_split_is_deterministic_and_disjoint(local):
    train, test = yoda.load_yoda("train", source="local"), yoda.load_yoda("test", source="local")
    assert len(train) + len(test) == len(local)
    assert set(train["sentence"]).isdisjoint(test["sentence"])
    assert yoda.load_yoda("test", source="local")["sentence"] == test["sentence"]
    assert yoda.split_yoda(local)["test"]["sentence"] == test["sentence"]
    other = yoda.load_yoda("test", source="local", seed=1)["sentence"]
    assert other != test["sentence"]


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="'train' or 'test'"):
        yoda.load_yoda("validation")
    with pytest.raises(ValueError, match="source"):
        yoda.load_yoda(source="web")


def test_messages(local):
    row = local[0]
    ex = yoda.yoda_messages(row)
    assert ex["prompt"] == [{"role": "system", "content": yoda.YODA_SYSTEM_PROMPT},
                            {"role": "user", "content": row["sentence"]}]
    assert ex["completion"] == [{"role": "assistant", "content": row["translation"]}]
    assert yoda.yoda_messages(row, None)["prompt"] == [{"role": "user", "content": row["sentence"]}]
    assert yoda.yoda_messages(row, target="translation_extra")["completion"][0]["content"] == row["translation_extra"]
    with pytest.raises(ValueError, match="load_yoda"):
        yoda.yoda_messages({"text": "hi"})
    with pytest.raises(ValueError, match="non-empty"):
        yoda.yoda_messages({"sentence": " ", "translation": "x"})
    with pytest.raises(ValueError, match="target"):
        yoda.yoda_messages(row, target="sentence")
    conv = yoda.to_conversations(local.select(range(3)))
    assert conv.column_names == ["prompt", "completion"]


def test_recipe_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_SMOKE", "1")
    cfg = yoda.yoda_sft_config(tmp_path, max_steps=3)
    assert (cfg.bf16, cfg.fp16, cfg.gradient_checkpointing) == (False, False, False)
    assert cfg.completion_only_loss is True and cfg.max_steps == 3 and cfg.report_to == []
    lora = yoda.yoda_lora_config(r=4)
    assert lora.r == 4 and lora.task_type == "CAUSAL_LM"


def test_gpu_recipe_with_gradient_checkpointing_trains_the_adapter(tmp_path, local, tokenizer):
    """The T4 recipe turns gradient checkpointing on; CI trains without it. With checkpointing,
    frozen embeddings and a LoRA, gradients must still reach the adapter (checked here on a tiny
    model, on the CPU)."""
    import torch
    from trl import SFTTrainer

    import course_utils as cu

    torch.manual_seed(0)
    model = cu.load_architecture(cu.FALLBACK_ID, num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                                 num_attention_heads=2, num_key_value_heads=1)
    args = yoda.yoda_sft_config(tmp_path, max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
                                gradient_checkpointing=True, logging_steps=1)
    trainer = SFTTrainer(model=model, args=args, train_dataset=yoda.to_conversations(local.select(range(8))),
                         processing_class=tokenizer, peft_config=yoda.yoda_lora_config(r=4))
    trainer.train()
    lora_b = [p for name, p in trainer.model.named_parameters() if "lora_B" in name]
    assert args.gradient_checkpointing and lora_b
    assert all(p.abs().sum() > 0 for p in lora_b)  # every B started at zero and was trained


def test_chrf():
    assert yoda.chrf(["Patient you must be."], ["Patient you must be."]) == pytest.approx(100.0)
    assert yoda.chrf(["xyz"], ["Patient you must be."]) < 10
    with pytest.raises(ValueError, match="one prediction per reference"):
        yoda.chrf(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="at least one"):
        yoda.chrf([], [])


def test_translate_and_evaluate_with_the_real_model(local):
    import course_utils as cu

    model, tok = cu.load_model(quiet=True, device="cpu")
    rows = local.select(range(2))
    out = yoda.evaluate_chrf(model, tok, rows, max_new_tokens=6)
    assert set(out) == {"chrf", "predictions", "references", "sentences"}
    assert len(out["predictions"]) == 2 and all(isinstance(p, str) for p in out["predictions"])
    assert 0 <= out["chrf"] <= 100
    assert tok.padding_side == "right"  # restored after left-padded generation
    # batching does not change greedy answers here
    one_by_one = [yoda.translate(model, tok, [s], max_new_tokens=6)[0] for s in rows["sentence"]]
    assert one_by_one == out["predictions"]
    with pytest.raises(ValueError, match="list of sentences"):
        yoda.translate(model, tok, "The old dog sleeps.")
