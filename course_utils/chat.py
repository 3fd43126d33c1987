"""Chat templates (notebook 01): validate messages, render and inspect templates, colour tokens
by role or by training mask, and render the Harmony format by hand."""
from __future__ import annotations

import datetime as _dt
import html
import json
import re

ROLES = ("system", "developer", "user", "assistant", "tool")


def validate_messages(messages) -> list[dict]:
    """Check a conversation before it reaches a template; ValueError says which message is wrong.

    Each message is a dict with a known ``role`` and string ``content``; an assistant message may
    carry ``tool_calls`` instead of content, and each tool call needs a function name.
    """
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, msg in enumerate(messages):
        where = f"message {i}"
        if not isinstance(msg, dict):
            raise ValueError(f"{where} is a {type(msg).__name__}, not a dict like "
                             "{'role': 'user', 'content': 'Hi'}")
        role = msg.get("role")
        where += f" (role {role!r})"
        if role not in ROLES:
            raise ValueError(f"{where}: unknown role; use one of {', '.join(ROLES)}")
        calls = msg.get("tool_calls")
        if calls is not None and role != "assistant":
            raise ValueError(f"{where}: only assistant messages can carry tool_calls")
        content = msg.get("content")
        if content is None and not calls:
            raise ValueError(f"{where}: has no content; give it a 'content' string")
        if content is not None and not isinstance(content, str):
            raise ValueError(f"{where}: content must be a string, not {type(content).__name__}")
        for j, call in enumerate(calls or []):
            fn = call.get("function", call) if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not fn.get("name"):
                raise ValueError(f"{where}: tool call {j} has no function name; write it as "
                                 "{'type': 'function', 'function': {'name': ..., 'arguments': {...}}}")
    return list(messages)


def render_chat(tokenizer, messages, *, chat_template: str | None = None, **kwargs) -> str:
    """The text a template makes of ``messages`` (validated first); kwargs go to the template,
    e.g. ``add_generation_prompt=True``, ``continue_final_message=True``, ``tools=[...]``."""
    validate_messages(messages)
    return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=chat_template, **kwargs)


def load_trl_template(name: str) -> str:
    """A real model's chat template as shipped inside TRL (e.g. ``"qwen3"``, ``"gptoss"``,
    ``"llama3_2"``, ``"qwen3_training"``): offline, byte for byte what the model's repo ships."""
    from importlib import resources

    path = resources.files("trl") / "chat_templates" / f"{name}.jinja"
    if not path.is_file():
        raise ValueError(f"TRL ships no chat template named {name!r}")
    return path.read_text(encoding="utf-8")


# SmolLM2's ChatML template with {% generation %} markers around what the assistant writes
# (content and the closing <|im_end|>), which `return_assistant_tokens_mask=True` and TRL's
# `assistant_only_loss=True` need. Everything else renders exactly as SmolLM2's own template.
CHATML_TRAINING_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Where a message starts in ChatML (<|im_start|>role) and in Harmony (<|start|>role).
_TURN = re.compile(r"<\|im_start\|>([^\n<]*)|<\|start\|>([^<\s]*)")


