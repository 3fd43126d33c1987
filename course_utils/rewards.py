"""Learning from rewards (notebook 08): a reward model trained on preference pairs, and GRPO
against a reward you can verify, on Pig Latin words.

Notebook 02 taught the rule (``pig_latin.pig_latin_word``); here every answer the policy samples
is checked exactly against it. The task is one word at a time (``English: string`` ->
``ingstray``): short answers keep sampling cheap enough for a CPU, and a 135M model can get a
useful share of words exactly right, so an exact-match reward is not always zero.

What lives here is what the lesson uses but does not ask the student to write: the word data,
the wrong answers that make preference pairs, the reward model's loading and scoring, a GRPO
batch drawn through TRL's own sampling code, and the training histories. The reward functions,
the group-relative advantages and the clipped loss are the student's exercises.
"""
from __future__ import annotations

import random
import re

from . import pig_latin

PROMPT_TEMPLATE = pig_latin.PROMPT_TEMPLATE  # "English: {english}\nPig Latin:"
GRPO_KEYS = ("reward", "reward_std", "kl", "completions/mean_length", "completions/clipped_ratio",
             "frac_reward_zero_std", "entropy")
REWARD_MODEL_KEYS = ("loss", "accuracy", "margin", "mean_reward")


# ------------------------------------------------------------------------------------- data
def _vocabulary(split: str, seed: int) -> set[str]:
    found = set()
    for row in pig_latin.pig_latin_pairs(split=split, seed=seed):
        found.update(w.lower() for w in pig_latin.words(row["english"]) if pig_latin.is_translatable(w))
    return found


def word_pairs(split: str, *, seed: int = 42):
    """A ``datasets.Dataset`` of single words: columns ``english``, ``pig_latin`` (the rule's
    answer) and ``prompt`` (``PROMPT_TEMPLATE`` filled in).

    ``"train"``: the words of notebook 02's training sentences. ``"test"``: the words of its
    held-out sentences that no training sentence contains, so a held-out score is about words the
    model never saw translated. Lower case, sorted, no duplicates.
    """
    from datasets import Dataset

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}.")
    train = _vocabulary("train", seed)
    chosen = sorted(train if split == "train" else _vocabulary("test", seed) - train)
    return Dataset.from_dict({"english": chosen,
                              "pig_latin": [pig_latin.pig_latin_word(w) for w in chosen],
                              "prompt": [PROMPT_TEMPLATE.format(english=w) for w in chosen]})


def first_line(completion: str) -> str:
    """The answer in a completion: its first line, stripped (what the metrics score)."""
    if not isinstance(completion, str):
        raise TypeError(f"A completion is a string, not {type(completion).__name__}: with a prompt/completion "
                        "data set TRL passes the decoded text.")
    stripped = completion.strip()
    return stripped.split("\n")[0].strip() if stripped else ""


# ---------------------------------------------------------------------- wrong answers (pairs)
def _move_first_letter(word: str) -> str:
    return word[1:] + word[0] + "ay" if len(word) > 1 else word + "ay"


def _vowel_rule_ay(word: str) -> str:
    """A vowel word given ``ay`` instead of ``way``. Other words have no such mistake: their right
    answer comes back, and ``wrong_answers`` leaves it out."""
    right = pig_latin.pig_latin_word(word)
    return right[:-3] + "ay" if right.endswith("way") and word[0].lower() in pig_latin.VOWELS else right


MISTAKES = {
    "english unchanged": lambda w: w,
    "ay appended, nothing moved": lambda w: w + "ay",
    "only the first letter moved": _move_first_letter,
    "vowel word given ay, not way": _vowel_rule_ay,
}


def wrong_answers(word: str) -> dict[str, str]:
    """Plausible wrong translations of ``word`` (one per mistake in ``MISTAKES``) that differ from
    the right one; a mistake that happens to give the right answer for this word is left out."""
    right = pig_latin.pig_latin_word(word)
    return {name: fn(word) for name, fn in MISTAKES.items() if fn(word) != right}


