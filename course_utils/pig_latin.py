"""Pig Latin by rule, the project's English sentences, the translation pairs in three formats,
and the metrics of notebook 02.

The rules ``pig_latin`` follows (each choice is deliberate, and tested in tests/test_pig_latin.py):

- A *word* is a run of letters and digits, possibly with apostrophes inside it (``don't``).
  Everything else (spaces, punctuation, hyphens, quotes, underscores) stays exactly where it is;
  so ``well-known`` is two words, ``ellway-ownknay``.
- Only words made of ASCII letters (and inner apostrophes) are translated. A word with a digit
  (``R2D2``, ``42``) or a non-ASCII letter (``café``) is left as it is.
- Vowels are a, e, i, o, u. ``y`` is a consonant at the start of a word (``yes`` -> ``esyay``)
  and a vowel anywhere else (``rhythm`` -> ``ythmrhay``, ``my`` -> ``ymay``). A ``u`` right after
  a ``q`` belongs to the consonant cluster (``queen`` -> ``eenquay``, ``square`` -> ``aresquay``).
- A word starting with a vowel gets ``way`` (``eat`` -> ``eatway``). Otherwise the consonant
  cluster before the first vowel moves to the end and ``ay`` follows (``pig`` -> ``igpay``,
  ``string`` -> ``ingstray``). A word without any vowel gets ``ay`` (``hmm`` -> ``hmmay``).
- An apostrophe moves with the cluster it sits in (``don't`` -> ``on'tday``).
- Capitals: a capitalised word stays capitalised (``Pig`` -> ``Igpay``, ``I`` -> ``Iway``); a word
  in capitals stays in capitals (``NASA`` -> ``ASANAY``); any other mix keeps each letter's case
  as it moves, with a lower-case suffix (``McDonald`` -> ``onaldMcDay``, ``NASA's`` -> ``ASA'sNay``).

``english_candidates`` inverts one word. The rules lose information: ``igpay`` comes from ``pig``
and from ``gpi``, ``etway`` from ``et``, ``wet`` and ``twe``, so it returns every word that
translates to it. ``from_pig_latin`` inverts a sentence, picking for each word the one candidate
found in a vocabulary (e.g. the words of ``load_sentences()``).
"""
from __future__ import annotations

import re
from pathlib import Path

VOWELS = frozenset("aeiou")
APOSTROPHES = "'\u2019"
# letters/digits (any script), optionally joined by single inner apostrophes
WORD_RE = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
_ASCII_WORD_RE = re.compile(r"[A-Za-z]+(?:['\u2019][A-Za-z]+)*\Z")
SENTENCES_FILE = Path(__file__).parent / "data" / "english_sentences.txt"


# ---------------------------------------------------------------------------------- the rule
def _split_point(lower: str) -> int | None:
    """Index of the first vowel sound of a lower-case word, or None when it has no vowel."""
    for i, ch in enumerate(lower):
        if ch in VOWELS:
            if ch == "u" and i > 0 and lower[i - 1] == "q":
                continue  # "qu" moves together
            return i
        if ch == "y" and i > 0:
            return i
    return None


def _case_pattern(word: str) -> str:
    letters = [c for c in word if c not in APOSTROPHES]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return "upper"
    if letters[0].isupper() and all(c.islower() for c in letters[1:]):
        return "title"
    if all(c.islower() for c in letters):
        return "lower"
    return "mixed"


def _apply_case(text: str, pattern: str) -> str:
    if pattern == "upper":
        return text.upper()
    if pattern == "title":
        return text[:1].upper() + text[1:].lower()
    return text


def is_translatable(word: str) -> bool:
    """True for a word the rules translate: ASCII letters, maybe with inner apostrophes."""
    return bool(_ASCII_WORD_RE.match(word))


def pig_latin_word(word: str) -> str:
    """One word in Pig Latin (see the module's rules); other words come back unchanged."""
    if not isinstance(word, str):
        raise ValueError(f"pig_latin_word needs a string, got {type(word).__name__}.")
    if not is_translatable(word):
        return word
    pattern = _case_pattern(word)
    # Title and capitals: translate in lower case, then restore the pattern.
    base = word if pattern == "mixed" else word.lower()
    i = _split_point(base.lower())
    if i == 0:
        out = base + "way"
    elif i is None:
        out = base + "ay"
    else:
        out = base[i:] + base[:i] + "ay"
    return _apply_case(out, pattern)


def pig_latin(sentence: str) -> str:
    """``sentence`` in Pig Latin, word by word; everything that is not a word stays in place.

    >>> pig_latin("Pigs eat string, don't they?")
    "Igspay eatway ingstray, on'tday eythay?"
    """
    if not isinstance(sentence, str):
        raise ValueError(f"pig_latin needs a string (a sentence), got {type(sentence).__name__}.")
    return WORD_RE.sub(lambda m: pig_latin_word(m.group(0)), sentence)