def role_spans(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, role)`` character spans of the turns in a rendered ChatML or Harmony text.

    Harmony tool results (``<|start|>functions.get_weather``) count as role ``tool``; text
    before the first turn is ``other``. The role comes from the text itself, so a system prompt
    the template injected on its own shows up as ``system``.
    """
    spans, starts = [], list(_TURN.finditer(text))
    if not starts or starts[0].start() > 0:
        spans.append((0, starts[0].start() if starts else len(text), "other"))
    for k, m in enumerate(starts):
        role = (m.group(1) or m.group(2) or "").strip()
        role = "tool" if "." in role else (role or "assistant")
        end = starts[k + 1].start() if k + 1 < len(starts) else len(text)
        spans.append((m.start(), end, role if role in ROLES else "other"))
    return spans


ROLE_COLOURS = {"system": "#ffe0b2", "developer": "#f8bbd0", "user": "#bbdefb",
                "assistant": "#c8e6c9", "tool": "#e1bee7", "other": "#eeeeee"}
MASK_COLOURS = {True: "#a5d6a7", False: "#e0e0e0"}


def _token_html(piece: str, colour: str, title: str, strike: bool = False) -> str:
    shown = html.escape(piece).replace("\n", "\u23ce<br>").replace(" ", "&nbsp;") or "&empty;"
    style = (f"background:{colour};border:1px solid #fff;border-radius:3px;padding:0 1px;"
             f"{'color:#777;' if strike else ''}")
    return f'<span title="{html.escape(title)}" style="{style}">{shown}</span>'


def _legend(colours: dict) -> str:
    items = "".join(f'<span style="background:{c};padding:0 6px;margin-right:6px">{html.escape(str(k))}</span>'
                    for k, c in colours.items())
    return f'<div style="margin-bottom:4px;font-size:90%">{items}</div>'


def tokens_by_role(tokenizer, text: str) -> list[tuple[int, str, str]]:
    """``(token_id, token_text, role)`` for each token of a rendered chat text."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = role_spans(text)
    out = []
    for tid, (a, _) in zip(enc["input_ids"], enc["offset_mapping"]):
        role = next((r for s, e, r in spans if s <= a < e), "other")
        out.append((tid, tokenizer.decode([tid]), role))
    return out


def show_tokens(tokenizer, text: str | None = None, *, input_ids=None, labels=None,
                assistant_masks=None):
    """Coloured tokens as HTML for the notebook.

    - ``show_tokens(tok, text)``: by role (system, user, assistant, tool...).
    - ``show_tokens(tok, input_ids=ids, labels=labels)``: by training mask; tokens whose label is
      -100 are grey (not trained on), the rest green.
    - ``show_tokens(tok, input_ids=ids, assistant_masks=mask)``: the same with a 0/1 mask.
    Hover a token to see its id.
    """
    from IPython.display import HTML

    if text is not None:
        parts = [_token_html(piece, ROLE_COLOURS.get(role, "#eee"), f"id {tid} | {role}")
                 for tid, piece, role in tokens_by_role(tokenizer, text)]
        return HTML(_legend(ROLE_COLOURS) + '<div style="font-family:monospace;line-height:1.9">'
                    + "".join(parts) + "</div>")
    if input_ids is None:
        raise ValueError("give show_tokens either a rendered text or input_ids (with labels or assistant_masks)")
    ids = [int(i) for i in _flat(input_ids)]
    if labels is not None:
        trained = [int(lab) != -100 for lab in _flat(labels)]
    elif assistant_masks is not None:
        trained = [bool(m) for m in _flat(assistant_masks)]
    else:
        raise ValueError("show_tokens(input_ids=...) needs labels= or assistant_masks= to colour by mask")
    if len(trained) != len(ids):
        raise ValueError(f"{len(ids)} input ids but {len(trained)} labels/mask entries: they must align")
    parts = [_token_html(tokenizer.decode([t]), MASK_COLOURS[m], f"id {t} | {'trained' if m else 'masked (-100)'}",
                         strike=not m) for t, m in zip(ids, trained)]
    legend = _legend({"trained on": MASK_COLOURS[True], "masked (-100)": MASK_COLOURS[False]})
    return HTML(legend + '<div style="font-family:monospace;line-height:1.9">' + "".join(parts) + "</div>")


def _flat(x):
    if hasattr(x, "tolist"):
        x = x.tolist()
    if x and isinstance(x[0], list):
        if len(x) != 1:
            raise ValueError("show_tokens shows one sequence at a time: pass input_ids[0]")
        x = x[0]
    return x


def trained_text(tokenizer, input_ids, labels) -> str:
    """What the loss actually sees: the decoded tokens whose label is not -100."""
    ids = _flat(input_ids)
    labs = _flat(labels)
    return tokenizer.decode([i for i, lab in zip(ids, labs) if lab != -100])


# ----------------------------------------------------------------------------------------------
# Harmony (gpt-oss), rendered by hand the way gpt-oss's own chat template renders it.

HARMONY_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."