def preference_pairs(rows, *, seed: int = 42):
    """Preference data for TRL's ``RewardTrainer``: ``prompt``, ``chosen`` (the rule's answer),
    ``rejected`` (one of ``wrong_answers``, drawn with ``seed``) and ``mistake`` (its name), one
    pair per row of ``word_pairs``. Completions start with a space, as in notebook 02."""
    from datasets import Dataset

    rng = random.Random(seed)
    out = {"prompt": [], "chosen": [], "rejected": [], "mistake": []}
    for row in rows:
        wrong = wrong_answers(row["english"])
        if not wrong:
            continue
        name = rng.choice(sorted(wrong))
        out["prompt"].append(PROMPT_TEMPLATE.format(english=row["english"]))
        out["chosen"].append(" " + pig_latin.pig_latin_word(row["english"]))
        out["rejected"].append(" " + wrong[name])
        out["mistake"].append(name)
    if not out["prompt"]:
        raise ValueError("No pairs: pass rows with an 'english' column of translatable words.")
    return Dataset.from_dict(out)


# ------------------------------------------------------------------------------ reward model
def load_reward_model(model_id: str, *, dtype=None, quiet: bool = True):
    """``(model, tokenizer)``: ``model_id`` (resolved like ``load_model``, offline fallback
    included) with a fresh one-output score head, ``AutoModelForSequenceClassification`` with
    ``num_labels=1``, as ``RewardTrainer`` builds it from a name. The head is random: seed first."""
    from transformers import AutoModelForSequenceClassification

    from .models import _tokenizer_from, resolve_model_id
    from .mode import pick_device, pick_dtype

    path = resolve_model_id(model_id, quiet=quiet)
    tok = _tokenizer_from(path)
    device = pick_device()
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=dtype or pick_dtype(device)).to(device)
    model.config.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok


def reward_scores(model, tokenizer, prompts, completions, *, batch_size: int = 32) -> list[float]:
    """The scalar reward the model gives each ``prompt + completion`` (read at the last
    non-padding token, as the sequence-classification head does)."""
    import torch

    texts = [p + c for p, c in zip(prompts, completions, strict=True)]
    was_training = model.training
    model.eval()
    scores = []
    try:
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True)
                enc = enc.to(next(model.parameters()).device)
                scores += model(**enc).logits.squeeze(-1).float().tolist()
    finally:
        if was_training:
            model.train()
    return scores


def pairwise_accuracy(model, tokenizer, pairs) -> dict:
    """Share of ``pairs`` whose chosen answer gets the higher reward (ties count as wrong, as
    in TRL's ``accuracy``), and the two lists of rewards."""
    chosen = reward_scores(model, tokenizer, pairs["prompt"], pairs["chosen"])
    rejected = reward_scores(model, tokenizer, pairs["prompt"], pairs["rejected"])
    if not chosen:
        raise ValueError("No pairs to score.")
    return {"accuracy": sum(c > r for c, r in zip(chosen, rejected)) / len(chosen),
            "chosen": chosen, "rejected": rejected}


def reward_batch(trainer, n: int = 8) -> dict:
    """The first ``n`` training pairs, tokenized and collated exactly as ``RewardTrainer`` feeds
    them: ``input_ids`` holds the chosen rows, then the rejected ones."""
    rows = [trainer.train_dataset[i] for i in range(min(n, len(trainer.train_dataset)))]
    batch = trainer.data_collator(rows)
    return {k: v.to(trainer.model.device) if hasattr(v, "to") else v for k, v in batch.items()}


def trl_reward_loss(trainer, batch) -> float:
    """``RewardTrainer.compute_loss`` on ``batch``, without a gradient."""
    import torch

    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, dict(batch)))


