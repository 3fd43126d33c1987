"""Instruction tuning end to end (notebook 07): chat template, data, generation and scoring.

- ``CHAT_TEMPLATE``: ChatML (SmolLM2's format) with ``{% generation %}`` markers around what the
  assistant writes, so ``assistant_only_loss=True`` knows which tokens to train on;
  ``save_template_source`` writes a tokenizer folder that ``trl.clone_chat_template`` can clone from.
- ``load_conversations`` / ``load_preferences``: the hub data sets in full mode, the samples written
  for this project offline, with the same columns either way.
- ``generate_answers`` and the pieces of the instruction-following score (``mentions_answer``,
  ``follows_format``), ``score_table`` (with each stage's mean answer length, ``answer_words``) and
  ``side_by_side`` to compare stages.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from . import hub

DATA_DIR = Path(__file__).parent / "data"
CONVERSATIONS_FILE = DATA_DIR / "instruct_conversations.jsonl"
PREFERENCES_FILE = DATA_DIR / "instruct_preferences.jsonl"

HUB_CONVERSATIONS = ("HuggingFaceTB/smoltalk", "everyday-conversations")
HUB_PREFERENCES = ("HuggingFaceH4/ultrafeedback_binarized", "train_prefs")

END_OF_TURN = "<|im_end|>"
ROLES = ("system", "user", "assistant", "tool")

# ChatML as SmolLM2 writes it, without a default system prompt, plus generation markers: the
# assistant's content and its <|im_end|> are "generated" (trained on); the header
# "<|im_start|>assistant\n" is the prompt the model is given at inference, so it is not.
CHAT_TEMPLATE = """\
{%- for message in messages %}
    {%- if message['role'] == 'assistant' %}
        {{- '<|im_start|>assistant\\n' }}
        {%- generation %}
            {{- message['content'] + '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\\n' }}
    {%- else %}
        {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


# --------------------------------------------------------------------------- chat template
def save_template_source(tokenizer, folder, *, chat_template: str = CHAT_TEMPLATE,
                         eos_token: str = END_OF_TURN) -> Path:
    """Save a copy of ``tokenizer`` carrying ``chat_template`` and ``eos_token`` into ``folder``.

    ``trl.clone_chat_template(model, tokenizer, folder)`` then copies the template, adds the
    tokens it is missing, sets the end-of-turn token as EOS and resizes the embeddings: the same
    call as cloning from a hub model, with a template that has ``{% generation %}`` markers.
    """
    if eos_token not in tokenizer.get_vocab():
        raise ValueError(f"{eos_token!r} is not in the tokenizer's vocabulary: add it first, "
                         "e.g. tokenizer.add_special_tokens({'additional_special_tokens': [...]}).")
    source = copy.deepcopy(tokenizer)
    source.chat_template = chat_template
    source.eos_token = eos_token
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source.save_pretrained(folder)
    return folder


def trained_segments(tokenizer, messages, *, chat_template: str | None = None) -> list[tuple[str, bool]]:
    """The rendered conversation cut into ``(text, trained)`` pieces, from the tokenizer's
    assistant mask (what ``assistant_only_loss=True`` trains on); adjacent pieces are merged."""
    out = tokenizer.apply_chat_template(messages, chat_template=chat_template, tokenize=True,
                                        return_dict=True, return_assistant_tokens_mask=True)
    pieces, ids, flag = [], [], None
    for token_id, mask in zip(out["input_ids"], out["assistant_masks"]):
        if ids and bool(mask) != flag:
            pieces.append((tokenizer.decode(ids), flag))
            ids = []
        flag = bool(mask)
        ids.append(token_id)
    if ids:
        pieces.append((tokenizer.decode(ids), flag))
    return merge_segments(pieces)


def merge_segments(pieces) -> list[tuple[str, bool]]:
    """Join adjacent pieces with the same flag and drop empty ones, so two cuttings compare."""
    merged: list[tuple[str, bool]] = []
    for text, flag in pieces:
        if not text:
            continue
        if merged and merged[-1][1] == bool(flag):
            merged[-1] = (merged[-1][0] + text, bool(flag))
        else:
            merged.append((text, bool(flag)))
    return merged


# --------------------------------------------------------------------------- data
def validate_conversation(messages) -> None:
    """Raise a ValueError saying what to fix when ``messages`` is not a usable training chat."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("A conversation is a non-empty list of {'role': ..., 'content': ...} dicts.")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"Message {i} must be a dict with 'role' and 'content', got {message!r:.80}.")
        if message["role"] not in ROLES:
            raise ValueError(f"Message {i} has role {message['role']!r}; use one of {', '.join(ROLES)}.")
        if not isinstance(message["content"], str) or not message["content"].strip():
            raise ValueError(f"Message {i} ({message['role']}) has empty content: write some text.")
        if message["role"] == "system" and i != 0:
            raise ValueError(f"Message {i} is a system message: put the system message first.")
    if messages[-1]["role"] != "assistant":
        raise ValueError("A training conversation must end with an assistant message "
                         f"(this one ends with {messages[-1]['role']!r}).")


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _clean_messages(messages) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def load_conversations(n: int | None = None, *, source: str = "auto", dataset_id: str = HUB_CONVERSATIONS[0],
                       config: str | None = HUB_CONVERSATIONS[1], split: str = "train", quiet: bool = False):
    """Instruction conversations as a ``datasets.Dataset`` with columns ``messages`` and ``source``.

    ``source="hub"`` loads ``dataset_id`` (a smoltalk-style set with a ``messages`` column);
    ``source="local"`` the conversations written for this project; ``"auto"`` the hub in full
    mode when it answers, else the local ones. ``n`` keeps the first n rows.
    """
    from datasets import Dataset, load_dataset

    def local():
        rows = _read_jsonl(CONVERSATIONS_FILE)
        for row in rows:
            validate_conversation(row["messages"])
        return Dataset.from_list([{"messages": _clean_messages(r["messages"]), "source": r["source"]} for r in rows])

    def from_hub():
        data = load_dataset(dataset_id, config, split=split)
        if "messages" not in data.column_names:
            raise ValueError(f"{dataset_id} has no 'messages' column (columns: {data.column_names}); "
                             "pick a conversational data set such as HuggingFaceTB/smoltalk.")
        tag = f"{dataset_id}:{config}" if config else dataset_id
        return data.map(lambda row: {"messages": _clean_messages(row["messages"]),
                                     "source": row.get("source") or tag},
                        remove_columns=data.column_names)

    data = hub.hub_or_local(source, dataset_id, from_hub, local, quiet=quiet)
    if n is not None:
        data = data.select(range(min(n, len(data))))
    return data


def _as_turns(value, role: str) -> list[dict]:
    return [{"role": role, "content": value}] if isinstance(value, str) else _clean_messages(value)


def load_preferences(n: int | None = None, *, source: str = "auto", dataset_id: str = HUB_PREFERENCES[0],
                     split: str = HUB_PREFERENCES[1], max_chars: int | None = None, quiet: bool = False):
    """Preference pairs as a ``datasets.Dataset`` with conversational columns ``prompt``, ``chosen``,
    ``rejected`` (what ``trl.DPOTrainer`` takes). ``source`` as in ``load_conversations``.

    Hub sets that store whole conversations in ``chosen``/``rejected`` (ultrafeedback_binarized)
    are split into the shared prompt and the two final answers. ``max_chars`` drops pairs whose
    prompt plus longer answer is longer, which keeps a class-period run short.
    """
    from datasets import Dataset, load_dataset

    def from_hub():
        rows = load_dataset(dataset_id, split=split)
        if not {"chosen", "rejected"} <= set(rows.column_names):
            raise ValueError(f"{dataset_id} needs 'chosen' and 'rejected' columns (it has {rows.column_names}).")
        if n is not None and max_chars is None:
            rows = rows.select(range(min(n, len(rows))))
        return rows

    rows = hub.hub_or_local(source, dataset_id, from_hub, lambda: _read_jsonl(PREFERENCES_FILE), quiet=quiet)
    out = []
    for row in rows:
        chosen, rejected = row["chosen"], row["rejected"]
        if isinstance(chosen, list) and len(chosen) > 1:  # whole conversations: split off the prompt
            prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
        else:
            prompt = row["prompt"]
        pair = {"prompt": _as_turns(prompt, "user"), "chosen": _as_turns(chosen, "assistant"),
                "rejected": _as_turns(rejected, "assistant")}
        if max_chars is not None:
            size = sum(len(m["content"]) for m in pair["prompt"]) + max(
                len(pair["chosen"][0]["content"]), len(pair["rejected"][0]["content"]))
            if size > max_chars:
                continue
        out.append(pair)
        if n is not None and len(out) >= n:
            break
    return Dataset.from_list(out)


# --------------------------------------------------------------------------- evaluation
# Held-out prompts: none of them is in the project's offline data (tests/test_instruct.py checks it);
# the hub data sets of full mode are not checked.
# "answers": acceptable answers (any one, case-insensitive); "format": the requested format.
EVAL_PROMPTS: list[dict] = [
    {"prompt": "What is the capital of France?", "answers": ["Paris"], "format": None},
    {"prompt": "Name the largest planet in our solar system. Answer with one word.",
     "answers": ["Jupiter"], "format": "one_word"},
    {"prompt": "List three primary colors as a bulleted list.", "answers": ["red", "blue", "yellow"],
     "format": "bullets:3"},
    {"prompt": "How many legs does a spider have? Reply with just the number.",
     "answers": ["8", "eight"], "format": "one_word"},
    {"prompt": 'Give me a JSON object with keys "name" and "age" for a person called Ana who is 30.',
     "answers": ["Ana"], "format": "json"},
    {"prompt": "Write the word welcome in capital letters only.", "answers": ["welcome"],
     "format": "uppercase"},
    {"prompt": "In at most ten words, what do bees make?", "answers": ["honey"], "format": "max_words:10"},
    {"prompt": "What is 12 plus 5?", "answers": ["17", "seventeen"], "format": None},
]

_WORD = re.compile(r"[A-Za-z0-9]+(?:['’-][A-Za-z0-9]+)*")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def answer_words(text: str) -> int:
    """The length of an answer in words (as ``words`` counts them: punctuation and markup aside)."""
    return len(words(text))


def mentions_answer(text: str, answers) -> bool:
    """True when ``text`` contains one of ``answers`` as a whole word (case-insensitive)."""
    return any(re.search(rf"(?<![A-Za-z0-9]){re.escape(a)}(?![A-Za-z0-9])", text, re.IGNORECASE)
               for a in answers)


def follows_format(text: str, fmt: str | None) -> bool:
    """Does ``text`` keep the requested format?

    ``one_word``: a single word (punctuation aside); ``bullets:N``: exactly N non-empty lines,
    each a bullet (``-``, ``*``, ``•`` or ``1.``); ``json``: the whole answer parses as a JSON object;
    ``uppercase``: has letters and none is lower-case; ``max_words:N``: 1 to N words; ``None``: True.
    """
    if fmt is None:
        return True
    kind, _, arg = fmt.partition(":")
    text = text.strip()
    if kind == "one_word":
        return len(words(text)) == 1
    if kind == "bullets":
        lines = [line for line in text.splitlines() if line.strip()]
        return len(lines) == int(arg) and all(_BULLET.match(line) for line in lines)
    if kind == "json":
        try:
            return isinstance(json.loads(text), dict)
        except ValueError:
            return False
    if kind == "uppercase":
        return any(c.isalpha() for c in text) and not any(c.islower() for c in text)
    if kind == "max_words":
        return 1 <= len(words(text)) <= int(arg)
    raise ValueError(f"Unknown format {fmt!r}: use one_word, bullets:N, json, uppercase, max_words:N or None.")


def generate_answers(model, tokenizer, prompts, *, render="chat", max_new_tokens: int = 48,
                     batch_size: int = 8) -> list[dict]:
    """Greedy answers to ``prompts``: a list of ``{"prompt", "input", "text", "stopped"}``.

    ``render``: ``"chat"`` (the tokenizer's chat template with the generation prompt), ``"raw"``
    (the prompt text as is: a base model just continues it) or a function ``prompt -> text``.
    ``stopped`` is True when the model ended its answer with a stop token within the budget.
    """
    from .models import generate_batch

    if render == "chat":
        if tokenizer.chat_template is None:
            raise ValueError("This tokenizer has no chat template: give it one first "
                             "(trl.clone_chat_template), or use render='raw'.")
        inputs = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                add_generation_prompt=True) for p in prompts]
    elif render == "raw":
        inputs = list(prompts)
    elif callable(render):
        inputs = [render(p) for p in prompts]
    else:
        raise ValueError(f"render must be 'chat', 'raw' or a function, got {render!r}.")
    answers = generate_batch(model, tokenizer, inputs, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [{"prompt": prompt, "input": text_in, **answer} for prompt, text_in, answer in zip(prompts, inputs, answers)]


def score_table(results_by_stage: dict, specs, check_fn):
    """One row per stage: the share of prompts passing each check, the mean answer length in
    words (``answer_words``; preference tuning is known to change it), and the score.

    ``check_fn(text, stopped, spec) -> dict`` returns the checks that apply to a prompt, e.g.
    ``{"answers": True, "stops": False, "format": True}``. A prompt's score is the fraction of its
    checks passed; the stage's score is the mean over prompts, in percent.
    """
    import pandas as pd

    rows = {}
    for stage, results in results_by_stage.items():
        if len(results) != len(specs):
            raise ValueError(f"Stage {stage!r} has {len(results)} answers for {len(specs)} prompts.")
        per_check: dict[str, list[bool]] = {}
        scores, lengths = [], []
        for result, spec in zip(results, specs):
            checks = check_fn(result["text"], result["stopped"], spec)
            if not checks:
                raise ValueError("check_fn returned no checks: it must return at least 'stops'.")
            for name, ok in checks.items():
                per_check.setdefault(name, []).append(bool(ok))
            scores.append(sum(map(bool, checks.values())) / len(checks))
            lengths.append(answer_words(result["text"]))
        row = {f"{name} %": 100 * sum(v) / len(v) for name, v in per_check.items()}
        row["words"] = sum(lengths) / len(lengths)
        row["score"] = 100 * sum(scores) / len(scores)
        rows[stage] = row
    return pd.DataFrame.from_dict(rows, orient="index").round(1)


def side_by_side(results_by_stage: dict, *, width: int = 70):
    """A table with one row per prompt and one column per stage (answers shortened to ``width``)."""
    import pandas as pd

    def short(r):
        text = " ".join(r["text"].split()) or "(empty)"
        text = text if len(text) <= width else text[:width - 1] + "…"
        return text + ("" if r["stopped"] else " [no stop]")

    stages = list(results_by_stage)
    prompts = [r["prompt"] for r in results_by_stage[stages[0]]]
    table = {stage: [short(r) for r in results_by_stage[stage]] for stage in stages}
    return pd.DataFrame(table, index=prompts)


def plot_losses(log_history, *, ax=None, label: str = "train loss", key: str = "loss"):
    """Plot ``key`` against the step from a trainer's ``state.log_history``; returns the axes.

    ``trainer.train()`` starts a fresh log, so an evaluation run before training is not in it."""
    import matplotlib.pyplot as plt

    points = [(h["step"], h[key]) for h in log_history if key in h]
    if not points:
        raise ValueError(f"No {key!r} in the log history: set logging_steps in the config.")
    if ax is None:  # a new figure; when drawing onto ``ax`` its labels are kept
        _, ax = plt.subplots(figsize=(6, 3.5))
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    steps, values = zip(*points)
    ax.plot(steps, values, marker="o", label=label)
    ax.legend()
    return ax
