"""Unit tests of course_utils.dpo (notebook 06): preference data, log-probabilities against TRL,
reward histories, the Bradley-Terry demo and the SFT starting point. Tiny random models with the
real tokenizer: no download, seconds."""
import math

import pytest
import torch

from course_utils import dpo

pytestmark = pytest.mark.xdist_group("dpo")  # one worker builds the judge trainer

ROWS = [
    {"sentence": "You must trust your feelings.", "translation": "Trust your feelings, you must.",
     "translation_extra": "Trust your feelings, you must. Hmm."},
    {"sentence": "The dog sleeps by the fire.", "translation": "By the fire, the dog sleeps.",
     "translation_extra": "By the fire, the dog sleeps. Yes, hrrrm."},
    {"sentence": "We walked home.", "translation": "Home, we walked.",
     "translation_extra": "Home, we walked. Hmmm."},
    {"sentence": "Same words here.", "translation": "Same words here.",
     "translation_extra": "Same words here. Hmm."},
]


def tiny_model(seed=0):
    from course_utils import load_architecture

    torch.manual_seed(seed)
    return load_architecture("HuggingFaceTB/SmolLM2-135M-Instruct", num_hidden_layers=1, hidden_size=32,
                             intermediate_size=64, num_attention_heads=2, num_key_value_heads=1).eval()


# ------------------------------------------------------------------------------------ data
def test_conversational_preference():
    ex = dpo.yoda_preference(ROWS[0], system_prompt="Be Yoda.")
    assert ex["prompt"] == [{"role": "system", "content": "Be Yoda."},
                            {"role": "user", "content": ROWS[0]["sentence"]}]
    assert ex["chosen"] == [{"role": "assistant", "content": ROWS[0]["translation"]}]
    assert ex["rejected"] == [{"role": "assistant", "content": ROWS[0]["sentence"]}]
    assert dpo.yoda_preference(ROWS[0], system_prompt="")["prompt"][0]["role"] == "user"


def test_default_system_prompt_is_notebook_03s():
    from course_utils.yoda import YODA_SYSTEM_PROMPT

    assert dpo.yoda_preference(ROWS[0])["prompt"][0]["content"] == YODA_SYSTEM_PROMPT


def test_plain_preference_and_rejected_kinds():
    ex = dpo.yoda_preference(ROWS[0], conversational=False, rejected="translation_extra")
    assert ex["prompt"].startswith("Rewrite in Yoda-speak: " + ROWS[0]["sentence"])
    assert ex["chosen"] == " " + ROWS[0]["translation"]
    assert ex["rejected"] == " " + ROWS[0]["translation_extra"]
    mixed = [dpo.yoda_preference(ROWS[1], rejected="mixed", conversational=False, index=i)["rejected"] for i in (0, 1)]
    assert mixed == [" " + ROWS[1]["sentence"], " " + ROWS[1]["translation_extra"]]


def test_preference_errors():
    with pytest.raises(ValueError, match="rejected must be one of"):
        dpo.yoda_preference(ROWS[0], rejected="worse")
    with pytest.raises(ValueError, match="non-empty 'translation'"):
        dpo.yoda_preference({"sentence": "Hi."})


def test_yoda_preferences_drops_pairs_without_a_preference():
    ds = dpo.yoda_preferences(ROWS, rejected="sentence")
    assert len(ds) == 3  # the last row's translation equals its sentence
    assert set(ds.column_names) == {"prompt", "chosen", "rejected"}
    assert len(dpo.yoda_preferences(ROWS, rejected="translation_extra")) == 4


# ------------------------------------------------------------------------- against TRL
@pytest.fixture(scope="module")
def judge(tokenizer, tmp_path_factory):
    from trl import DPOTrainer

    policy, ref = tiny_model(0), tiny_model(1)
    trainer = DPOTrainer(model=policy, ref_model=ref, processing_class=tokenizer,
                         train_dataset=dpo.yoda_preferences(ROWS[:3], system_prompt="Be Yoda."),
                         args=dpo.dpo_config(tmp_path_factory.mktemp("judge"), beta=0.3))
    return trainer, policy, ref


