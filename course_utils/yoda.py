"""Yoda-speak data, the SFT recipe and the chrF evaluation of notebook 03 (reused by 06 and 07).

- ``load_yoda(split=None)``: the hub data set ``dvgodoy/yoda_sentences`` (720 rows) in full mode
  when the hub answers, otherwise the 120 pairs written for this project
  (``course_utils/data/yoda_sentences.jsonl``); the same columns either way:
  ``sentence``, ``translation``, ``translation_extra``.
- ``split_yoda(ds)``: a deterministic train/test split.
- ``yoda_messages(row, system_prompt)``: a row as a conversational prompt/completion example.
- ``yoda_lora_config(...)`` / ``yoda_sft_config(...)``: the LoRA and SFT settings notebook 03 uses.
- ``translate(model, tok, sentences)`` and ``evaluate_chrf(model, tok, rows)``: greedy
  translations and their corpus chrF (sacrebleu) against the references.
- ``chrf`` and ``bleu``: corpus scores (sacrebleu's defaults); ``copy_baseline(sentences,
  references)``: what "translating" by copying the English input unchanged scores, the floor a
  model must beat (chrF is high for it, since the copy has every word; BLEU is low, since the
  copy keeps them in English order).
"""
from __future__ import annotations

import json
from pathlib import Path

from .mode import is_reduced, trainer_settings
from . import hub
from .models import generate_batch

YODA_HUB_ID = "dvgodoy/yoda_sentences"
YODA_COLUMNS = ("sentence", "translation", "translation_extra")
LOCAL_YODA_FILE = Path(__file__).parent / "data" / "yoda_sentences.jsonl"
SPLITS = ("train", "test")
DEFAULT_TEST_SIZE = 0.1
DEFAULT_SEED = 42

# Short on purpose: it is repeated in every training example.
YODA_SYSTEM_PROMPT = "You are Yoda. Rewrite the user's sentence the way Yoda speaks."


