"""Collator helpers of notebook 02: labels match TRL's, the pad == eos trap is visible, layouts
train on the same tokens."""
import pytest
import torch
from transformers import DataCollatorForLanguageModeling
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling as TRLCollator

from course_utils import collators, pig_latin

pytestmark = pytest.mark.xdist_group("collators")  # one worker loads model_and_tok


@pytest.fixture(scope="module")
def model_and_tok():
    import course_utils as cu

    return cu.load_model(quiet=True, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def pairs():
    return pig_latin.to_format(pig_latin.pig_latin_pairs().select(range(6)), "prompt_completion")


def test_completion_only_labels_match_trl(model_and_tok, pairs):
    model, tok = model_and_tok
    prepared = collators.prepare_like_trl(model, tok, pairs, completion_only_loss=True)
    for row, ref in zip(pairs, prepared):
        mine = collators.completion_only_labels(tok, row["prompt"], row["completion"])
        assert mine["input_ids"] == ref["input_ids"]
        assert mine["labels"] == ref["labels"]
        assert mine["labels"][-1] == tok.eos_token_id  # the eos is trained on
        assert tok.decode([t for t in mine["labels"] if t != -100]) == row["completion"] + tok.eos_token


def test_full_sequence_labels_match_trl(model_and_tok, pairs):
    model, tok = model_and_tok
    prepared = collators.prepare_like_trl(model, tok, pairs, completion_only_loss=False)
    assert all(r["labels"] == r["input_ids"] for r in prepared)


def test_completion_only_labels_errors(tokenizer):
    with pytest.raises(ValueError, match="empty"):
        collators.completion_only_labels(tokenizer, "English: x\nPig Latin:", "")
    with pytest.raises(ValueError, match="strings"):
        collators.completion_only_labels(tokenizer, None, " x")


def test_pad_eos_trap_and_fix(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the premise of the trap
    texts = ["English: Hi.\nPig Latin: Ihay.", "English: The pig ate a big apple.\nPig Latin: Ethay igpay ateway away igbay appleway."]
    feats = [{"input_ids": tokenizer(t + tokenizer.eos_token)["input_ids"]} for t in texts]
    trap = DataCollatorForLanguageModeling(tokenizer, mlm=False)(feats)
    fixed = TRLCollator(pad_token_id=tokenizer.pad_token_id)(feats)
    assert collators.eos_label_counts(trap, tokenizer.eos_token_id) == {"eos_tokens": 2, "eos_trained": 0, "eos_masked": 2}
    assert collators.eos_label_counts(fixed, tokenizer.eos_token_id) == {"eos_tokens": 2, "eos_trained": 2, "eos_masked": 0}
    wrapped = collators.input_ids_only(DataCollatorForLanguageModeling(tokenizer, mlm=False))
    with_labels = [dict(f, labels=[-100] * len(f["input_ids"])) for f in feats]
    assert torch.equal(wrapped(with_labels)["labels"], trap["labels"])


def test_layouts_train_the_same_tokens(model_and_tok, pairs):
    model, tok = model_and_tok
    prepared = list(collators.prepare_like_trl(model, tok, pairs, completion_only_loss=True))
    ways = collators.layouts(tok, prepared, max_length=128)
    stats = {k: collators.batch_stats(v) for k, v in ways.items()}
    lengths = [len(e["input_ids"]) for e in prepared]
    assert stats["padded"]["rows"] == len(prepared)
    assert stats["padded"]["slots"] == len(prepared) * max(lengths)
    assert stats["padded"]["padding"] == len(prepared) * max(lengths) - sum(lengths)
    assert {k: stats["padding_free"][k] for k in ("rows", "slots", "padding", "trained")} == {
        "rows": 1, "slots": sum(lengths), "padding": 0, "trained": stats["padded"]["trained"]}
    assert stats["packed"]["trained"] == stats["padded"]["trained"]
    assert ways["packed"]["rows_before_flattening"] < len(prepared)
    pos = ways["padding_free"]["position_ids"][0]
    assert int((pos == 0).sum()) == len(prepared)
    with pytest.raises(ValueError):
        collators.layouts(tok, [], max_length=16)


def test_train_only_last_layers():
    import course_utils as cu

    model = cu.load_architecture("HuggingFaceTB/SmolLM2-135M", num_hidden_layers=4)
    n = collators.train_only_last_layers(model, 2)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("model.layers.2.", "model.layers.3.", "model.norm")) for name in trainable)
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="between 1 and 4"):
        collators.train_only_last_layers(model, 5)