def test_sequence_logps_equal_trls_reference_logps(judge):
    trainer, _, ref = judge
    batch = dpo.preference_batch(trainer, n=3)
    assert batch["input_ids"].shape[0] == 6
    mine = dpo.sequence_logps(ref, batch)
    trl_chosen, trl_rejected = trainer.compute_ref_log_probs(ref, batch)
    torch.testing.assert_close(mine[0], trl_chosen, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(mine[1], trl_rejected, atol=1e-4, rtol=1e-5)


def test_formula_equals_trls_loss_and_rewards(judge):
    import torch.nn.functional as F

    trainer, policy, ref = judge
    batch = dpo.preference_batch(trainer, n=3)
    pc, pr = dpo.sequence_logps(policy, batch)
    rc, rr = dpo.sequence_logps(ref, batch)
    chosen, rejected = 0.3 * (pc - rc), 0.3 * (pr - rr)
    trl = dpo.trl_loss_on_batch(trainer, batch)
    assert trl["loss"] == pytest.approx((-F.logsigmoid(chosen - rejected)).mean().item(), abs=1e-5)
    assert trl["loss"] != pytest.approx(math.log(2), abs=1e-3)  # policy and reference differ
    assert trl["rewards/chosen"] == pytest.approx(chosen.mean().item(), abs=1e-5)
    assert trl["rewards/rejected"] == pytest.approx(rejected.mean().item(), abs=1e-5)


def test_preference_batch_and_sequence_logps_errors(judge):
    trainer, policy, _ = judge
    with pytest.raises(ValueError, match="between 1 and"):
        dpo.preference_batch(trainer, n=10)
    with pytest.raises(ValueError, match="no 'completion_mask'"):
        dpo.sequence_logps(policy, {"input_ids": torch.zeros(2, 3, dtype=torch.long),
                                  "attention_mask": torch.ones(2, 3)})
    with pytest.raises(ValueError, match="even number of rows"):
        dpo.sequence_logps(policy, {k: torch.ones(3, 4, dtype=torch.long)
                                  for k in ("input_ids", "attention_mask", "completion_mask")})


def test_dpo_config_on_cpu(tmp_path):
    args = dpo.dpo_config(tmp_path, beta=0.5, learning_rate=1e-4)
    assert args.beta == 0.5 and args.learning_rate == 1e-4
    assert not args.gradient_checkpointing and not args.bf16 and not args.fp16
    assert args.use_cpu and args.logging_steps == 1 and args.report_to == []


def test_gpu_config_with_gradient_checkpointing_trains_the_adapter(tmp_path, tokenizer):
    """dpo_config turns gradient checkpointing on on a GPU; CI trains without it. Gradients must
    still reach the LoRA through the checkpointed layers (a tiny model, on the CPU)."""
    from peft import LoraConfig
    from trl import DPOTrainer

    model = tiny_model(0)
    args = dpo.dpo_config(tmp_path, max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
                        gradient_checkpointing=True)
    trainer = DPOTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=dpo.yoda_preferences(ROWS[:3], system_prompt="Be Yoda."),
                         peft_config=LoraConfig(r=4, target_modules="all-linear"))
    trainer.train()
    lora_b = [p for name, p in trainer.model.named_parameters() if "lora_B" in name]
    assert args.gradient_checkpointing and lora_b and all(p.abs().sum() > 0 for p in lora_b)


# ----------------------------------------------------------------------------- history
LOG = [{"loss": 0.69, "rewards/chosen": 0.0, "rewards/rejected": 0.0, "rewards/margins": 0.0,
        "rewards/accuracies": 0.0, "logps/chosen": -20.0, "logps/rejected": -30.0, "step": 1},
       {"loss": 0.5, "rewards/chosen": 0.1, "rewards/rejected": -0.2, "rewards/margins": 0.3,
        "rewards/accuracies": 1.0, "logps/chosen": -21.0, "logps/rejected": -33.0, "step": 2},
       {"train_runtime": 3.0, "step": 2}]


