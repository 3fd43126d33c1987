"""course_utils.rewards (notebook 08): the word data, the wrong answers, the reward model's
helpers against TRL's RewardTrainer, and a GRPO batch against GRPOTrainer's own numbers, on a tiny
random Llama so that it runs in seconds."""
import pytest
import torch

from course_utils import dpo, pig_latin, rewards


# ------------------------------------------------------------------------------------- data
def test_word_pairs_held_out_words_are_never_training_words():
    train, test = rewards.word_pairs("train"), rewards.word_pairs("test")
    assert len(train) > 500 and len(test) > 30
    assert not set(train["english"]) & set(test["english"])
    assert train["english"] == sorted(set(train["english"]))
    for row in list(train)[:50] + list(test):
        assert row["pig_latin"] == pig_latin.pig_latin_word(row["english"])
        assert row["prompt"] == pig_latin.PROMPT_TEMPLATE.format(english=row["english"])
        assert row["english"] == row["english"].lower()


def test_word_pairs_test_words_come_from_held_out_sentences():
    test_sentences = " ".join(pig_latin.pig_latin_pairs(split="test")["english"]).lower()
    assert all(w in test_sentences for w in rewards.word_pairs("test")["english"])


def test_word_pairs_rejects_an_unknown_split():
    with pytest.raises(ValueError, match="split"):
        rewards.word_pairs("validation")


@pytest.mark.parametrize("completion, answer", [
    (" ingstray", "ingstray"), (" ingstray\nEnglish: cat", "ingstray"), ("\n\n igpay \n", "igpay"), ("", ""),
    ("   ", ""),
])
def test_first_line(completion, answer):
    assert rewards.first_line(completion) == answer


def test_first_line_says_what_a_completion_is():
    with pytest.raises(TypeError, match="decoded text"):
        rewards.first_line([{"role": "assistant", "content": "igpay"}])


def test_wrong_answers_are_wrong_and_typical():
    assert rewards.wrong_answers("string") == {  # no vowel-word mistake for a consonant word
        "english unchanged": "string", "ay appended, nothing moved": "stringay",
        "only the first letter moved": "tringsay"}
    eat = rewards.wrong_answers("eat")
    assert eat["vowel word given ay, not way"] == "eatay"
    assert "only the first letter moved" in eat  # "ateay"
    for word in rewards.word_pairs("train")["english"][:200]:
        assert pig_latin.pig_latin_word(word) not in rewards.wrong_answers(word).values()


def test_preference_pairs_chosen_is_the_rule_and_rejected_a_mistake():
    words = rewards.word_pairs("test")
    pairs = rewards.preference_pairs(words, seed=1)
    assert pairs.column_names == ["prompt", "chosen", "rejected", "mistake"]
    assert len(pairs) == len(words)
    for row, word in zip(pairs, words):
        assert row["chosen"] == " " + word["pig_latin"] and row["rejected"] != row["chosen"]
        assert row["rejected"] == " " + rewards.wrong_answers(word["english"])[row["mistake"]]
    assert rewards.preference_pairs(words, seed=1)["rejected"] == pairs["rejected"]
    assert len(set(pairs["mistake"])) == len(rewards.MISTAKES)  # every mistake is drawn
    with pytest.raises(ValueError, match="No pairs"):
        rewards.preference_pairs([])


def test_history_keeps_logged_steps_and_reward_columns():
    log = [{"loss": 0.1, "reward": 0.5, "kl": 0.0, "rewards/exact/mean": 0.2, "step": 1, "learning_rate": 1e-4},
           {"loss": 0.2, "reward": 0.7, "kl": 0.01, "rewards/exact/mean": 0.4, "step": 2},
           {"train_runtime": 3.0, "step": 2}]
    frame = rewards.history(log)
    assert list(frame.index) == [1, 2]
    assert list(frame.columns) == ["reward", "kl", "rewards/exact/mean"]
    with pytest.raises(ValueError, match="logging_steps"):
        rewards.history([{"train_runtime": 3.0, "step": 2}])


# ------------------------------------------------------------------- tiny models, real trainers
@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    path = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _lora(task):
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type=task)