# --------------------------------------------------------------------------------------- data
def load_local_yoda():
    """The English -> Yoda-speak pairs written for this project, as a ``datasets.Dataset``."""
    from datasets import Dataset

    rows = []
    with open(LOCAL_YODA_FILE, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                rows.append({c: row[c] for c in YODA_COLUMNS})
    return Dataset.from_list(rows)


def load_hub_yoda():
    """The hub data set ``dvgodoy/yoda_sentences`` (needs the hub), with the columns we use."""
    from datasets import load_dataset

    ds = load_dataset(YODA_HUB_ID, split="train")
    return ds.select_columns(list(YODA_COLUMNS))


def split_yoda(ds, *, test_size: float | int = DEFAULT_TEST_SIZE, seed: int = DEFAULT_SEED):
    """A deterministic ``DatasetDict`` with ``train`` and ``test``: same data, same seed, same rows."""
    return ds.train_test_split(test_size=test_size, seed=seed, shuffle=True)


def load_yoda(split: str | None = None, *, source: str = "auto",
              test_size: float | int = DEFAULT_TEST_SIZE, seed: int = DEFAULT_SEED, quiet: bool = False):
    """English sentences and their Yoda-speak: a ``datasets.Dataset`` with the columns
    ``sentence``, ``translation`` and ``translation_extra``.

    ``split``: ``None`` for every row, ``"train"`` or ``"test"`` for one side of
    ``split_yoda(..., test_size, seed)``. ``source``: ``"auto"`` (the hub in full mode when it
    answers, else the local pairs), ``"hub"`` or ``"local"``.
    """
    if split not in (None, *SPLITS):
        raise ValueError(f"split must be None, 'train' or 'test', not {split!r}.")
    ds = hub.hub_or_local(source, YODA_HUB_ID, load_hub_yoda, load_local_yoda, quiet=quiet)
    if split is None:
        return ds
    return split_yoda(ds, test_size=test_size, seed=seed)[split]


# ------------------------------------------------------------------------------------ prompts
def yoda_messages(row: dict, system_prompt: str | None = YODA_SYSTEM_PROMPT, *,
                  target: str = "translation") -> dict:
    """A row as a conversational prompt/completion example for TRL's ``SFTTrainer``:
    ``{"prompt": [system?, user], "completion": [assistant]}``.

    ``target`` picks the column the assistant answers with (``translation`` or
    ``translation_extra``); ``system_prompt=None`` leaves the system turn out.
    """
    if target not in ("translation", "translation_extra"):
        raise ValueError(f"target must be 'translation' or 'translation_extra', not {target!r}.")
    for key in ("sentence", target):
        if key not in row:
            raise ValueError(f"The row has no {key!r} column; it has {sorted(row)}. "
                             "Pass a row of load_yoda().")
        if not isinstance(row[key], str) or not row[key].strip():
            raise ValueError(f"The row's {key!r} must be a non-empty string, got {row[key]!r}.")
    prompt = [{"role": "system", "content": system_prompt}] if system_prompt else []
    prompt.append({"role": "user", "content": row["sentence"]})
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": row[target]}]}


def to_conversations(ds, system_prompt: str | None = YODA_SYSTEM_PROMPT, *, target: str = "translation"):
    """``yoda_messages`` over a data set; only the ``prompt`` and ``completion`` columns remain."""
    return ds.map(lambda row: yoda_messages(row, system_prompt, target=target),
                  remove_columns=ds.column_names)


# ------------------------------------------------------------------------------------- recipe
def yoda_lora_config(r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.05,
                     target_modules="all-linear", **overrides):
    """The LoRA adapter of notebook 03: every linear layer of the attention and MLP blocks."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                      target_modules=target_modules, task_type="CAUSAL_LM", **overrides)


def yoda_sft_config(output_dir, **overrides):
    """The ``SFTConfig`` of notebook 03, sized for a Colab T4 (fp16, 15 GB), shrunk in reduced mode.

    LoRA on a small model with ~650 short pairs: batch 16, no accumulation, a LoRA-sized
    learning rate (2e-4), 3 epochs, ``max_length=128`` (longer than any example; batches are
    padded only to their longest). Any field can be overridden.
    """
    from trl import SFTConfig

    kwargs = dict(
        output_dir=str(output_dir),
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0.05 if not is_reduced() else 0,
        per_device_train_batch_size=16,
        gradient_accumulation_steps=1,
        num_train_epochs=3,
        max_length=128,
        completion_only_loss=True,
        logging_steps=10,
        seed=DEFAULT_SEED,
        **trainer_settings(),
    )
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


# --------------------------------------------------------------------------------- evaluation
def translate(model, tok, sentences, system_prompt: str | None = YODA_SYSTEM_PROMPT, *,
              max_new_tokens: int = 48, batch_size: int = 16) -> list[str]:
    """Greedy translations of ``sentences`` (only the newly generated text, stripped)."""
    if isinstance(sentences, str):
        raise ValueError("Pass a list of sentences, e.g. [sentence], not a single string.")
    prompts = [tok.apply_chat_template(yoda_messages({"sentence": s, "translation": "-"}, system_prompt)["prompt"],
                                       tokenize=False, add_generation_prompt=True) for s in sentences]
    return [r["text"].strip()
            for r in generate_batch(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)]


def _pairs(predictions, references) -> tuple[list[str], list[str]]:
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references: "
                         "pass one prediction per reference.")
    if not references:
        raise ValueError("No references to score against: pass at least one row.")
    return predictions, references


def chrf(predictions, references) -> float:
    """Corpus chrF (sacrebleu, default settings: character 1- to 6-grams with the spaces removed,
    beta 2), from 0 to 100. Most character n-grams lie inside a word, so chrF barely sees word
    order: only the n-grams that straddle two words change when the words move."""
    import sacrebleu

    predictions, references = _pairs(predictions, references)
    return float(sacrebleu.corpus_chrf(predictions, [references]).score)


def bleu(predictions, references) -> float:
    """Corpus BLEU (sacrebleu, default settings: word 1- to 4-grams, brevity penalty, the 13a
    tokenizer), from 0 to 100. Its 3- and 4-grams only match where the words come in the
    reference's order, so it is the order-sensitive score of the course. Use it on a corpus: a
    short sentence often has no 4-gram in common with its reference, and its sentence BLEU then
    rests on smoothing."""
    import sacrebleu

    predictions, references = _pairs(predictions, references)
    return float(sacrebleu.corpus_bleu(predictions, [references]).score)


def translation_scores(predictions, references) -> dict:
    """``{"chrf", "bleu", "exact_match"}`` of ``predictions`` against ``references``."""
    predictions, references = _pairs(predictions, references)
    return {"chrf": chrf(predictions, references), "bleu": bleu(predictions, references),
            "exact_match": sum(p == r for p, r in zip(predictions, references)) / len(references)}


def copy_baseline(sentences, references) -> dict:
    """The scores of the copy-the-input baseline: each English sentence, unchanged, taken as its
    own Yoda-speak (``translation_scores(sentences, references)``). A model that does not beat it
    has not learnt to reorder."""
    return translation_scores(sentences, references)


def evaluate_chrf(model, tok, rows, system_prompt: str | None = YODA_SYSTEM_PROMPT, *,
                  target: str = "translation", max_new_tokens: int = 48, batch_size: int = 16) -> dict:
    """Translate ``rows`` (a data set or a list of dicts with ``sentence`` and ``target``)
    greedily and score them: ``{"chrf": float, "predictions": [...], "references": [...],
    "sentences": [...]}``."""
    sentences = [r["sentence"] for r in rows]
    references = [r[target] for r in rows]
    predictions = translate(model, tok, sentences, system_prompt,
                            max_new_tokens=max_new_tokens, batch_size=batch_size)
    return {"chrf": chrf(predictions, references), "predictions": predictions,
            "references": references, "sentences": sentences}