def test_dpo_history_and_plot():
    import matplotlib

    matplotlib.use("Agg")
    history = dpo.dpo_history(LOG)
    assert list(history.index) == [1, 2]
    assert history.loc[2, "rewards/margins"] == 0.3
    assert history.loc[2, "logps/chosen"] == -21.0 and history.loc[1, "logps/rejected"] == -30.0
    fig = dpo.plot_dpo_history(history)
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="No DPO reward metrics"):
        dpo.dpo_history([{"loss": 1.0, "step": 1}])


# ----------------------------------------------------------------------------- RLHF demo
def test_bradley_terry_loss():
    r = torch.tensor([0.3, -1.0])
    assert dpo.bradley_terry_loss(r, r).item() == pytest.approx(math.log(2))
    assert dpo.bradley_terry_loss(torch.tensor([10.0]), torch.tensor([-10.0])).item() < 1e-6
    with pytest.raises(ValueError, match="One reward per pair"):
        dpo.bradley_terry_loss(torch.zeros(2), torch.zeros(3))


def test_train_reward_head_learns_a_separable_preference():
    gen = torch.Generator().manual_seed(0)
    rejected = torch.randn(20, 5, generator=gen)
    chosen = rejected + torch.tensor([1.0, 0, 0, 0, 0])  # better along feature 0
    reward, losses = dpo.train_reward_head(chosen, rejected, steps=300)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6) and losses[-1] < 0.2
    test_rejected = torch.randn(10, 5, generator=gen)
    assert (reward(test_rejected + torch.tensor([1.0, 0, 0, 0, 0])) > reward(test_rejected)).all()
    with pytest.raises(ValueError, match="same shape"):
        dpo.train_reward_head(chosen, rejected[:3])


def test_last_token_features_do_not_depend_on_padding(tokenizer):
    model = tiny_model()
    side = tokenizer.padding_side
    chats = [dpo.yoda_preference(r, system_prompt="Be Yoda.")["prompt"] for r in ROWS[:2]]
    chats[1] = chats[1] + [{"role": "assistant", "content": "A much longer answer, with many more tokens."}]
    together = dpo.last_token_features(model, tokenizer, chats)
    alone = torch.cat([dpo.last_token_features(model, tokenizer, [c]) for c in chats])
    assert together.shape == (2, 32)
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
    assert tokenizer.padding_side == side  # restored


# ------------------------------------------------------------------------- SFT start point
def test_load_sft_model_needs_an_adapter_or_rows(tmp_path):
    with pytest.raises(ValueError, match="run notebook 03 first"):
        dpo.load_sft_model("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path / "missing", quiet=True)


def test_load_sft_model_merges_notebook_03s_adapter(tmp_path):
    import course_utils as cu
    from course_utils import lora
    from course_utils.yoda import yoda_lora_config
    from peft import get_peft_model

    model, tok = cu.load_model(dtype=torch.float32, quiet=True)
    peft_model = get_peft_model(model, yoda_lora_config())
    lora.randomize_adapter(peft_model, seed=0, std=0.01)
    peft_model.save_pretrained(tmp_path / "adapter")
    x = tok(["Hello there."], return_tensors="pt")
    expected = lora.logits(peft_model, x)
    merged, _, source = dpo.load_sft_model("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path / "adapter", quiet=True)
    assert "notebook 03" in source
    assert not hasattr(merged, "peft_config")
    assert lora.max_abs_diff(lora.logits(merged, x), expected) < 1e-3


def test_train_sft_adapter_runs_the_recipe(tokenizer):
    from datasets import Dataset

    model = tiny_model()
    trained = dpo.train_sft_adapter(model, tokenizer, Dataset.from_list(ROWS[:3]), max_steps=1,
                                  per_device_train_batch_size=2)
    assert hasattr(trained, "peft_config") and not trained.training
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in trained.named_parameters())