def words(text: str) -> list[str]:
    """The words of ``text``, as ``pig_latin`` sees them."""
    return WORD_RE.findall(text)


def skeleton(text: str) -> list[str]:
    """Everything between the words (punctuation, spaces), in order: Pig Latin keeps it."""
    return WORD_RE.split(text)


# ------------------------------------------------------------------------------ the inverse
def english_candidates(word: str) -> list[str]:
    """Every word whose Pig Latin is ``word`` (sorted); ``[]`` when none is.

    ``english_candidates("igpay") == ["gpi", "pig"]``; ``english_candidates("etway") == ["et", "twe", "wet"]``.
    """
    if not isinstance(word, str):
        raise ValueError(f"english_candidates needs a string, got {type(word).__name__}.")
    if not is_translatable(word):
        return [word] if pig_latin_word(word) == word else []
    pattern = _case_pattern(word)
    stems = {word[:-2]} if word.lower().endswith("ay") and len(word) > 2 else set()
    if word.lower().endswith("way") and len(word) > 3:
        stems.add(word[:-3])  # vowel-initial word + "way"
    found = set()
    for stem in stems:
        bases = {stem}
        for k in range(1, len(stem)):  # undo a cluster of k characters moved to the end
            bases.add(stem[-k:] + stem[:-k])
        for base in bases:
            for cand in {base, base.lower(), _apply_case(base, pattern),
                         _apply_case(base.lower(), "title"), base.upper()}:
                if is_translatable(cand) and pig_latin_word(cand) == word:
                    found.add(cand)
    return sorted(found)


def vocabulary(sentences=None) -> set[str]:
    """The lower-case words of ``sentences`` (default: the project's English sentences)."""
    sentences = load_sentences() if sentences is None else sentences
    return {w.lower() for s in sentences for w in words(s)}


def from_pig_latin(sentence: str, vocab=None, *, strict: bool = True) -> str:
    """Pig Latin back to English, word by word.

    A word's candidates (``english_candidates``) are kept when their lower case is in ``vocab``
    (any set of words; ``None`` keeps them all), and those cased like the word (lower, title,
    capitals) are preferred. Exactly one must remain: otherwise
    ``strict=True`` raises ``ValueError`` and ``strict=False`` takes the first one, or leaves
    the word as it is when none remains.
    """
    if not isinstance(sentence, str):
        raise ValueError(f"from_pig_latin needs a string, got {type(sentence).__name__}.")
    vocab = None if vocab is None else {w.lower() for w in vocab}

    def undo(m):
        cands = english_candidates(m.group(0))
        if is_translatable(m.group(0)):
            if vocab is not None:
                cands = [c for c in cands if c.lower() in vocab]
            # "Ethay" comes from "The" and from "thE": prefer the candidate cased like the word
            same_case = [c for c in cands if _case_pattern(c) == _case_pattern(m.group(0))]
            cands = same_case or cands
        if len(cands) == 1:
            return cands[0]
        if strict:
            raise ValueError(f"{m.group(0)!r} has {len(cands)} English candidates {cands}: pass a "
                             "vocabulary that picks one, or strict=False to take the first.")
        return cands[0] if cands else m.group(0)

    return WORD_RE.sub(undo, sentence)


# -------------------------------------------------------------------------------------- data
def load_sentences() -> list[str]:
    """The English sentences written for this project (one per line, ``#`` lines are comments)."""
    with open(SENTENCES_FILE, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip() and not line.startswith("#")]


def pig_latin_pairs(sentences=None, *, test_size: int | float = 0.1, seed: int = 42, split=None):
    """A ``datasets.Dataset`` with columns ``english`` and ``pig_latin`` (made by the rule).

    ``split``: ``None`` (every row), ``"train"`` or ``"test"`` (deterministic, by ``seed``).
    """
    from datasets import Dataset

    if split not in (None, "train", "test"):
        raise ValueError(f"split must be None, 'train' or 'test', not {split!r}.")
    sentences = load_sentences() if sentences is None else list(sentences)
    if not sentences:
        raise ValueError("No sentences: pass a non-empty list of English sentences.")
    ds = Dataset.from_dict({"english": sentences, "pig_latin": [pig_latin(s) for s in sentences]})
    if split is None:
        return ds
    return ds.train_test_split(test_size=test_size, seed=seed)[split]


PROMPT_TEMPLATE = "English: {english}\nPig Latin:"
INSTRUCTION = "Translate this sentence into Pig Latin: {english}"