def _ts_type(spec: dict) -> str:
    """A JSON-schema type as the TypeScript-like text Harmony uses (the common cases)."""
    kind = spec.get("type")
    if kind == "string":
        return " | ".join(f'"{v}"' for v in spec["enum"]) if spec.get("enum") else "string"
    if kind in ("number", "integer"):
        return "number"
    if kind == "boolean":
        return "boolean"
    if kind == "array":
        inner = spec.get("items", {}).get("type")
        return {"string": "string[]", "number": "number[]", "integer": "number[]",
                "boolean": "boolean[]"}.get(inner, "any[]")
    return "any"


def harmony_tool_namespace(tools: list[dict]) -> str:
    """Tool definitions as Harmony's ``namespace functions { ... }`` block."""
    out = "## functions\n\nnamespace functions {\n\n"
    for tool in tools:
        fn = tool.get("function", tool)
        out += f"// {fn['description']}\ntype {fn['name']} = "
        params = fn.get("parameters") or {}
        props = params.get("properties") or {}
        if not props:
            out += "() => any;\n\n"
            continue
        out += "(_: {\n"
        required = params.get("required") or []
        for name, spec in props.items():
            if spec.get("description"):
                out += f"// {spec['description']}\n"
            out += f"{name}{'' if name in required else '?'}: {_ts_type(spec)}"
            if "default" in spec:
                default = spec["default"] if spec.get("enum") else json.dumps(spec["default"])
                out += f", // default: {default}"
            out += ",\n"
        out += "}) => any;\n\n"
    return out + "} // namespace functions"


def render_harmony(messages, *, tools: list[dict] | None = None, reasoning_effort: str = "medium",
                   date: str | None = None, add_generation_prompt: bool = False,
                   model_identity: str = HARMONY_IDENTITY) -> str:
    """Render a conversation in OpenAI's Harmony format, as gpt-oss's chat template does.

    - The ``system`` turn holds identity, dates, reasoning effort and the valid channels; a leading
      ``system`` or ``developer`` message of ours becomes the ``developer`` turn's instructions,
      next to the tools, written as TypeScript-like types.
    - Assistant ``thinking`` goes to the ``analysis`` channel, answers to ``final``; a tool call
      goes ``to=functions.NAME`` on the ``commentary`` channel and ends with ``<|call|>``; the
      tool's result comes back from ``functions.NAME to=assistant``.
    - Earlier turns end with ``<|end|>``; a final assistant answer (training) ends with
      ``<|return|>``, the token the model emits to stop.
    """
    validate_messages(messages)
    date = date or _dt.date.today().isoformat()
    system = (f"{model_identity}\nKnowledge cutoff: 2024-06\nCurrent date: {date}\n\n"
              f"Reasoning: {reasoning_effort}\n\n"
              "# Valid channels: analysis, commentary, final. Channel must be included for every message.")
    if tools:
        system += "\nCalls to these tools must go to the commentary channel: 'functions'."
    out = f"<|start|>system<|message|>{system}<|end|>"
    rest = list(messages)
    instructions = ""
    if rest[0]["role"] in ("system", "developer"):
        instructions, rest = rest[0]["content"], rest[1:]
    if instructions or tools:
        out += "<|start|>developer<|message|>"
        if instructions:
            out += f"# Instructions\n\n{instructions}\n\n"
        if tools:
            out += "# Tools\n\n" + harmony_tool_namespace(tools)
        out += "<|end|>"
    last_tool = None
    for k, msg in enumerate(rest):
        role, content = msg["role"], msg.get("content") or ""
        if role == "user":
            out += f"<|start|>user<|message|>{content}<|end|>"
        elif role == "tool":
            if last_tool is None:
                raise ValueError(f"message {k}: a tool result needs an earlier assistant tool call")
            out += (f"<|start|>functions.{last_tool} to=assistant<|channel|>commentary"
                    f"<|message|>{json.dumps(content)}<|end|>")
        elif role == "assistant" and msg.get("tool_calls"):
            later_final = any(m["role"] == "assistant" and not m.get("tool_calls") for m in rest[k + 1:])
            thought = content or msg.get("thinking")
            if thought and not later_final:  # reasoning before a tool call is kept until answered
                out += f"<|start|>assistant<|channel|>analysis<|message|>{thought}<|end|>"
            call = msg["tool_calls"][0].get("function", msg["tool_calls"][0])
            out += (f"<|start|>assistant to=functions.{call['name']}<|channel|>commentary json"
                    f"<|message|>{json.dumps(call.get('arguments', {}))}<|call|>")
            last_tool = call["name"]
        elif role == "assistant":
            if k == len(rest) - 1 and not add_generation_prompt:
                if msg.get("thinking"):
                    out += f"<|start|>assistant<|channel|>analysis<|message|>{msg['thinking']}<|end|>"
                out += f"<|start|>assistant<|channel|>final<|message|>{content}<|return|>"
            else:  # earlier answers: their reasoning is dropped
                out += f"<|start|>assistant<|channel|>final<|message|>{content}<|end|>"
                last_tool = None
        else:
            raise ValueError(f"message {k} (role {role!r}): Harmony takes a system/developer message "
                             "only first; move it to the start")
    if add_generation_prompt:
        out += "<|start|>assistant"
    return out


