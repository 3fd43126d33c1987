"""Preference data, DPO measurements and the SFT starting point of notebook 06.

- ``yoda_preferences(ds, rejected=..., conversational=...)``: prompt / chosen / rejected pairs from
  the Yoda data (``course_utils.yoda.load_yoda``): chosen = the Yoda-speak translation, rejected =
  the plain English sentence, the over-decorated ``translation_extra``, or a mix of both.
- ``load_sft_model(...)``: the notebook-03 SFT model (base + adapter, merged), or, where notebook 03's
  adapter is missing, a short SFT LoRA trained here with the same recipe.
- ``dpo_config(...)``: the ``DPOConfig`` of notebook 06, sized for a Colab T4, shrunk in reduced mode.
- ``sequence_logps(model, batch)``: the summed log-probability of each completion in a batch made
  by TRL's preference collator, computed with a plain forward pass (no TRL code).
- ``dpo_history(log_history)``: the ``rewards/*`` and ``logps/*`` metrics a ``DPOTrainer`` logged, as
  a table.
- ``bradley_terry_loss`` and ``train_reward_head``: the reward-model loss of RLHF, as a tiny demo.
"""
from __future__ import annotations

from pathlib import Path

from .mode import trainer_settings

REJECTED_CHOICES = ("sentence", "translation_extra", "mixed")
PLAIN_TEMPLATE = "Rewrite in Yoda-speak: {sentence}\nYoda:"
REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
# the policy's summed log-probabilities of the answers (the rewards are these minus the reference's, times beta)
LOGP_KEYS = ("logps/chosen", "logps/rejected")
# Notebook 06's learning rate for a LoRA on top of the SFT model. TRL's DPOConfig default, 1e-6, is
# sized for updating every weight; a LoRA trains far fewer parameters and takes a larger rate.
LEARNING_RATE = 2e-5


# --------------------------------------------------------------------------------------- data
def yoda_preference(row: dict, *, rejected: str = "sentence", conversational: bool = True,
                    system_prompt: str | None = None, index: int = 0) -> dict:
    """One Yoda row as a preference example ``{"prompt", "chosen", "rejected"}``.

    ``rejected``: ``"sentence"`` (the plain English: no Yoda-speak at all), ``"translation_extra"``
    (Yoda-speak buried under "Hmm"s), or ``"mixed"`` (the first for even ``index``, the second for
    odd). Conversational examples are message lists for a chat model; plain ones are text that
    TRL tokenizes as is.
    """
    from .yoda import YODA_SYSTEM_PROMPT

    if rejected not in REJECTED_CHOICES:
        raise ValueError(f"rejected must be one of {REJECTED_CHOICES}, not {rejected!r}.")
    column = rejected if rejected != "mixed" else ("sentence", "translation_extra")[index % 2]
    for key in ("sentence", "translation", column):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise ValueError(f"The row needs a non-empty {key!r}; it has {sorted(row)}. Pass a row of load_yoda().")
    if conversational:
        system_prompt = YODA_SYSTEM_PROMPT if system_prompt is None else system_prompt
        prompt = [{"role": "system", "content": system_prompt}] if system_prompt else []
        prompt.append({"role": "user", "content": row["sentence"]})
        return {"prompt": prompt,
                "chosen": [{"role": "assistant", "content": row["translation"]}],
                "rejected": [{"role": "assistant", "content": row[column]}]}
    return {"prompt": PLAIN_TEMPLATE.format(sentence=row["sentence"]),
            "chosen": " " + row["translation"], "rejected": " " + row[column]}


def yoda_preferences(ds, *, rejected: str = "sentence", conversational: bool = True,
                     system_prompt: str | None = None):
    """``yoda_preference`` over a data set of Yoda rows; rows whose rejected answer is the same
    text as the chosen one (nothing to prefer) are dropped."""
    rows = []
    for i, row in enumerate(ds):
        ex = yoda_preference(row, rejected=rejected, conversational=conversational,
                             system_prompt=system_prompt, index=i)
        if ex["chosen"] != ex["rejected"]:
            rows.append(ex)
    from datasets import Dataset

    return Dataset.from_list(rows)