def _check_row(row):
    for key in ("english", "pig_latin"):
        if key not in row:
            raise ValueError(f"The row has no {key!r} column (it has {sorted(row)}): "
                             "pass a row of pig_latin_pairs().")


def to_text(row: dict) -> dict:
    """Plain text (language modelling): ``{"text": "English: ...\\nPig Latin: ..."}``."""
    _check_row(row)
    return {"text": PROMPT_TEMPLATE.format(english=row["english"]) + " " + row["pig_latin"]}


def to_prompt_completion(row: dict) -> dict:
    """Prompt/completion: the completion starts with the space after ``Pig Latin:``."""
    _check_row(row)
    return {"prompt": PROMPT_TEMPLATE.format(english=row["english"]),
            "completion": " " + row["pig_latin"]}


def to_messages(row: dict) -> dict:
    """Conversational: ``{"messages": [user, assistant]}``."""
    _check_row(row)
    return {"messages": [{"role": "user", "content": INSTRUCTION.format(english=row["english"])},
                         {"role": "assistant", "content": row["pig_latin"]}]}


FORMATS = {"text": to_text, "prompt_completion": to_prompt_completion, "messages": to_messages}


def to_format(ds, fmt: str):
    """``ds`` (columns ``english``, ``pig_latin``) in one of ``FORMATS``: the old columns go."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown format {fmt!r}: choose one of {sorted(FORMATS)}.")
    return ds.map(FORMATS[fmt], remove_columns=ds.column_names)


# ----------------------------------------------------------------------------------- metrics
def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions, each costing 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def char_accuracy(prediction: str, reference: str) -> float:
    """1 - edit distance / length of the longer string: 1.0 for identical, 0.0 for nothing alike."""
    if not prediction and not reference:
        return 1.0
    return 1.0 - edit_distance(prediction, reference) / max(len(prediction), len(reference))


def translation_scores(predictions, references) -> dict:
    """Mean exact match and mean character accuracy, both from 0 to 1 (stripped strings)."""
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    if not references:
        raise ValueError("Nothing to score: pass at least one prediction.")
    pairs = [(p.strip(), r.strip()) for p, r in zip(predictions, references)]
    return {"exact_match": sum(p == r for p, r in pairs) / len(pairs),
            "char_accuracy": sum(char_accuracy(p, r) for p, r in pairs) / len(pairs)}


# -------------------------------------------------------------------------------- evaluation
def generate_pig_latin(model, tokenizer, sentences, *, max_new_tokens: int = 48,
                       batch_size: int = 16) -> list[dict]:
    """Greedy answers to ``PROMPT_TEMPLATE`` for each sentence.

    Each answer is ``{"raw": all generated text, "translation": its first line, stripped,
    "stopped": whether the model produced its end-of-sequence token}``.
    """
    from .models import generate_batch

    if isinstance(sentences, str):
        raise ValueError("Pass a list of sentences, e.g. [sentence], not a single string.")
    prompts = [PROMPT_TEMPLATE.format(english=s) for s in sentences]
    return [{"raw": r["text"], "translation": r["text"].strip().split("\n")[0].strip(), "stopped": r["stopped"]}
            for r in generate_batch(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)]


def eos_probability(model, tokenizer, rows) -> float:
    """Mean probability the model gives to its end-of-sequence token right after the correct
    translation (prompt + `` `` + rule's answer): how ready it is to stop where it should."""
    import torch

    texts = [PROMPT_TEMPLATE.format(english=r["english"]) + " " + r["pig_latin"] for r in rows]
    if not texts:
        raise ValueError("No rows: pass at least one row with 'english' and 'pig_latin'.")
    was_training, old_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "right"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(next(model.parameters()).device)
        with torch.no_grad():
            logits = model(**enc).logits
        last = enc["attention_mask"].sum(dim=1) - 1
        probs = torch.softmax(logits[torch.arange(len(texts)), last].float(), dim=-1)
        return float(probs[:, tokenizer.eos_token_id].mean())
    finally:
        tokenizer.padding_side = old_side
        if was_training:
            model.train()


def evaluate_pig_latin(model, tokenizer, rows, **generate_kwargs) -> dict:
    """Exact match, character accuracy (against ``pig_latin_word``'s rule), the share of answers
    that stopped and ``eos_probability``, for rows with ``english`` and ``pig_latin``; plus the
    answers."""
    rows = list(rows)
    english = [r["english"] for r in rows]
    answers = generate_pig_latin(model, tokenizer, english, **generate_kwargs)
    scores = translation_scores([a["translation"] for a in answers], [r["pig_latin"] for r in rows])
    scores["stop_rate"] = sum(a["stopped"] for a in answers) / len(answers)
    scores["eos_probability"] = eos_probability(model, tokenizer, rows)
    scores["answers"] = answers
    return scores
