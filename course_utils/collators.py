"""Collators and labels (notebook 02): what the model really sees.

- ``completion_only_labels(tok, prompt, completion)``: the prompt masked with -100, the
  completion (and its end-of-sequence token) kept, as TRL's ``completion_only_loss`` does.
- ``input_ids_only(collator)``: feed a transformers collator only ``input_ids`` (TRL's prepared
  data sets also carry ``labels``, which a plain collator can't pad).
- ``eos_label_counts(batch, eos_id)``: how many end-of-sequence tokens are trained on, and how
  many are masked: the pad == eos trap in one number.
- ``batch_stats(batch)``: rows, tokens, padding, trained tokens and attention cost of a collated batch.
- ``layouts(tok, examples, max_length)``: the same examples padded, padding-free and packed.
- ``train_only_last_layers(model, n)``: freeze everything but the last ``n`` blocks (reduced
  mode trains on a CPU in seconds that way).

Colour a sequence by its mask with ``course_utils.chat.show_tokens(tok, input_ids=..., labels=...)``
and decode what the loss sees with ``course_utils.chat.trained_text``.
"""
from __future__ import annotations

IGNORE_INDEX = -100


def _ids(tokenizer, text: str) -> list[int]:
    # As TRL does (`trl.data_utils._tokenize`): the tokenizer's own defaults, special tokens
    # included. SmolLM2's adds none; a tokenizer that adds a BOS token (Llama's) puts it first.
    return tokenizer(text)["input_ids"]


def completion_only_labels(tokenizer, prompt: str, completion: str, *, add_eos: bool = True) -> dict:
    """``{"input_ids", "labels"}`` for one prompt/completion pair, with the prompt's labels at -100.

    Like TRL: the sequence is ``prompt + completion`` (+ eos), tokenized in one go with the
    tokenizer's defaults (a BOS token, for a tokenizer that adds one, counts as prompt), and the
    prompt is the part that the prompt's own tokens share with it.
    """
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise ValueError("prompt and completion must both be strings.")
    if not completion:
        raise ValueError("The completion is empty: there would be nothing to train on.")
    eos = tokenizer.eos_token if add_eos else ""
    if add_eos and completion.endswith(eos):
        eos = ""
    prompt_ids = _ids(tokenizer, prompt)
    input_ids = _ids(tokenizer, prompt + completion + eos)
    n = 0
    while n < min(len(prompt_ids), len(input_ids)) and prompt_ids[n] == input_ids[n]:
        n += 1
    return {"input_ids": input_ids, "labels": [IGNORE_INDEX] * n + input_ids[n:]}


def input_ids_only(collator):
    """Wrap ``collator`` so it receives ``{"input_ids": ...}`` only (labels are its job)."""
    def collate(features):
        return collator([{"input_ids": f["input_ids"]} for f in features])

    return collate


def eos_label_counts(batch, eos_token_id: int) -> dict:
    """End-of-sequence tokens in a collated batch that are real (attention 1): trained or masked."""
    ids, labels = batch["input_ids"], batch["labels"]
    real = batch["attention_mask"].bool() if "attention_mask" in batch else ids.new_ones(ids.shape).bool()
    is_eos = (ids == eos_token_id) & real
    trained = int((is_eos & (labels != IGNORE_INDEX)).sum())
    return {"eos_tokens": int(is_eos.sum()), "eos_trained": trained, "eos_masked": int(is_eos.sum()) - trained}


def _example_lengths(batch) -> list[int]:
    """Token count of each example in a collated batch: from the attention mask (padded), or from
    the restarts of ``position_ids`` (padding-free and packed rows, which have no mask)."""
    if "attention_mask" in batch:
        return [int(n) for n in batch["attention_mask"].sum(dim=1)]
    lengths = []
    for row in batch["position_ids"]:
        starts = (row == 0).nonzero().flatten().tolist() + [row.numel()]
        lengths += [b - a for a, b in zip(starts, starts[1:])]
    return lengths


def batch_stats(batch) -> dict:
    """Rows, token slots, padding slots and trained (label != -100) tokens of a collated batch,
    and two attention costs per layer and head, in query-key pairs:

    - ``attention_pairs``: what sdpa and eager attention compute, every row's full square
      (the masked pairs are computed, then dropped);
    - ``example_pairs``: the sum of each example's own square, what FlashAttention's variable-
      length kernel computes for a padding-free or packed row.
    """
    ids = batch["input_ids"]
    if "attention_mask" in batch:
        real = int(batch["attention_mask"].sum())
    else:  # padding-free or packed: every slot is a real token
        real = ids.numel()
    return {"rows": ids.shape[0], "slots": ids.numel(), "padding": ids.numel() - real,
            "trained": int((batch["labels"] != IGNORE_INDEX).sum()),
            "attention_pairs": ids.shape[0] * ids.shape[1] ** 2,
            "example_pairs": sum(n * n for n in _example_lengths(batch))}


def layouts(tokenizer, examples: list[dict], max_length: int) -> dict:
    """Collate tokenized ``examples`` (``input_ids``, ``labels``) three ways with TRL's collator:

    - ``padded``: one row per example, padded to the longest;
    - ``padding_free``: one row, examples end to end, positions restarting at 0 for each;
    - ``packed``: TRL's ``pack_dataset`` (best-fit decreasing, ``"bfd"``: an example longer than
      ``max_length`` is truncated to it) into rows of ``max_length``, then collated padding-free
      as ``SFTTrainer`` does (its collator flattens the batch into one row).
    """
    from datasets import Dataset
    from trl import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    if not examples:
        raise ValueError("Pass at least one tokenized example.")
    rows = [{"input_ids": list(e["input_ids"]), "labels": list(e["labels"])} for e in examples]
    pad_id = tokenizer.pad_token_id
    padded = DataCollatorForLanguageModeling(pad_token_id=pad_id)(rows)
    free = DataCollatorForLanguageModeling(pad_token_id=pad_id, padding_free=True)(rows)
    packed_ds = pack_dataset(Dataset.from_list(rows), max_length, strategy="bfd")
    packed = DataCollatorForLanguageModeling(pad_token_id=pad_id, padding_free=True)(list(packed_ds))
    packed["rows_before_flattening"] = len(packed_ds)
    return {"padded": padded, "padding_free": free, "packed": packed}


def train_only_last_layers(model, n: int) -> int:
    """Freeze every parameter except the last ``n`` transformer blocks and the final norm.

    The backward pass then stops at those blocks, so a step costs little more than a forward
    pass. Returns the number of trainable parameters.
    """
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError("train_only_last_layers expects a decoder with model.model.layers (Llama-like).")
    if not 1 <= n <= len(layers):
        raise ValueError(f"n must be between 1 and {len(layers)} (the model's number of blocks), not {n}.")
    for p in model.parameters():
        p.requires_grad_(False)
    trainable = list(layers[-n:].parameters())
    if getattr(inner, "norm", None) is not None:
        trainable += list(inner.norm.parameters())
    for p in trainable:
        p.requires_grad_(True)
    return sum(p.numel() for p in trainable)


def prepare_like_trl(model, tokenizer, dataset, **config):
    """The data set exactly as ``SFTTrainer`` prepares it (``input_ids`` and ``labels``),
    without training: ``config`` goes to ``SFTConfig`` (e.g. ``completion_only_loss=True``)."""
    import tempfile

    from trl import SFTConfig, SFTTrainer

    from .mode import trainer_settings

    config = {**trainer_settings(), "gradient_checkpointing": False, "max_length": None, **config}
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, **config)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        return trainer.train_dataset
