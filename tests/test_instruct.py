"""Unit tests of course_utils.instruct (notebook 07): template, data, scoring pieces, generation."""
import json

import pytest

from course_utils import instruct

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def tok():
    import course_utils as cu

    tokenizer = cu.load_tokenizer(quiet=True)
    tokenizer.chat_template = instruct.CHAT_TEMPLATE
    return tokenizer


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a color. One word."},
    {"role": "assistant", "content": "<think>\nEasy.\n</think>\n\nBlue."},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "Red."},
]


# ----------------------------------------------------------------------------- template
def test_template_renders_chatml_without_default_system(tok):
    text = tok.apply_chat_template(CHAT[1:3], tokenize=False)
    assert text == ("<|im_start|>user\nName a color. One word.<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\nEasy.\n</think>\n\nBlue.<|im_end|>\n")
    prompt = tok.apply_chat_template(CHAT[1:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and text.startswith(prompt)


def test_assistant_mask_covers_content_and_end_of_turn_only(tok):
    pieces = instruct.trained_segments(tok, CHAT)
    trained = [text for text, flag in pieces if flag]
    assert trained == ["<think>\nEasy.\n</think>\n\nBlue.<|im_end|>", "Red.<|im_end|>"]
    assert "".join(text for text, _ in pieces) == tok.apply_chat_template(CHAT, tokenize=False)


def test_trl_accepts_the_template_for_assistant_only_loss(tok):
    from trl.chat_template_utils import has_generation_markers, is_chat_template_stop_token_trained

    assert has_generation_markers(instruct.CHAT_TEMPLATE)
    assert is_chat_template_stop_token_trained(tok, chat_template=instruct.CHAT_TEMPLATE)


def test_tool_turn_is_context_not_trained(tok):
    chat = [{"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": '<tool_call>\n{"name": "get_weather"}\n</tool_call>'},
            {"role": "tool", "content": '{"temperature_c": 4}'},
            {"role": "assistant", "content": "It is 4 °C."}]
    trained = "".join(text for text, flag in instruct.trained_segments(tok, chat) if flag)
    assert "temperature_c" not in trained and "get_weather" in trained and "It is 4 °C." in trained


def test_merge_segments_joins_and_drops_empty():
    assert instruct.merge_segments([("a", False), ("", True), ("b", False), ("c", True), ("d", 1)]) == [
        ("ab", False), ("cd", True)]


def test_clone_from_saved_template_source(tmp_path, tok):
    import copy

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import clone_chat_template

    target = copy.deepcopy(tok)
    target.chat_template = None
    target.eos_token = "<|endoftext|>"
    config = LlamaConfig(vocab_size=len(target), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder = instruct.save_template_source(target, tmp_path / "src")
    model, target, added = clone_chat_template(model, target, str(folder))
    assert target.chat_template == instruct.CHAT_TEMPLATE
    assert target.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == target.eos_token_id
    assert added == []  # SmolLM2's vocabulary already holds the ChatML tokens
    assert model.get_input_embeddings().weight.shape[0] == len(target)


def test_save_template_source_rejects_unknown_eos(tmp_path, tok):
    with pytest.raises(ValueError, match="not in the tokenizer"):
        instruct.save_template_source(tok, tmp_path, eos_token="<|no_such_token|>")


# ----------------------------------------------------------------------------- data
def test_local_conversations_meet_the_brief():
    data = instruct.load_conversations()
    assert data.column_names == ["messages", "source"]
    assert len(data) >= 100
    assert all(sum(m["role"] == "user" for m in msgs) >= 1 and len(msgs) >= 4 for msgs in data["messages"])
    with_system = [m for m in data["messages"] if m[0]["role"] == "system"]
    thinking = [m for m in data["messages"] if any("<think>" in x["content"] for x in m if x["role"] == "assistant")]
    tools = [m for m in data["messages"] if any(x["role"] == "tool" for x in m)]
    assert len(with_system) >= 3 and len(thinking) >= 3 and len(tools) >= 3
    for msgs in tools:  # every tool call is valid JSON
        for x in msgs:
            if x["role"] == "assistant" and "<tool_call>" in x["content"]:
                json.loads(x["content"].split("<tool_call>")[1].split("</tool_call>")[0])


def test_local_data_keeps_the_eval_prompts_held_out():
    texts = [m["content"].lower() for msgs in instruct.load_conversations()["messages"] for m in msgs]
    prefs = instruct.load_preferences()
    texts += [m["content"].lower() for col in ("prompt", "chosen", "rejected") for msgs in prefs[col] for m in msgs]
    for spec in instruct.EVAL_PROMPTS:
        assert not any(spec["prompt"].lower() in t for t in texts), spec["prompt"]


def test_local_data_follows_its_own_formats():
    """Answers to 'one word' / JSON / capital-letters requests pass the checks the evaluation uses."""
    cues = {"one word": "one_word", "single word": "one_word", "json object": "json",
            "capital letters only": "uppercase", "bulleted list": None}
    seen = set()
    for msgs in instruct.load_conversations()["messages"]:
        for user, reply in zip(msgs, msgs[1:]):
            if user["role"] != "user" or reply["role"] != "assistant":
                continue
            for cue, fmt in cues.items():
                if cue in user["content"].lower():
                    seen.add(cue)
                    if fmt:
                        assert instruct.follows_format(reply["content"], fmt), (user, reply)
                    else:
                        n = len(reply["content"].splitlines())
                        assert instruct.follows_format(reply["content"], f"bullets:{n}"), (user, reply)
    assert seen == set(cues)


def test_preferences_columns_and_differences():
    prefs = instruct.load_preferences()
    assert prefs.column_names == ["prompt", "chosen", "rejected"] and len(prefs) >= 40
    for row in prefs:
        assert row["prompt"][0]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]
    assert len(instruct.load_preferences(5)) == 5


def test_hub_preferences_are_split_into_prompt_and_answers(monkeypatch):
    from datasets import Dataset

    hub = Dataset.from_list([{
        "prompt": "Hi?",
        "chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "x" * 500}],
    }] * 3)
    monkeypatch.setattr("datasets.load_dataset", lambda *a, **k: hub)
    out = instruct.load_preferences(source="hub")
    assert out[0] == {"prompt": [{"role": "user", "content": "Hi?"}],
                      "chosen": [{"role": "assistant", "content": "Hello!"}],
                      "rejected": [{"role": "assistant", "content": "x" * 500}]}
    assert len(instruct.load_preferences(source="hub", max_chars=100)) == 0


def test_hub_conversations_get_the_same_columns(monkeypatch):
    from datasets import Dataset

    hub = Dataset.from_list([{"full_topic": "t", "messages": [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}] * 4)
    monkeypatch.setattr("datasets.load_dataset", lambda *a, **k: hub)
    out = instruct.load_conversations(2, source="hub")
    assert out.column_names == ["messages", "source"] and len(out) == 2
    assert out[0]["source"] == "HuggingFaceTB/smoltalk:everyday-conversations"


@pytest.mark.parametrize("messages, words", [
    ([], "non-empty list"),
    ([{"role": "bot", "content": "hi"}], "use one of"),
    ([{"role": "user", "content": " "}], "empty content"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
      {"role": "assistant", "content": "c"}], "system message first"),
    ([{"role": "user", "content": "a"}], "end with an assistant"),
])
def test_validate_conversation_says_what_to_fix(messages, words):
    with pytest.raises(ValueError, match=words):
        instruct.validate_conversation(messages)


def test_bad_source_is_a_clear_error():
    with pytest.raises(ValueError, match="source must be 'auto', 'hub' or 'local'"):
        instruct.load_conversations(source="colab")


def test_full_mode_without_the_hub_uses_the_local_samples(monkeypatch, capsys):
    from course_utils import hub

    monkeypatch.setenv("COURSE_SMOKE", "0")
    monkeypatch.setattr(hub, "reachable", lambda *a, **k: False)
    monkeypatch.setattr("datasets.load_dataset", lambda *a, **k: pytest.fail("the hub was called"))
    conversations, preferences = instruct.load_conversations(5), instruct.load_preferences(5)
    assert len(conversations) == len(preferences) == 5
    assert conversations["messages"] == instruct.load_conversations(5, source="local")["messages"]
    out = capsys.readouterr().out
    assert "instead of HuggingFaceTB/smoltalk (the dataset hub is unreachable)" in out
    assert "instead of HuggingFaceH4/ultrafeedback_binarized (the dataset hub is unreachable)" in out


# ----------------------------------------------------------------------------- scoring pieces
@pytest.mark.parametrize("text, fmt, ok", [
    ("Jupiter.", "one_word", True),
    ("It is Jupiter.", "one_word", False),
    ("- Red\n- Blue\n- Yellow", "bullets:3", True),
    ("• Red\n• Blue\n\n• Yellow\n", "bullets:3", True),
    ("1. Red\n2. Blue\n3. Yellow", "bullets:3", True),
    ("- Red\n- Blue", "bullets:3", False),
    ("Red, blue and yellow.", "bullets:3", False),
    ('{"name": "Ana", "age": 30}', "json", True),
    ('```json\n{"name": "Ana"}\n```', "json", False),
    ("[1, 2]", "json", False),
    ("WELCOME!", "uppercase", True),
    ("Welcome", "uppercase", False),
    ("123", "uppercase", False),
    ("Bees make honey.", "max_words:10", True),
    ("", "max_words:10", False),
    ("one two three four five six seven eight nine ten eleven", "max_words:10", False),
    ("anything", None, True),
])
def test_follows_format(text, fmt, ok):
    assert instruct.follows_format(text, fmt) is ok


def test_unknown_format_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown format"):
        instruct.follows_format("x", "haiku")


def test_mentions_answer_matches_whole_words_case_insensitively():
    assert instruct.mentions_answer("The capital is PARIS.", ["Paris"])
    assert not instruct.mentions_answer("Parisian food", ["Paris"])
    assert instruct.mentions_answer("It has 8 legs", ["8", "eight"])
    assert not instruct.mentions_answer("It has 18 legs", ["8"])


def _checks(text, stopped, spec):
    c = {"stops": stopped and bool(text.strip())}
    if spec.get("answers"):
        c["answers"] = instruct.mentions_answer(text, spec["answers"])
    if spec.get("format"):
        c["format"] = instruct.follows_format(text, spec["format"])
    return c


def test_score_table_averages_checks_per_prompt():
    specs = [{"answers": ["Paris"], "format": None}, {"answers": ["Jupiter"], "format": "one_word"}]
    results = {"a": [{"text": "Paris.", "stopped": True}, {"text": "It is Jupiter", "stopped": False}],
               "b": [{"text": "", "stopped": True}, {"text": "Jupiter", "stopped": True}]}
    table = instruct.score_table(results, specs, _checks)
    assert table.loc["a", "score"] == pytest.approx(100 * (1 + 1 / 3) / 2, abs=0.1)
    assert table.loc["b", "stops %"] == 50.0 and table.loc["b", "score"] == 50.0
    with pytest.raises(ValueError, match="answers for 2 prompts"):
        instruct.score_table({"a": results["a"][:1]}, specs, _checks)


def test_score_table_gives_each_stage_its_mean_answer_length():
    specs = [{"answers": ["Paris"], "format": None}, {"answers": ["Jupiter"], "format": "one_word"}]
    results = {"short": [{"text": "Paris.", "stopped": True}, {"text": "Jupiter", "stopped": True}],
               "long": [{"text": "The capital is Paris, of course.", "stopped": True},
                        {"text": "It's Jupiter (the gas giant).", "stopped": False}]}
    table = instruct.score_table(results, specs, _checks)
    assert instruct.answer_words("It's Jupiter (the gas giant).") == 5
    assert table.loc["short", "words"] == 1.0
    assert table.loc["long", "words"] == (6 + 5) / 2
    assert table.columns[-1] == "score"


def test_eval_prompts_are_well_formed():
    for spec in instruct.EVAL_PROMPTS:
        assert spec["prompt"] and spec["answers"]
        instruct.follows_format("x", spec["format"])  # known formats only


def test_side_by_side_marks_missing_stops():
    results = {"base": [{"prompt": "p", "text": "a " * 50, "stopped": False}],
               "SFT": [{"prompt": "p", "text": "b", "stopped": True}]}
    table = instruct.side_by_side(results, width=20)
    assert list(table.columns) == ["base", "SFT"] and table.loc["p", "SFT"] == "b"
    assert table.loc["p", "base"].endswith("[no stop]") and len(table.loc["p", "base"]) <= 20 + 10


def test_plot_losses(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    ax = instruct.plot_losses([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "train_runtime": 1}])
    assert len(ax.lines) == 1
    with pytest.raises(ValueError, match="logging_steps"):
        instruct.plot_losses([{"step": 1}])


# ----------------------------------------------------------------------------- generation
class _ScriptedModel:
    """Stands in for a causal LM: ``generate`` appends scripted token ids to each prompt."""

    def __init__(self, replies, eos_id):
        import torch

        self.replies, self.training = replies, False
        self.generation_config = type("G", (), {"eos_token_id": [eos_id]})()
        self._param = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def parameters(self):
        yield self._param

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        import torch

        self.calls.append({**kwargs, "training": self.training})
        pad = kwargs["pad_token_id"]
        new = [(r + [pad] * max_new_tokens)[:max_new_tokens] for r in self.replies[:len(input_ids)]]
        return torch.cat([input_ids, torch.tensor(new)], dim=1)


def test_generate_answers_cuts_at_the_stop_token(tok):
    hello = tok.encode("Hello there", add_special_tokens=False)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    model = _ScriptedModel([hello + [eos] + hello, hello * 10], eos)
    tok.padding_side, model.training = "right", True
    out = instruct.generate_answers(model, tok, ["Hi", "A longer prompt here"], max_new_tokens=6)
    assert tok.padding_side == "right" and model.training  # both restored after generating
    assert model.calls[0]["do_sample"] is False and not model.calls[0]["training"]
    assert eos in model.calls[0]["eos_token_id"]
    assert [r["prompt"] for r in out] == ["Hi", "A longer prompt here"]
    assert out[0]["text"] == "Hello there" and out[0]["stopped"] is True
    assert out[1]["stopped"] is False and out[1]["text"].startswith("Hello thereHello")
    assert out[0]["input"].endswith("<|im_start|>assistant\n")
    raw = instruct.generate_answers(model, tok, ["Hi"], render="raw", max_new_tokens=2)
    assert raw[0]["input"] == "Hi"
    custom = instruct.generate_answers(model, tok, ["Hi"], render=lambda p: f"Q: {p}\nA:", max_new_tokens=2)
    assert custom[0]["input"] == "Q: Hi\nA:"


def test_generate_answers_needs_a_template_for_chat(tok):
    import copy

    bare = copy.deepcopy(tok)
    bare.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        instruct.generate_answers(object(), bare, ["Hi"])
    with pytest.raises(ValueError, match="render must be"):
        instruct.generate_answers(object(), tok, ["Hi"], render="alpaca")


# ------------------------------------------------------------------------- the T4 (fp16) path
@pytest.mark.parametrize("trainer_name", ["SFTTrainer", "DPOTrainer"])
def test_lora_on_an_fp16_model_trains_float32_parameters(tok, tmp_path, trainer_name):
    """On a T4, notebook 07 loads the model in fp16 and trains with fp16=True: the gradient scaler
    refuses fp16 parameters ("Attempting to unscale FP16 gradients"). PEFT keeps LoRA weights in
    float32 (autocast_adapter_dtype); CI has no GPU, so this checks that precondition on the CPU."""
    import torch
    import trl
    from peft import LoraConfig

    import course_utils as cu

    model = cu.load_architecture(cu.FALLBACK_ID, dtype=torch.float16, num_hidden_layers=1, hidden_size=64,
                                 intermediate_size=128, num_attention_heads=2, num_key_value_heads=1)
    common = dict(output_dir=str(tmp_path), max_steps=1, max_length=64, report_to="none", use_cpu=True,
                  gradient_checkpointing=False, bf16=False, fp16=False)
    if trainer_name == "SFTTrainer":
        args = trl.SFTConfig(packing=True, assistant_only_loss=True, **common)
        data = instruct.load_conversations(8, source="local", quiet=True)
    else:
        args = trl.DPOConfig(**common)
        data = instruct.load_preferences(8, source="local", quiet=True)
    trainer = getattr(trl, trainer_name)(model=model, args=args, train_dataset=data, processing_class=tok,
                                         peft_config=LoraConfig(r=4, target_modules="all-linear"))
    trained = {name: p.dtype for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in name for name in trained)
    assert set(trained.values()) == {torch.float32}
    assert trainer.model.get_input_embeddings().weight.dtype == torch.float16  # the frozen base stays fp16
