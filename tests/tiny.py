"""A tiny random model of SmolLM2's architecture for unit tests that need a real transformers model
(tests/test_lora.py, tests/test_claims_03_04.py): two layers, width 64, 128 tokens, seeded."""
import torch


def tiny_model():
    from course_utils import load_architecture

    torch.manual_seed(0)
    return load_architecture("HuggingFaceTB/SmolLM2-135M-Instruct", num_hidden_layers=2, hidden_size=64,
                             intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                             vocab_size=128).eval()


def tiny_inputs(n: int = 10):
    return {"input_ids": torch.arange(n).reshape(1, n) % 128}