# ------------------------------------------------------------------------------ the SFT model
def load_sft_model(model_id: str, adapter_dir, *, train_rows=None, max_steps: int = -1,
                   dtype=None, quiet: bool = False, **sft_overrides):
    """``(model, tokenizer, source)``: the base model with notebook 03's SFT adapter merged in.

    When ``adapter_dir`` holds no adapter (notebook 03 not run here), a short SFT LoRA is trained
    on ``train_rows`` with notebook 03's recipe (``course_utils.yoda``) for ``max_steps`` steps
    (``-1``: the recipe's epochs), then merged; ``sft_overrides`` go to ``yoda_sft_config`` (e.g. a
    smaller batch in reduced mode; ``None`` values keep the recipe's). ``source`` says which
    happened. The model is float32 unless ``dtype`` says otherwise (mixed-precision training
    still runs in fp16/bf16 on a GPU).
    """
    import torch

    from .models import load_model

    sft_overrides = {k: v for k, v in sft_overrides.items() if v is not None}
    model, tok = load_model(model_id, dtype=dtype or torch.float32, quiet=quiet)
    adapter_dir = Path(adapter_dir)
    if (adapter_dir / "adapter_config.json").exists():
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(model, adapter_dir)
        source = f"notebook 03's SFT adapter ({adapter_dir})"
        if not quiet:
            print(f"Loaded {source}.")
    else:
        if train_rows is None:
            raise ValueError(f"No SFT adapter at {adapter_dir} and no train_rows to train one: run notebook 03 "
                             "first, or pass train_rows=load_yoda('train').")
        if not quiet:
            steps = f"{max_steps} steps" if max_steps > 0 else "the full recipe"
            print(f"No SFT adapter from notebook 03 at {adapter_dir}: training a short SFT LoRA here with the "
                  f"same recipe ({steps}) before DPO.")
        peft_model = train_sft_adapter(model, tok, train_rows, max_steps=max_steps, **sft_overrides)
        source = f"a short SFT LoRA trained here ({max_steps if max_steps > 0 else 'full recipe'} steps)"
    merged = peft_model.merge_and_unload()
    merged.eval()
    return merged, tok, source


def train_sft_adapter(model, tok, train_rows, *, max_steps: int = -1, output_dir=None, **overrides):
    """Notebook 03's recipe: a LoRA (``yoda_lora_config``) trained with ``SFTTrainer``
    (``yoda_sft_config``) on the conversational Yoda pairs. Returns the trained ``PeftModel``."""
    import tempfile

    from trl import SFTTrainer

    from .yoda import to_conversations, yoda_lora_config, yoda_sft_config

    output_dir = output_dir or tempfile.mkdtemp(prefix="sft-")
    args = yoda_sft_config(output_dir, max_steps=max_steps, logging_steps=max(1, min(10, max_steps)),
                           **overrides)
    trainer = SFTTrainer(model=model, args=args, train_dataset=to_conversations(train_rows),
                         processing_class=tok, peft_config=yoda_lora_config())
    trainer.train()
    trainer.model.eval()
    return trainer.model


# ------------------------------------------------------------------------------------- config
def dpo_config(output_dir, **overrides):
    """The ``DPOConfig`` of notebook 06 (LoRA on top of the SFT model), sized for a Colab T4.

    beta 0.1; the learning rate ``LEARNING_RATE`` (2e-5, notebook 06's: a LoRA's rate, above TRL's
    default of 1e-6 for updating every weight); logging every step so the reward curves have points;
    fp16 on a T4, float32 and no gradient checkpointing on the CPU. Any field can be overridden.
    """
    from trl import DPOConfig

    kwargs = dict(
        output_dir=str(output_dir),
        beta=0.1,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        num_train_epochs=1,
        max_length=128,
        logging_steps=1,
        seed=42,
        **trainer_settings(),
    )
    kwargs.update(overrides)
    return DPOConfig(**kwargs)


# -------------------------------------------------------------------------------- measurements
def sequence_logps(model, batch):
    """``(chosen_logps, rejected_logps)``: for each sequence of a preference batch (TRL's
    ``DataCollatorForPreference`` output: chosen rows first, then rejected), the sum over its
    completion tokens of ``log p(token | everything before it)``.

    A plain forward pass and a ``log_softmax``: no TRL code, so it can check TRL's numbers.
    """
    import torch

    for key in ("input_ids", "attention_mask", "completion_mask"):
        if key not in batch:
            raise ValueError(f"The batch has no {key!r}; build it with the trainer's data collator.")
    input_ids = batch["input_ids"]
    if input_ids.shape[0] % 2:
        raise ValueError("A preference batch has an even number of rows: chosen rows, then rejected rows.")
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=input_ids.to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = input_ids[:, 1:].to(device)
    token_logps = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    mask = batch["completion_mask"][:, 1:].to(device).bool()
    per_sequence = (token_logps * mask).sum(dim=1).cpu()
    return tuple(per_sequence.chunk(2))


def preference_batch(trainer, n: int = 4, *, dataset=None):
    """The first ``n`` pairs of the trainer's (tokenized) training set, collated by its own data
    collator and moved to its device: ``input_ids``, ``attention_mask``, ``completion_mask``."""
    dataset = trainer.train_dataset if dataset is None else dataset
    if not 1 <= n <= len(dataset):
        raise ValueError(f"n must be between 1 and the {len(dataset)} pairs of the data set, got {n}.")
    batch = trainer.data_collator([dataset[i] for i in range(n)])
    return {k: v.to(trainer.accelerator.device) for k, v in batch.items()}


