"""Published model shapes, for architecture-only models (random weights) and the memory estimator.

Each entry holds the fields of the model's published ``config.json`` that decide its size, plus a
few keys of our own that are not config fields (``NON_CONFIG_KEYS``): ``note`` says where a shape
is a stand-in rather than a published model, ``extra_params`` counts parameters the stand-in
leaves out (a vision encoder), so that the estimator can still count their bytes.
"""
from __future__ import annotations

# model_type, vocab, hidden, intermediate, layers, heads, kv_heads, tied embeddings
_LLAMA_LIKE = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "tie_word_embeddings")
NON_CONFIG_KEYS = ("note", "extra_params")


def _shape(model_type, vocab, hidden, inter, layers, heads, kv, tied, **extra):
    d = dict(zip(_LLAMA_LIKE, (vocab, hidden, inter, layers, heads, kv, tied)))
    d["model_type"] = model_type
    d.update(extra)
    return d


_VISION_NOTE = ("text decoder only, with its cross-attention layers counted as ordinary decoder "
                "layers; the vision encoder is counted in extra_params, not modelled")
_NOMINAL_NOTE = ("nominal stand-in, not a published model: Llama-3.1-70B's layers with the layer "
                 "count chosen to reach the size")

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
                                word_embed_proj_dim=512, ffn_dim=4096, max_position_embeddings=2048,
                                do_layer_norm_before=False),
    # Larger shapes, for the lecture's VRAM table (notebook 05).
    "google/gemma-2-9b": _shape("gemma2", 256000, 3584, 14336, 42, 16, 8, True, head_dim=256),
    "Qwen/Qwen2.5-14B": _shape("qwen2", 152064, 5120, 13824, 48, 40, 8, False),
    "google/gemma-2-27b": _shape("gemma2", 256000, 4608, 36864, 46, 32, 16, True, head_dim=128),
    "Qwen/Qwen2.5-32B": _shape("qwen2", 152064, 5120, 27648, 64, 40, 8, False),
    "meta-llama/Llama-3.1-70B": _shape("llama", 128256, 8192, 28672, 80, 64, 8, False),
    "meta-llama/Llama-3.1-405B": _shape("llama", 128256, 16384, 53248, 126, 128, 8, False),
    "meta-llama/Llama-3.2-11B-Vision": _shape("llama", 128256, 4096, 14336, 40, 32, 8, False,
                                              note=_VISION_NOTE, extra_params=850_000_000),
    "meta-llama/Llama-3.2-90B-Vision": _shape("llama", 128256, 8192, 28672, 100, 64, 8, False,
                                              note=_VISION_NOTE, extra_params=850_000_000),
    "nominal/40B": _shape("llama", 128256, 8192, 28672, 44, 64, 8, False, note=_NOMINAL_NOTE),
    "nominal/81B": _shape("llama", 128256, 8192, 28672, 92, 64, 8, False, note=_NOMINAL_NOTE),
}

# Short names the notebook and the measurement table use.
ALIASES = {
    "SmolLM2-135M": "HuggingFaceTB/SmolLM2-135M",
    "SmolLM2-360M": "HuggingFaceTB/SmolLM2-360M",
    "SmolLM2-1.7B": "HuggingFaceTB/SmolLM2-1.7B",
    "Llama-3.2-1B": "meta-llama/Llama-3.2-1B",
    "Llama-3.2-3B": "meta-llama/Llama-3.2-3B",
    "Llama-3.1-8B": "meta-llama/Llama-3.1-8B",
    "Qwen2.5-7B": "Qwen/Qwen2.5-7B",
    "OPT-350M": "facebook/opt-350m",
    "Phi-3.5-mini": "microsoft/Phi-3.5-mini-instruct",
    "Llama-2-7B": "meta-llama/Llama-2-7b-hf",
    "Mistral-8B": "mistralai/Ministral-8B-Instruct-2410",
    "OLMo-7B": "allenai/OLMo-2-1124-7B",
}


def resolve_shape_id(model_id: str) -> str:
    """The full hub id of ``model_id`` (short names such as ``"Llama-3.2-3B"`` are accepted)."""
    if not isinstance(model_id, str):
        raise ValueError(f"A model id must be a string such as 'meta-llama/Llama-3.2-3B', got {model_id!r}.")
    return ALIASES.get(model_id, model_id)


def short_name(model_id: str) -> str:
    """``"meta-llama/Llama-3.2-3B"`` -> ``"Llama-3.2-3B"`` (the last part of the id)."""
    return resolve_shape_id(model_id).split("/")[-1]


def get_shape(model_id: str) -> dict:
    """A copy of the built-in shape of ``model_id`` (a hub id or a short name)."""
    try:
        return dict(SHAPES[resolve_shape_id(model_id)])
    except KeyError:
        known = ", ".join(sorted(SHAPES))
        raise ValueError(f"No built-in shape for {model_id!r}. Known shapes: {known}") from None


def build_config(model_id: str, **overrides):
    """A transformers config with the published shape of ``model_id`` (no download)."""
    from transformers import AutoConfig

    shape = get_shape(model_id)
    shape.update(overrides)
    for key in NON_CONFIG_KEYS:
        shape.pop(key, None)
    model_type = shape.pop("model_type")
    if model_type == "opt":
        shape.pop("num_key_value_heads", None)
        shape.pop("intermediate_size", None)
    return AutoConfig.for_model(model_type, **shape)