def test_reward_model_loss_by_hand_equals_reward_trainer(tiny_path, tmp_path):
    from trl import RewardConfig, RewardTrainer

    torch.manual_seed(0)
    model, tok = rewards.load_reward_model(tiny_path, dtype=torch.float32)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    pairs = rewards.preference_pairs(rewards.word_pairs("test"))
    config = RewardConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, use_cpu=True,
                          bf16=False, report_to="none", save_strategy="no", disable_tqdm=True)
    trainer = RewardTrainer(model=model, args=config, train_dataset=pairs.remove_columns("mistake"),
                            processing_class=tok, peft_config=_lora("SEQ_CLS"))
    batch = rewards.reward_batch(trainer, n=6)
    assert batch["input_ids"].shape[0] == 12  # chosen rows, then rejected rows
    with torch.no_grad():
        chosen, rejected = rewards.chosen_rejected_rewards(trainer.model, batch)
    assert chosen.shape == rejected.shape == (6,)
    assert abs(float(dpo.bradley_terry_loss(chosen, rejected)) - rewards.trl_reward_loss(trainer, batch)) < 1e-6
    # the scores of reward_scores are the same numbers, read from text
    six = pairs.select(range(6))
    by_text = rewards.reward_scores(trainer.model, tok, six["prompt"], six["chosen"])
    assert torch.allclose(torch.tensor(by_text), chosen, atol=1e-5)
    acc = rewards.pairwise_accuracy(trainer.model, tok, six)
    assert acc["accuracy"] == sum(c > r for c, r in zip(chosen.tolist(), rejected.tolist())) / 6


def test_grpo_batch_matches_grpo_trainer(tiny_path, tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    data = rewards.word_pairs("test").select_columns(["prompt", "pig_latin"]).rename_column("pig_latin", "answer")
    seen = []

    def length_reward(completions, answer, **kwargs):
        seen.append(list(completions))
        return [float(len(rewards.first_line(c))) - len(a) for c, a in zip(completions, answer)]

    config = GRPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8, num_generations=4,
                        max_completion_length=6, beta=0.1, use_bias_correction_kl=False, use_cpu=True, bf16=False,
                        report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1)
    trainer = GRPOTrainer(model=model, reward_funcs=[length_reward], args=config, train_dataset=data,
                          processing_class=tokenizer, peft_config=_lora("CAUSAL_LM"))
    rows = [data[0], data[1]]
    batch = rewards.grpo_batch(trainer, rows)
    assert len(batch["completions"]) == len(batch["rows"]) == 8
    assert batch["completions"] == seen[-1]  # decoded exactly as the reward function saw them
    assert [r["answer"] for r in batch["rows"]] == [rows[0]["answer"]] * 4 + [rows[1]["answer"]] * 4
    # TRL's own per-token log probabilities under the policy and under the reference (adapter off)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    n = batch["completion_ids"].shape[1]
    with torch.no_grad():
        trl_logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, n)
        with trainer.model.disable_adapter():
            mine_ref = rewards.completion_logps(trainer.model, batch)
    real = batch["completion_mask"].bool()
    assert torch.allclose(batch["logps"].detach()[real], trl_logps[real], atol=1e-5)
    assert torch.allclose(mine_ref[real], batch["ref_per_token_logps"][real], atol=1e-5)
    # the advantages TRL stored: rewards minus the group mean, over the group's sample std + 1e-4
    r = torch.tensor(length_reward(batch["completions"], [x["answer"] for x in batch["rows"]])).view(2, 4)
    want = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1)
    assert torch.allclose(batch["advantages"], want, atol=1e-5)
    # on-policy, the loss is minus the token-weighted mean advantage plus beta * KL
    loss = rewards.trl_grpo_loss(trainer, batch)
    lp, ref, m = batch["logps"].detach(), batch["ref_per_token_logps"], batch["completion_mask"]
    kl = torch.exp(ref - lp) - (ref - lp) - 1
    by_hand = ((-batch["advantages"].unsqueeze(1) + 0.1 * kl) * m).sum() / m.sum()
    assert abs(loss - float(by_hand)) < 1e-5


def test_grpo_batch_needs_rows():
    class Fake:
        num_generations = 2

    with pytest.raises(ValueError, match="at least one row"):
        rewards.grpo_batch(Fake(), [])


def test_plot_grpo_history(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"reward": [0.1, 0.3], "kl": [0.0, 0.01], "completions/mean_length": [5, 4]},
                         index=pd.Index([1, 2], name="step"))
    fig = rewards.plot_grpo_history({"a": frame}, path=tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 0
    assert [ax.get_title() for ax in fig.axes] == ["mean reward", "KL to the reference", "completion length (tokens)"]
