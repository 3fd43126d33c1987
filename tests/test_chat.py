import datetime

import pytest

from course_utils import chat

TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
        "days": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}},
        "exact": {"type": "boolean", "default": False}}}}}
NO_ARGS = {"type": "function", "function": {"name": "get_location", "description": "Where the user is."}}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty list"),
    (["hi"], "message 0 is a str"),
    ([{"role": "usr", "content": "Hi"}], r"message 0 \(role 'usr'\): unknown role"),
    ([{"role": "user", "content": "Hi"}, {"role": "user"}], r"message 1 \(role 'user'\): has no content"),
    ([{"role": "user", "content": 3}], "content must be a string"),
    ([{"role": "assistant", "tool_calls": [{"type": "function", "function": {"arguments": {}}}]}],
     "tool call 0 has no function name"),
    ([{"role": "user", "content": "x", "tool_calls": [CALL]}], "only assistant messages"),
])
def test_bad_messages_name_the_message_and_the_problem(messages, match):
    with pytest.raises(ValueError, match=match):
        chat.validate_messages(messages)


def test_valid_messages_pass_through():
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "content": "{}"}]
    assert chat.validate_messages(msgs) == msgs


def test_role_spans_see_injected_system_prompt(tokenizer):
    text = chat.render_chat(tokenizer, [{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    spans = chat.role_spans(text)
    assert [r for *_, r in spans] == ["system", "user", "assistant"]
    assert text[spans[0][0]:spans[0][1]].startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    roles = {role for _, _, role in chat.tokens_by_role(tokenizer, text)}
    assert roles == {"system", "user", "assistant"}


CONVERSATIONS = {
    "plain": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
    "developer and thinking": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                               {"role": "assistant", "content": "4", "thinking": "Easy sum."}],
    "earlier answers drop reasoning": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "thinking": "t1"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d", "thinking": "t2"}],
    "tool call and result": [
        {"role": "system", "content": "Weather bot."}, {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": "", "thinking": "Use the tool.", "tool_calls": [CALL]},
        {"role": "tool", "content": '{"t": 6}'}],
    "tool call then final": [
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": "", "thinking": "Use the tool.", "tool_calls": [CALL]},
        {"role": "tool", "content": '{"t": 6}'}, {"role": "assistant", "content": "6 degrees."}],
}


@pytest.mark.parametrize("name", CONVERSATIONS)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_harmony_renderer_matches_gpt_oss_template(tokenizer, name, generation_prompt):
    msgs = CONVERSATIONS[name]
    tools = [TOOL, NO_ARGS] if "tool" in name else None
    reference = tokenizer.apply_chat_template(
        msgs, tools=tools, tokenize=False, chat_template=chat.load_trl_template("gptoss"),
        add_generation_prompt=generation_prompt, reasoning_effort="high")
    ours = chat.render_harmony(msgs, tools=tools, add_generation_prompt=generation_prompt,
                               reasoning_effort="high", date=datetime.date.today().isoformat())
    assert ours == reference


def test_harmony_structure():
    text = chat.render_harmony(CONVERSATIONS["tool call and result"], tools=[TOOL, NO_ARGS], date="2026-01-01")
    assert "<|start|>developer<|message|># Instructions\n\nWeather bot." in text
    assert "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>" in text
    assert text.count("<|call|>") == 1 and "functions.get_weather to=assistant" in text
    assert "unit?: \"celsius\" | \"fahrenheit\", // default: celsius" in text
    assert "type get_location = () => any;" in text
    assert [r for *_, r in chat.role_spans(text)] == ["system", "developer", "user", "assistant", "assistant", "tool"]
    with pytest.raises(ValueError, match="needs an earlier assistant tool call"):
        chat.render_harmony([{"role": "tool", "content": "1"}])


def test_library_renderer_reports_offline_failure(capsys):
    out = chat.render_harmony_with_library([{"role": "user", "content": "Hi"}])
    if out is None:  # offline: the vocabulary cannot be downloaded
        assert "could not load its vocabulary" in capsys.readouterr().out
    else:
        assert out == chat.render_harmony([{"role": "user", "content": "Hi"}])


def test_training_template_renders_like_smollm2_and_masks_assistant(tokenizer):
    from trl.chat_template_utils import has_generation_markers

    msgs = CONVERSATIONS["earlier answers drop reasoning"]
    assert has_generation_markers(chat.CHATML_TRAINING_TEMPLATE)
    for gen in (False, True):
        assert (tokenizer.apply_chat_template(msgs, tokenize=False, chat_template=chat.CHATML_TRAINING_TEMPLATE, add_generation_prompt=gen)
                == tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen))
    enc = tokenizer.apply_chat_template(msgs, chat_template=chat.CHATML_TRAINING_TEMPLATE,
                                        return_assistant_tokens_mask=True, return_dict=True)
    labels = [i if m else -100 for i, m in zip(enc["input_ids"], enc["assistant_masks"])]
    assert chat.trained_text(tokenizer, enc["input_ids"], labels) == "b<|im_end|>d<|im_end|>"


def test_show_tokens_html(tokenizer):
    text = chat.render_chat(tokenizer, CONVERSATIONS["plain"])
    html = chat.show_tokens(tokenizer, text).data
    assert chat.ROLE_COLOURS["assistant"] in html and chat.ROLE_COLOURS["user"] in html and "&lt;|im_end|&gt;" in html
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    masked = chat.show_tokens(tokenizer, input_ids=ids, labels=[-100] * (len(ids) - 1) + [ids[-1]]).data
    assert masked.count(chat.MASK_COLOURS[True]) == 2  # the legend and one trained token
    with pytest.raises(ValueError, match="must align"):
        chat.show_tokens(tokenizer, input_ids=ids, labels=[1])
    with pytest.raises(ValueError, match="needs labels"):
        chat.show_tokens(tokenizer, input_ids=ids)


def test_unknown_trl_template():
    with pytest.raises(ValueError, match="no chat template named"):
        chat.load_trl_template("nope")