def trl_loss_on_batch(trainer, batch) -> dict:
    """TRL's own DPO loss on ``batch`` (``trainer.compute_loss``) and the mean implicit rewards it
    logs for that batch (``rewards/chosen``, ``rewards/rejected``), without any training step."""
    import torch

    mode = "train" if trainer.model.training else "eval"
    metrics = trainer._metrics[mode]  # where DPOTrainer.compute_loss records its metrics
    metrics.clear()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    out = {"loss": loss.item(), "rewards/chosen": metrics["rewards/chosen"][-1],
           "rewards/rejected": metrics["rewards/rejected"][-1]}
    metrics.clear()
    return out


def dpo_history(log_history):
    """The ``rewards/*``, ``logps/*`` (and ``loss``) entries a ``DPOTrainer`` logged, one row per
    logged step. Each row is the mean over the steps since the previous log (``logging_steps``)."""
    import pandas as pd

    rows = [{"step": h["step"], **{k: h[k] for k in (*REWARD_KEYS, *LOGP_KEYS, "loss") if k in h}}
            for h in log_history if "rewards/margins" in h]
    if not rows:
        raise ValueError("No DPO reward metrics in this log history: train with logging_steps=1 (or a "
                         "few steps) and pass trainer.state.log_history.")
    return pd.DataFrame(rows).set_index("step")


def plot_dpo_history(history, path=None):
    """Two panels: implicit rewards (chosen, rejected, margin) and reward accuracy, per step."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for key, style in (("rewards/chosen", "-o"), ("rewards/rejected", "-s"), ("rewards/margins", "-^")):
        ax1.plot(history.index, history[key], style, label=key.split("/")[1], markersize=4)
    ax1.axhline(0, color="grey", lw=0.8)
    ax1.set(xlabel="step", ylabel="implicit reward  beta * log(pi / pi_ref)", title="Rewards")
    ax1.legend()
    ax2.plot(history.index, history["rewards/accuracies"], "-o", color="tab:green", markersize=4)
    ax2.set(xlabel="step", ylabel="fraction of pairs", ylim=(-0.05, 1.05),
            title="Reward accuracy (chosen reward > rejected reward)")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


# ------------------------------------------------------------------------------------ RLHF demo
def bradley_terry_loss(chosen_rewards, rejected_rewards):
    """The reward model's loss: ``-log sigmoid(r_chosen - r_rejected)``, averaged over pairs."""
    import torch.nn.functional as F

    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(f"One reward per pair on each side: got shapes {tuple(chosen_rewards.shape)} and "
                         f"{tuple(rejected_rewards.shape)}.")
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def last_token_features(model, tok, conversations, *, batch_size: int = 16):
    """The final hidden state at the last token of each chat (a list of message lists): the
    features a reward model's scalar head reads."""
    import torch

    feats = []
    device = next(model.parameters()).device
    old_side = tok.padding_side
    tok.padding_side = "left"  # the last position is then every row's last real token
    try:
        for i in range(0, len(conversations), batch_size):
            enc = tok.apply_chat_template(conversations[i:i + batch_size], padding=True, return_dict=True,
                                          return_tensors="pt").to(device)
            # positions count real tokens only, so a left-padded row reads as if it were alone
            position_ids = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                out = model(**enc, position_ids=position_ids, output_hidden_states=True)
            feats.append(out.hidden_states[-1][:, -1].float().cpu())
    finally:
        tok.padding_side = old_side
    return torch.cat(feats)


def train_reward_head(chosen_features, rejected_features, *, steps: int = 200, lr: float = 1e-2,
                      weight_decay: float = 1e-2, seed: int = 0):
    """A linear reward head ``r(x) = w . h(x) + b`` on frozen, standardised features ``h(x)``,
    trained with the Bradley-Terry loss. Returns ``(reward, losses)``: ``reward(features)`` gives
    one scalar per row."""
    import torch

    if chosen_features.shape != rejected_features.shape or chosen_features.ndim != 2:
        raise ValueError("Pass two (pairs, features) tensors of the same shape.")
    if steps < 1:
        raise ValueError("steps must be at least 1.")
    torch.manual_seed(seed)
    both = torch.cat([chosen_features, rejected_features])
    mean, std = both.mean(0), both.std(0) + 1e-6
    head = torch.nn.Linear(chosen_features.shape[1], 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)

    def reward(features):
        return head((features - mean) / std).squeeze(-1)

    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    for _ in range(steps):
        loss = bradley_terry_loss(reward(chosen_features), reward(rejected_features))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    head.requires_grad_(False)
    return reward, losses
