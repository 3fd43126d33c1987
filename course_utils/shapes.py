"""Published model shapes, for architecture-only models (random weights) and the memory estimator.

Each entry holds the fields of the model's published ``config.json`` that decide its size.
"""
from __future__ import annotations

# model_type, vocab, hidden, intermediate, layers, heads, kv_heads, tied embeddings, max positions
_LLAMA_LIKE = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "tie_word_embeddings")


def _shape(model_type, vocab, hidden, inter, layers, heads, kv, tied, **extra):
    d = dict(zip(_LLAMA_LIKE, (vocab, hidden, inter, layers, heads, kv, tied)))
    d["model_type"] = model_type
    d.update(extra)
    return d


SHAPES: dict[str, dict] = {
    "HuggingFaceTB/SmolLM2-135M": _shape("llama", 49152, 576, 1536, 30, 9, 3, True),
    "HuggingFaceTB/SmolLM2-135M-Instruct": _shape("llama", 49152, 576, 1536, 30, 9, 3, True),
    "HuggingFaceTB/SmolLM2-360M": _shape("llama", 49152, 960, 2560, 32, 15, 5, True),
    "HuggingFaceTB/SmolLM2-360M-Instruct": _shape("llama", 49152, 960, 2560, 32, 15, 5, True),
    "HuggingFaceTB/SmolLM2-1.7B": _shape("llama", 49152, 2048, 8192, 24, 32, 32, True),
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": _shape("llama", 49152, 2048, 8192, 24, 32, 32, True),
    "meta-llama/Llama-3.2-1B": _shape("llama", 128256, 2048, 8192, 16, 32, 8, True),
    "meta-llama/Llama-3.2-3B": _shape("llama", 128256, 3072, 8192, 28, 24, 8, True),
    "meta-llama/Llama-3.1-8B": _shape("llama", 128256, 4096, 14336, 32, 32, 8, False),
    "meta-llama/Llama-2-7b-hf": _shape("llama", 32000, 4096, 11008, 32, 32, 32, False),
    "Qwen/Qwen2.5-7B": _shape("qwen2", 152064, 3584, 18944, 28, 28, 4, False),
    "mistralai/Ministral-8B-Instruct-2410": _shape("mistral", 131072, 4096, 12288, 36, 32, 8, False),
    "microsoft/Phi-3.5-mini-instruct": _shape("phi3", 32064, 3072, 8192, 32, 32, 32, False),
    "allenai/OLMo-2-1124-7B": _shape("olmo2", 100352, 4096, 11008, 32, 32, 32, False),
    "facebook/opt-350m": _shape("opt", 50272, 1024, 4096, 24, 16, 16, True,
                                word_embed_proj_dim=512, ffn_dim=4096),
}


def get_shape(model_id: str) -> dict:
    try:
        return dict(SHAPES[model_id])
    except KeyError:
        known = ", ".join(sorted(SHAPES))
        raise ValueError(f"No built-in shape for {model_id!r}. Known shapes: {known}") from None


def build_config(model_id: str, **overrides):
    """A transformers config with the published shape of ``model_id`` (no download)."""
    from transformers import AutoConfig

    shape = get_shape(model_id)
    shape.update(overrides)
    model_type = shape.pop("model_type")
    if model_type == "opt":
        shape["num_attention_heads"] = shape.pop("num_attention_heads")
        shape.pop("num_key_value_heads", None)
        shape.pop("intermediate_size", None)
    return AutoConfig.for_model(model_type, **shape)
