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


def chrf(predictions, references) -> float:
    """Corpus chrF (sacrebleu, default settings: character 6-grams, beta 2), from 0 to 100."""
    import sacrebleu

    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references: "
                         "pass one prediction per reference.")
    if not references:
        raise ValueError("No references to score against: pass at least one row.")
    return float(sacrebleu.corpus_chrf(predictions, [references]).score)


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