def render_harmony_with_library(messages, *, reasoning_effort: str = "medium", date: str | None = None,
                                for_training: bool = True):
    """Render with OpenAI's ``openai-harmony`` library where it can load its vocabulary.

    It downloads the vocabulary on first use; offline that fails, and this returns ``None`` after
    printing one line (the notebook then uses ``render_harmony`` alone). Covers system, developer,
    user and plain assistant messages.

    ``for_training=True`` (the default) uses ``render_conversation_for_training``, which ends a
    final assistant answer with ``<|return|>`` as gpt-oss's chat template does;
    ``for_training=False`` uses ``render_conversation``, which ends it with ``<|end|>`` (how an
    answer sits in the history of a later prompt). One difference stays either way: the library
    writes the developer's ``# Instructions`` without the blank line that the template (and
    ``render_harmony``) puts after them.
    """
    try:
        from openai_harmony import (Conversation, DeveloperContent, HarmonyEncodingName, Message,
                                    ReasoningEffort, Role, SystemContent, load_harmony_encoding)

        enc = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
    except Exception as err:  # noqa: BLE001 - offline: the vocabulary download fails
        print(f"openai-harmony could not load its vocabulary ({type(err).__name__}: {str(err)[:80]}); "
              "showing course_utils' renderer only.")
        return None
    effort = {"low": ReasoningEffort.LOW, "medium": ReasoningEffort.MEDIUM, "high": ReasoningEffort.HIGH}
    system = (SystemContent.new().with_reasoning_effort(effort[reasoning_effort])
              .with_conversation_start_date(date or _dt.date.today().isoformat()))
    convo = [Message.from_role_and_content(Role.SYSTEM, system)]
    for m in validate_messages(messages):
        if m["role"] in ("system", "developer"):
            convo.append(Message.from_role_and_content(
                Role.DEVELOPER, DeveloperContent.new().with_instructions(m["content"])))
        elif m["role"] == "user":
            convo.append(Message.from_role_and_content(Role.USER, m["content"]))
        elif m["role"] == "assistant" and not m.get("tool_calls"):
            convo.append(Message.from_role_and_content(Role.ASSISTANT, m["content"]).with_channel("final"))
        else:
            raise ValueError("render_harmony_with_library covers system/developer/user/assistant text only")
    render = enc.render_conversation_for_training if for_training else enc.render_conversation
    return enc.decode_utf8(render(Conversation.from_messages(convo)))


def without_instructions_blank_line(text: str) -> str:
    """A Harmony text with the blank line that ends a developer turn of instructions only (no
    tools) removed: the gpt-oss template's ``# Instructions\n\n...\n\n<|end|>`` in the
    library's layout, ``# Instructions\n\n...<|end|>``."""
    head = "<|start|>developer<|message|># Instructions\n\n"
    start = text.find(head)
    if start < 0:
        return text
    end = text.find("<|end|>", start)
    if end < 0 or text[end - 2:end] != "\n\n":
        return text
    return text[:end - 2] + text[end:]


def first_difference(a: str, b: str, context: int = 25):
    """Where two texts first differ: ``None`` if equal, else ``(index, a's text there, b's text there)``."""
    if a == b:
        return None
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return i, a[max(0, i - context):i + context], b[max(0, i - context):i + context]
