"""What notebooks 01 and 02 say about the libraries, checked against the installed ones
(transformers 5.17, TRL 1.16, openai-harmony where its vocabulary loads). Issue 17."""
import copy

import pytest
import torch
from datasets import Dataset

import course_utils as cu
from course_utils import chat, collators, pig_latin

pytestmark = pytest.mark.xdist_group("claims_01_02")  # one worker loads model_and_tok

CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


@pytest.fixture(scope="module")
def model_and_tok():
    return cu.load_model(quiet=True, dtype=torch.float32, device="cpu")


def _with_template(tokenizer, template):
    other = copy.deepcopy(tokenizer)
    other.chat_template = template
    return other


def _sft_trainer(model, tokenizer, rows, tmp_path, **config):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path), **{**cu.trainer_settings(), "gradient_checkpointing": False,
                                                  "max_length": None, **config})
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


# ------------------------------------------------------------------------------ notebook 01

def test_qwen3_keeps_reasoning_after_the_last_user_message(tokenizer):
    """01: Qwen3 renders the reasoning of every assistant turn after the last user message (the
    tool loop), and drops it from the turns before; a tool result does not count as a user turn."""
    msgs = [{"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
            {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": "", "reasoning_content": "R2", "tool_calls": [CALL]},
            {"role": "tool", "content": "6"},
            {"role": "assistant", "content": "A2", "reasoning_content": "R3"}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, chat_template=chat.load_trl_template("qwen3"))
    assert "R1" not in text  # before the last user message: dropped
    assert "<think>\nR2\n</think>" in text and "<think>\nR3\n</think>" in text  # the tool loop: kept
    # Had only the last assistant turn kept its reasoning, R2 would be missing: the claim the notebook corrects.
    assert text.count("<think>") == 2


def test_harmony_template_ends_the_final_answer_with_return_and_a_blank_line_after_instructions(tokenizer):
    """01: what gpt-oss's template (and render_harmony) writes, offline: `<|return|>` after the
    final answer, `<|end|>` after an earlier one, a blank line after the developer's instructions."""
    simple = [{"role": "system", "content": "You are a weather assistant."},
              {"role": "user", "content": "Do I need a coat?"}, {"role": "assistant", "content": "Yes."}]
    template = tokenizer.apply_chat_template(simple, tokenize=False, chat_template=chat.load_trl_template("gptoss"))
    ours = chat.render_harmony(simple)
    assert ours == template
    assert template.endswith("<|channel|>final<|message|>Yes.<|return|>")
    assert "# Instructions\n\nYou are a weather assistant.\n\n<|end|>" in template
    later = tokenizer.apply_chat_template(simple + [{"role": "user", "content": "Why?"}], tokenize=False,
                                          chat_template=chat.load_trl_template("gptoss"), add_generation_prompt=True)
    assert "<|message|>Yes.<|end|>" in later and "<|return|>" not in later
    library_layout = chat.without_instructions_blank_line(ours)
    assert "# Instructions\n\nYou are a weather assistant.<|end|>" in library_layout
    assert chat.first_difference(ours, library_layout)[0] == ours.index("\n\n<|end|><|start|>user")
    assert chat.first_difference(ours, ours) is None


def _harmony_encoding_or_skip():
    try:
        from openai_harmony import HarmonyEncodingName, load_harmony_encoding

        load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"openai-harmony cannot load its vocabulary here (it downloads it on first use; "
                    f"no cached o200k file): {type(err).__name__}")


def test_harmony_library_differs_from_the_template_only_by_the_instructions_blank_line():
    """01, where the vocabulary loads (Colab): render_conversation ends the answer with <|end|>,
    render_conversation_for_training with <|return|>, and the latter equals the template's text
    but for the blank line after the instructions."""
    _harmony_encoding_or_skip()
    simple = [{"role": "system", "content": "You are a weather assistant."},
              {"role": "user", "content": "Do I need a coat?"}, {"role": "assistant", "content": "Yes."}]
    ours = chat.render_harmony(simple, date="2026-01-01")
    training = chat.render_harmony_with_library(simple, date="2026-01-01")
    history = chat.render_harmony_with_library(simple, date="2026-01-01", for_training=False)
    assert training.endswith("Yes.<|return|>") and history.endswith("Yes.<|end|>")
    assert training != ours
    assert training == chat.without_instructions_blank_line(ours)


def test_gpt_oss_template_writes_to_in_the_role_header_and_no_constrain_token(tokenizer):
    """01: the template routes a call in the role header (`assistant to=functions.x<|channel|>`)
    and writes the content type `json` without Harmony's `<|constrain|>` token."""
    msgs = [{"role": "user", "content": "Paris?"}, {"role": "assistant", "content": "", "tool_calls": [CALL]},
            {"role": "tool", "content": "6"}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, chat_template=chat.load_trl_template("gptoss"))
    assert "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>" in text
    assert "<|constrain|>" not in text
    assert "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>" in text


def test_assistant_only_loss_swaps_in_qwen3_training_template_and_raises_for_smollm2(tokenizer, tmp_path):
    """01: SFTTrainer(assistant_only_loss=True) replaces a template it knows that has no
    {% generation %} markers (get_training_chat_template: Qwen3's) and raises for SmolLM2's."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    model = cu.load_architecture("HuggingFaceTB/SmolLM2-135M", num_hidden_layers=1)
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}]
    assert not has_generation_markers(tokenizer.chat_template)
    with pytest.raises(ValueError, match="patching is not supported for this template"):
        get_training_chat_template(tokenizer)
    with pytest.raises(ValueError, match="patching is not supported for this template"):
        _sft_trainer(model, copy.deepcopy(tokenizer), rows, tmp_path, assistant_only_loss=True)
    qwen = _with_template(tokenizer, chat.load_trl_template("qwen3"))
    assert not has_generation_markers(qwen.chat_template)
    trainer = _sft_trainer(model, qwen, rows, tmp_path, assistant_only_loss=True)
    assert trainer.chat_template == chat.load_trl_template("qwen3_training")
    assert has_generation_markers(trainer.chat_template)
    row = trainer.train_dataset[0]
    trained = chat.trained_text(qwen, row["input_ids"], row["labels"])
    assert "Hello.<|im_end|>" in trained and "Hi" not in trained and "user" not in trained


# ------------------------------------------------------------------------------ notebook 02

def test_conversational_data_trains_every_token_unless_assistant_only_loss(model_and_tok):
    """02: `messages` data is trained on every token, system and user turns included, unless
    assistant_only_loss=True (with a template that has generation markers)."""
    model, tok = model_and_tok
    data = pig_latin.to_format(pig_latin.pig_latin_pairs().select(range(3)), "messages")
    plain = collators.prepare_like_trl(model, tok, data)
    for row in plain:
        assert row["labels"] == row["input_ids"]
        assert "<|im_start|>user" in chat.trained_text(tok, row["input_ids"], row["labels"])
    marked = _with_template(tok, chat.CHATML_TRAINING_TEMPLATE)
    masked = collators.prepare_like_trl(model, marked, data, assistant_only_loss=True)
    for row, msgs in zip(masked, data["messages"]):
        assert chat.trained_text(tok, row["input_ids"], row["labels"]) == msgs[-1]["content"] + "<|im_end|>"


def _bos_tokenizer(tok):
    """SmolLM2's tokenizer made to add a BOS token in front of every text, as Llama's does."""
    from tokenizers.processors import TemplateProcessing

    bos = _with_template(tok, tok.chat_template)
    bos._tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A <|endoftext|> $B",
        special_tokens=[("<|endoftext|>", tok.convert_tokens_to_ids("<|endoftext|>"))])
    return bos


def test_trl_tokenizes_with_the_tokenizers_default_special_tokens(model_and_tok):
    """02: TRL calls the tokenizer with its defaults. For SmolLM2 (adds nothing) that equals
    add_special_tokens=False; for a tokenizer that adds BOS it does not."""
    model, tok = model_and_tok
    assert tok("Pig Latin:")["input_ids"] == tok("Pig Latin:", add_special_tokens=False)["input_ids"]
    pairs = pig_latin.to_format(pig_latin.pig_latin_pairs().select(range(3)), "prompt_completion")
    bos = _bos_tokenizer(tok)
    bos_id = bos.convert_tokens_to_ids("<|endoftext|>")
    assert bos("x")["input_ids"][0] == bos_id != bos("x", add_special_tokens=False)["input_ids"][0]
    prepared = collators.prepare_like_trl(model, bos, pairs, completion_only_loss=True)
    for row, ref in zip(pairs, prepared):
        assert ref["input_ids"][0] == bos_id and ref["labels"][0] == -100
        mine = collators.completion_only_labels(bos, row["prompt"], row["completion"])
        assert mine == {"input_ids": ref["input_ids"], "labels": ref["labels"]}
        without = bos(row["prompt"] + row["completion"] + bos.eos_token, add_special_tokens=False)["input_ids"]
        assert without != ref["input_ids"] and without == ref["input_ids"][1:]


def test_bfd_packing_truncates_long_examples_and_bfd_split_keeps_them(model_and_tok, tmp_path):
    """02: the default packing strategy, "bfd", cuts an example longer than max_length (its overflow
    is dropped); "bfd_split" puts the overflow in another row. Packing with "bfd" is padding-free."""
    from trl import SFTConfig, pack_dataset

    assert SFTConfig.__dataclass_fields__["packing_strategy"].default == "bfd"
    ds = Dataset.from_list([{"input_ids": list(range(10)), "labels": list(range(10))},
                            {"input_ids": [1, 2, 3], "labels": [1, 2, 3]}])
    bfd = pack_dataset(ds, 8, strategy="bfd")
    split = pack_dataset(ds, 8, strategy="bfd_split")
    assert sum(len(r) for r in bfd["input_ids"]) == 8 + 3  # two tokens of the long example lost
    assert sorted(t for r in split["input_ids"] for t in r) == sorted(list(range(10)) + [1, 2, 3])
    model, tok = model_and_tok
    pairs = pig_latin.to_format(pig_latin.pig_latin_pairs().select(range(4)), "prompt_completion")
    trainer = _sft_trainer(model, tok, list(pairs), tmp_path, packing=True, max_length=16)
    # The collator SFTTrainer uses then gives no attention_mask, only position_ids.
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    assert "attention_mask" not in batch and "position_ids" in batch
    assert trainer.padding_free
    longest = max(len(tok(p + c + tok.eos_token)["input_ids"]) for p, c in zip(pairs["prompt"], pairs["completion"]))
    assert longest > 16  # the premise: these examples do not fit, so something was cut
    assert all(sum(r) <= 16 for r in trainer.train_dataset["seq_lengths"])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_rows_get_a_block_diagonal_mask_without_flash_attention(attn):
    """02: with no attention_mask, transformers 5.17 builds a block-diagonal causal mask from the
    restarts in position_ids for sdpa and eager too: each example's logits are those it has alone.
    It needs no cache (`masking_utils._preprocess_mask_arguments`); SFTTrainer passes use_cache=False."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling as TRLCollator

    torch.manual_seed(0)
    model = cu.load_architecture("HuggingFaceTB/SmolLM2-135M", num_hidden_layers=2).float().eval()
    model.set_attn_implementation(attn)
    a, b = torch.randint(5, 1000, (5,)).tolist(), torch.randint(5, 1000, (7,)).tolist()
    batch = TRLCollator(pad_token_id=0, padding_free=True)([{"input_ids": a}, {"input_ids": b}])
    assert "attention_mask" not in batch and batch["position_ids"][0].tolist() == list(range(5)) + list(range(7))
    inputs = {k: v for k, v in batch.items() if k != "labels"}  # what SFTTrainer hands the model
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([a])).logits, model(input_ids=torch.tensor([b])).logits], dim=1)
        free = model(**inputs, use_cache=False).logits
        # The same row with a full attention mask, or with a cache: the second example sees the first.
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                      attention_mask=torch.ones_like(batch["input_ids"]), use_cache=False).logits
        cached = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True).logits
    torch.testing.assert_close(free, alone, atol=1e-4, rtol=1e-4)
    assert (leaky[:, 5:] - alone[:, 5:]).abs().max() > 1e-3
    assert (cached[:, 5:] - alone[:, 5:]).abs().max() > 1e-3