def chosen_rejected_rewards(model, batch):
    """The rewards of a collated ``reward_batch``: (chosen, rejected) tensors, one per pair."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return out.logits.squeeze(-1).chunk(2)


# ------------------------------------------------------------------------------------- GRPO
def grpo_batch(trainer, rows) -> dict:
    """One generation batch, sampled and scored by ``GRPOTrainer``'s own code
    (``_generate_and_score_completions``) for ``rows`` (each row repeated ``num_generations``
    times, as the trainer's sampler does), plus what the lesson needs to redo the loss by hand:
    ``completions`` (decoded as the reward functions see them) and ``logps`` (per-token log
    probabilities of the completion tokens under the current policy). With ``beta > 0`` the batch
    holds TRL's ``ref_per_token_logps``: the same under the reference, which for a LoRA policy is
    the model with its adapter switched off."""
    g = trainer.num_generations
    inputs = [dict(row) for row in rows for _ in range(g)]
    if not inputs:
        raise ValueError("Pass at least one row (a dict with 'prompt' and the reward functions' columns).")
    if not hasattr(trainer, "_generate_and_score_completions"):
        raise RuntimeError("This TRL has no GRPOTrainer._generate_and_score_completions: the course pins "
                           "trl==1.16.0 (see requirements.txt).")
    trainer.model.train()
    batch = trainer._generate_and_score_completions(inputs)
    batch["completions"] = trainer.processing_class.batch_decode(batch["completion_ids"], skip_special_tokens=True)
    batch["rows"] = inputs
    batch["logps"] = completion_logps(trainer.model, batch)
    return batch


def completion_logps(model, batch, *, temperature: float = 1.0):
    """Log probability of each completion token (prompt and completion concatenated, logits of
    the position before each completion token, divided by ``temperature`` as TRL does)."""
    import torch

    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    n = batch["completion_ids"].shape[1]
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, -n - 1:-1, :]
    logps = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logps.gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)


def trl_grpo_loss(trainer, batch) -> float:
    """``GRPOTrainer.compute_loss`` on a ``grpo_batch`` (the policy in training mode, as in a
    training step), without a gradient."""
    import torch

    keys = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages",
            "num_items_in_batch", "old_per_token_logps", "ref_per_token_logps")
    inputs = {k: batch[k] for k in keys if k in batch}
    if not hasattr(trainer, "current_gradient_accumulation_steps"):  # set by Trainer.train()
        trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    trainer.model.train()
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, inputs))


def history(log_history, keys=GRPO_KEYS):
    """One row per logged training step of a trainer's ``state.log_history`` with the columns of
    ``keys`` it has (and every ``rewards/<function>/mean``)."""
    import pandas as pd

    rows = []
    for entry in log_history:
        if "step" not in entry or not any(k in entry for k in keys):
            continue
        row = {"step": entry["step"]}
        row.update({k: entry[k] for k in entry if k in keys or re.fullmatch(r"rewards/.+/mean", k)})
        rows.append(row)
    if not rows:
        raise ValueError(f"No logged step has any of {list(keys)}: was logging_steps larger than max_steps?")
    return pd.DataFrame(rows).set_index("step")


def plot_grpo_history(histories: dict, path=None):
    """Reward, KL to the reference and completion length per step, one line per run."""
    import matplotlib.pyplot as plt

    panels = (("reward", "mean reward"), ("kl", "KL to the reference"),
              ("completions/mean_length", "completion length (tokens)"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, (key, title) in zip(axes, panels):
        for name, frame in histories.items():
            if key in frame:
                ax.plot(frame.index, frame[key], marker=".", label=name)
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def sampled_exact_match(model, tokenizer, rows, *, n: int = 8, max_new_tokens: int = 10,
                        temperature: float = 1.0, batch_size: int = 32) -> list[float]:
    """For each row (``prompt``, ``pig_latin``), the share of ``n`` sampled answers that are exactly
    the rule's: how often the model gets the word right when it samples, as GRPO will."""
    import torch

    rows = list(rows)
    was_training, old_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    shares = []
    try:
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            enc = tokenizer([r["prompt"] for r in chunk], return_tensors="pt", padding=True)
            enc = enc.to(next(model.parameters()).device)
            with torch.no_grad():
                out = model.generate(**enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                     num_return_sequences=n, max_new_tokens=max_new_tokens,
                                     pad_token_id=tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for j, row in enumerate(chunk):
                answers = [first_line(t) for t in texts[j * n:(j + 1) * n]]
                shares.append(sum(a == row["pig_latin"] for a in answers) / n)
    finally:
        tokenizer.padding_side = old_side
        if was_training:
            model.train()
    return shares