def test_attention_cost_of_each_layout(model_and_tok):
    """02: batch_stats' attention pairs: padded rows x longest^2; padding-free one row of all tokens
    squared (what sdpa/eager compute); example_pairs the sum of each example's square."""
    model, tok = model_and_tok
    pairs = pig_latin.to_format(pig_latin.pig_latin_pairs().select(range(6)), "prompt_completion")
    prepared = list(collators.prepare_like_trl(model, tok, pairs, completion_only_loss=True))
    lengths = [len(e["input_ids"]) for e in prepared]
    stats = {k: collators.batch_stats(v) for k, v in collators.layouts(tok, prepared, max_length=128).items()}
    assert stats["padded"]["attention_pairs"] == len(lengths) * max(lengths) ** 2
    assert stats["padding_free"]["attention_pairs"] == sum(lengths) ** 2
    for name in ("padded", "padding_free", "packed"):
        assert stats[name]["example_pairs"] == sum(n * n for n in lengths)
    assert stats["padding_free"]["attention_pairs"] > stats["padded"]["attention_pairs"]


def _cells(root, stem):
    import nbformat

    return {c.id: c.source for c in nbformat.read(root / "solutions" / f"{stem}.ipynb", as_version=4).cells}


def test_counts_in_the_text_of_01_and_02_match_their_source(root, tokenizer):
    """Numbers the two notebooks state: special-token ids, the sentence count, the block count."""
    import re

    text01 = "\n".join(_cells(root, "01_chat_templates").values())
    start, end = map(int, re.search(r"special tokens\*\* \(ids (\d+) and (\d+)\)", text01).groups())
    assert (tokenizer.convert_tokens_to_ids("<|im_start|>"), tokenizer.convert_tokens_to_ids("<|im_end|>")) == (start, end)
    cells02 = _cells(root, "02_pig_latin_collators")
    text02 = "\n".join(cells02.values())
    counts = {int(n) for n in re.findall(r"(\d+) (?:short )?English sentences", text02)}
    assert counts == {len(pig_latin.load_sentences())}
    last, blocks = map(int, re.search(r"only the last (\d+) of (\d+) blocks", text02).groups())
    assert f"TRAIN_LAST_LAYERS = cu.for_mode(full=TRAIN_LAST_LAYERS, reduced={last})" in cells02["cell-03"]
    from transformers import AutoConfig

    from course_utils import models

    assert AutoConfig.from_pretrained(models.fallback_model_dir()).num_hidden_layers == blocks
