"""Where training memory goes, and an estimator for it (notebook 05).

The estimator adds up what a training step keeps in GPU memory, part by part:

- **weights**: bytes per parameter by dtype (fp32 4, fp16/bf16 2, int8 1) or by 4-bit quantisation
  (nf4/fp4: half a byte, plus one quantisation constant per block of 64 weights: an fp32 absmax,
  or with double quantisation an 8-bit absmax plus one fp32 constant per 256 blocks);
- **LoRA** adapter weights, their **gradients** and the **optimizer** states (AdamW: two states in
  the parameter's dtype; 8-bit AdamW: two bytes; paged optimizers keep theirs in CUDA managed
  memory, outside PyTorch's allocator);
- **activations** saved for the backward pass, tensor by tensor as transformers' Llama code saves
  them (the textbook formula ``L(34·h·b·s + 5·n_heads·b·s²)`` is ``textbook_activation_bytes``),
  with eager or SDPA attention, with or without gradient checkpointing;
- the **logits and loss** (``vocab × tokens`` in fp32, several times over, unless the loss is
  computed in chunks, as TRL's ``SFTTrainer`` does);
- **transients**: the largest temporary buffers of the backward pass.

``TrainConfig`` describes one training configuration; ``METHODS`` holds the presets the notebook
and the measurement harness (``course_utils.memory_bench``) share. ``estimate_training_memory``
returns a ``MemoryEstimate`` whose parts add up to the estimated peak of
``torch.cuda.max_memory_allocated()``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from .shapes import get_shape, resolve_shape_id, short_name

MIB = 2 ** 20
GIB = 2 ** 30

DTYPE_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "nf4": 0.5, "fp4": 0.5}
QUANT_BLOCKSIZE = 64          # bitsandbytes 4-bit: one absmax per 64 weights
DOUBLE_QUANT_BLOCKSIZE = 256  # double quantisation: one fp32 constant per 256 absmax values
OPTIM_8BIT_BLOCKSIZE = 256    # bitsandbytes 8-bit optimizers: one fp32 absmax per 256 values
OPTIM_8BIT_MIN_SIZE = 4096    # smaller tensors keep 32-bit optimizer states
# TRL's chunked LM head (trl/kernels/chunked_logprob.py): tiles of tokens x vocabulary columns.
LM_HEAD_TOKEN_CHUNK = 4096
LM_HEAD_VOCAB_CHUNK = 32768
# PyTorch allocates cuBLAS/cuBLASLt workspaces through its caching allocator, so they count in
# max_memory_allocated(): one per thread that runs matmuls (the forward pass, and autograd's
# device thread in the backward pass), 32 MiB each on Hopper GPUs by PyTorch's default. An
# assumption, to be calibrated against the first GPU measurements (smaller on a T4).
CUDA_WORKSPACE_BYTES = 2 * 32 * MIB

OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "sgd")
ATTENTIONS = ("eager", "sdpa")
LOSSES = ("full_logits", "chunked")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")


# ------------------------------------------------------------------------------ bytes per param
def bytes_per_param(dtype: str, *, double_quant: bool = False, blocksize: int = QUANT_BLOCKSIZE,
                    in_features: int | None = None) -> float:
    """Bytes one weight takes in ``dtype``, quantisation constants included.

    - ``fp32`` 4, ``fp16``/``bf16`` 2;
    - ``int8`` (LLM.int8): 1, plus one fp32 scale per output row, i.e. ``4 / in_features``;
    - ``nf4``/``fp4``: 0.5 for the 4-bit code, plus ``4 / blocksize`` for the fp32 absmax of each
      block; with ``double_quant`` the absmax values are themselves quantised to 8 bits
      (``1 / blocksize``) with one fp32 constant per 256 of them (``4 / (blocksize * 256)``).
    """
    _check_choice("dtype", dtype, tuple(DTYPE_BYTES))
    base = DTYPE_BYTES[dtype]
    if dtype == "int8":
        return base + (4.0 / in_features if in_features else 0.0)
    if dtype in ("nf4", "fp4"):
        if not isinstance(blocksize, int) or blocksize <= 0:
            raise ValueError(f"blocksize must be a positive integer, got {blocksize!r}.")
        if double_quant:
            return base + 1.0 / blocksize + 4.0 / (blocksize * DOUBLE_QUANT_BLOCKSIZE)
        return base + 4.0 / blocksize
    return base


# --------------------------------------------------------------------------- parameter counting
@dataclass(frozen=True)
class LinearLayer:
    name: str
    in_features: int
    out_features: int
    bias: bool = False

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


def _dims(shape: dict) -> dict:
    h = shape["hidden_size"]
    nh = shape["num_attention_heads"]
    nkv = shape.get("num_key_value_heads") or nh
    d = shape.get("head_dim") or h // nh
    i = shape.get("intermediate_size") or shape.get("ffn_dim")
    return {"h": h, "nh": nh, "nkv": nkv, "d": d, "q": nh * d, "kv": nkv * d, "i": i,
            "L": shape["num_hidden_layers"], "V": shape["vocab_size"]}


def _get_shape(model_id: str, layers: int | None = None) -> dict:
    shape = get_shape(model_id)
    if layers is not None:
        if not isinstance(layers, int) or layers <= 0:
            raise ValueError(f"layers must be a positive integer, got {layers!r}.")
        shape["num_hidden_layers"] = layers
    return shape


def layer_linears(model_id: str) -> list[LinearLayer]:
    """The linear layers of one decoder layer of ``model_id`` (what 4-bit quantises and
    ``target_modules="all-linear"`` wraps with LoRA)."""
    shape = get_shape(model_id)
    t, g = shape["model_type"], _dims(shape)
    h, q, kv, i = g["h"], g["q"], g["kv"], g["i"]
    if t == "phi3":  # fused projections
        return [LinearLayer("qkv_proj", h, q + 2 * kv), LinearLayer("o_proj", q, h),
                LinearLayer("gate_up_proj", h, 2 * i), LinearLayer("down_proj", i, h)]
    if t == "opt":
        return [LinearLayer(n, h, h, True) for n in ("q_proj", "k_proj", "v_proj", "out_proj")] + [
            LinearLayer("fc1", h, i, True), LinearLayer("fc2", i, h, True)]
    bias = t == "qwen2"  # Qwen2 has biases on q, k and v
    return [LinearLayer("q_proj", h, q, bias), LinearLayer("k_proj", h, kv, bias),
            LinearLayer("v_proj", h, kv, bias), LinearLayer("o_proj", q, h),
            LinearLayer("gate_proj", h, i), LinearLayer("up_proj", h, i), LinearLayer("down_proj", i, h)]


def model_linears(model_id: str, layers: int | None = None) -> list[LinearLayer]:
    """Every linear layer outside the LM head (OPT adds its two projections around the stack)."""
    shape = _get_shape(model_id, layers)
    layers = layer_linears(model_id) * shape["num_hidden_layers"]
    if shape["model_type"] == "opt" and shape.get("word_embed_proj_dim", shape["hidden_size"]) != shape["hidden_size"]:
        wed, h = shape["word_embed_proj_dim"], shape["hidden_size"]
        layers += [LinearLayer("project_in", wed, h), LinearLayer("project_out", h, wed)]
    return layers


@dataclass(frozen=True)
class ParamCounts:
    """Parameters of a model by kind. ``linear`` is what bitsandbytes quantises (every
    ``nn.Linear`` but the LM head, biases excluded); ``other`` holds norms, biases and learned
    position embeddings; ``extra`` what a stand-in shape leaves out (a vision encoder)."""

    embedding: int
    lm_head: int
    linear: int
    other: int
    extra: int = 0

    @property
    def total(self) -> int:
        return self.embedding + self.lm_head + self.linear + self.other + self.extra

    @property
    def not_quantized(self) -> int:
        return self.embedding + self.lm_head + self.other + self.extra


def count_parameters(model_id: str, layers: int | None = None) -> ParamCounts:
    """Count the parameters of ``model_id`` from its shape, by hand (no model is built);
    ``layers`` overrides the number of decoder layers."""
    shape = _get_shape(model_id, layers)
    t, g = shape["model_type"], _dims(shape)
    h, L, V = g["h"], g["L"], g["V"]
    linears = model_linears(model_id, layers)
    linear = sum(x.in_features * x.out_features for x in linears)
    biases = sum(x.out_features for x in linears if x.bias)
    norms_per_layer = {"gemma2": 4 * h, "olmo2": 2 * h + g["q"] + g["kv"], "opt": 4 * h}.get(t, 2 * h)
    final_norm = 0 if (t == "opt" and not shape.get("do_layer_norm_before", True)) else h * (2 if t == "opt" else 1)
    embed_dim = shape.get("word_embed_proj_dim", h) if t == "opt" else h
    other = L * norms_per_layer + final_norm + biases
    if t == "opt":
        other += (shape.get("max_position_embeddings", 2048) + 2) * h  # learned positions (+2 offset)
    embedding = V * embed_dim
    lm_head = 0 if shape["tie_word_embeddings"] else V * embed_dim
    return ParamCounts(embedding, lm_head, linear, other, int(shape.get("extra_params", 0)))


def lora_parameters(model_id: str, r: int = 16, targets="all-linear", layers: int | None = None) -> int:
    """LoRA parameters: ``r * (in + out)`` for every targeted linear layer.

    ``targets``: ``"all-linear"`` or a list of layer names (``["q_proj", "v_proj"]``).
    """
    if not isinstance(r, int) or r <= 0:
        raise ValueError(f"The LoRA rank r must be a positive integer, got {r!r}.")
    linears = model_linears(model_id, layers)
    if targets != "all-linear":
        if isinstance(targets, str):
            targets = [targets]
        names = {x.name for x in linears}
        unknown = set(targets) - names
        if unknown:
            raise ValueError(f"No linear layer named {sorted(unknown)} in {model_id}; "
                             f"its linear layers are {sorted(names)}.")
        linears = [x for x in linears if x.name in set(targets)]
    return sum(r * (x.in_features + x.out_features) for x in linears)


def weights_bytes(model_id: str, dtype: str = "bf16", *, double_quant: bool = False,
                  other_dtype: str | None = None, layers: int | None = None) -> dict:
    """Bytes of the model's weights when its linear layers are stored in ``dtype``.

    Embeddings, LM head, norms and biases stay in ``other_dtype`` (default: ``dtype`` for fp32,
    fp16 and bf16, and bf16 for quantised layers, as bitsandbytes leaves them).
    Returns ``{"linear": ..., "quant_constants": ..., "other": ..., "total": ...}``.
    """
    pc = count_parameters(model_id, layers)
    quantized = dtype in ("int8", "nf4", "fp4")
    other_dtype = other_dtype or ("bf16" if quantized else dtype)
    linear = pc.linear * DTYPE_BYTES[dtype]
    constants = 0.0
    if dtype in ("nf4", "fp4"):
        # per layer: one absmax per block (fp32, or 8-bit with one fp32 per 256 blocks and the
        # 256-value fp32 code of the second quantisation when double-quantised)
        for x in model_linears(model_id, layers):
            blocks = math.ceil(x.in_features * x.out_features / QUANT_BLOCKSIZE)
            if double_quant:
                constants += blocks + 4 * math.ceil(blocks / DOUBLE_QUANT_BLOCKSIZE) + 4 * 256
            else:
                constants += 4 * blocks
    elif dtype == "int8":
        constants = sum(4 * x.out_features for x in model_linears(model_id, layers))
    other = pc.not_quantized * DTYPE_BYTES[other_dtype]
    return {"linear": linear, "quant_constants": constants, "other": other,
            "total": linear + constants + other}


# ---------------------------------------------------------------------------- optimizer states
def optimizer_bytes(optim: str, *, n_params: int | None = None,
                    param_bytes: float = 4.0, tensor_sizes: list[int] | None = None,
                    fp32_state_sizes: list[int] = ()) -> dict:
    """Optimizer state bytes: ``{"allocated": ..., "paged": ...}``.

    - ``adamw`` (PyTorch's, fused): two states (m, v) in the parameters' dtype;
    - ``adamw_8bit``: two 8-bit states plus one fp32 absmax per 256 values; tensors smaller than
      4096 values keep two fp32 states (bitsandbytes' ``min_8bit_size``);
    - ``paged_adamw_8bit``/``paged_adamw_32bit``: the same states (32-bit: two fp32), in CUDA
      managed memory that bitsandbytes allocates itself: PyTorch's ``max_memory_allocated()``
      does not see them, so they are reported as ``paged``;
    - ``sgd``: no state.

    ``fp32_state_sizes``: tensors an 8-bit optimizer keeps in two fp32 states anyway (any other
    optimizer treats them like the rest). transformers' ``Trainer`` (and so TRL's trainers) does
    that for every ``nn.Embedding`` when it builds a bitsandbytes 8-bit optimizer, for stability;
    it matters when the embeddings train.
    """
    _check_choice("optim", optim, OPTIMIZERS)
    sizes = tensor_sizes if tensor_sizes is not None else [n_params or 0]
    if "8bit" not in optim:
        sizes, fp32_state_sizes = list(sizes) + list(fp32_state_sizes), ()
    if optim == "sgd":
        return {"allocated": 0.0, "paged": 0.0}
    if optim == "adamw":
        return {"allocated": 2 * param_bytes * sum(sizes), "paged": 0.0}
    if optim == "paged_adamw_32bit":
        return {"allocated": 0.0, "paged": 8.0 * sum(sizes)}
    total = 8.0 * sum(fp32_state_sizes)
    for n in sizes:
        if n >= OPTIM_8BIT_MIN_SIZE:
            total += 2 * (n + 4 * math.ceil(n / OPTIM_8BIT_BLOCKSIZE))
        else:
            total += 8.0 * n
    return {"allocated": 0.0, "paged": total} if optim.startswith("paged") else {"allocated": total, "paged": 0.0}


# -------------------------------------------------------------------------- training configs
@dataclass(frozen=True)
class TrainConfig:
    """One training configuration, as the estimator and the measurement harness see it.

    ``method`` picks a preset from ``METHODS``; the fields below it left at ``None`` take the
    preset's value (``resolved()`` fills them in), any other value overrides it.
    """

    shape: str = "meta-llama/Llama-3.2-3B"
    method: str = "qlora_recipe"
    seq_len: int = 512
    batch: int = 1
    grad_ckpt: bool | None = None
    attn: str = "sdpa"
    optim: str | None = None
    lora_r: int = 16
    lora_dropout: float = 0.0
    # Set by the method preset unless given:
    quant: str | None = None          # None (16-bit weights), "nf4" or "fp4"
    double_quant: bool | None = None
    upcast: bool | None = None        # peft.prepare_model_for_kbit_training's fp32 upcast
    lora_dtype: str | None = None     # "fp32" (PEFT's default) or "bf16"
    loss: str | None = None           # "full_logits" (transformers.Trainer) or "chunked" (TRL)
    liger: bool | None = None         # Liger's RMSNorm/SwiGLU/RoPE kernels (GPU only)
    amp: bool | None = None           # mixed precision (autocast): the trainer's bf16=/fp16=True
    act_offload: bool = False         # TRL's activation_offloading: saved tensors to CPU (CUDA only)
    compute_dtype: str = "bf16"       # "bf16", or "fp16" on a T4
    layers: int | None = None         # overrides the shape's number of layers (tests, CPU runs)

    def resolved(self) -> "TrainConfig":
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}; choose one of {', '.join(METHODS)}.")
        preset = METHODS[self.method]
        values = {k: (preset.get(k) if getattr(self, k) is None else getattr(self, k))
                  for k in ("grad_ckpt", "optim", "quant", "double_quant", "upcast", "lora_dtype",
                            "loss", "liger", "amp")}
        if self.compute_dtype == "fp16" and values["lora_dtype"] == "bf16":
            values["lora_dtype"] = "fp32"  # fp16 mixed precision (a T4) unscales fp32 trainable weights
        cfg = replace(self, shape=resolve_shape_id(self.shape), **values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        _get_shape(self.shape, self.layers)
        _check_choice("attn", self.attn, ATTENTIONS)
        _check_choice("optim", self.optim, OPTIMIZERS)
        _check_choice("loss", self.loss, LOSSES)
        _check_choice("compute_dtype", self.compute_dtype, ("bf16", "fp16", "fp32"))
        _check_choice("quant", self.quant, (None, "nf4", "fp4"))
        for name in ("seq_len", "batch", "lora_r"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not isinstance(self.act_offload, bool):
            raise ValueError(f"act_offload must be True or False, got {self.act_offload!r}.")
        if self.act_offload and self.loss != "chunked":
            raise ValueError("act_offload is TRL's SFTConfig(activation_offloading=True): pick a method "
                             "trained with TRL's SFTTrainer (loss='chunked'), not transformers.Trainer.")
        if self.lora and self.lora_dtype not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"lora_dtype must be 'fp32', 'bf16' or 'fp16', got {self.lora_dtype!r}.")

    @property
    def lora(self) -> bool:
        return METHODS[self.method]["trainable"] == "lora"

    @property
    def short_shape(self) -> str:
        return short_name(self.shape)

    def as_dict(self) -> dict:
        return asdict(self)


METHODS: dict[str, dict] = {
    # full16 is pure bf16 AdamW: 16-bit weights, gradients and both states, 8 bytes per parameter
    # (mixed precision with fp32 master weights and fp32 states, the usual recipe, takes 16).
    "full16": dict(label="full fine-tune, pure 16-bit AdamW (8 bytes per parameter)", trainable="all", quant=None, double_quant=False,
                   upcast=False, lora_dtype=None, loss="chunked", liger=False, grad_ckpt=False,
                   optim="adamw", amp=True),
    "lora16": dict(label="LoRA, 16-bit base", trainable="lora", quant=None, double_quant=False,
                   upcast=False, lora_dtype="fp32", loss="chunked", liger=False, grad_ckpt=False,
                   optim="adamw", amp=True),
    # The presets leave gradient checkpointing off (grad_ckpt=False); the libraries' defaults turn it
    # on: prepare_model_for_kbit_training(use_gradient_checkpointing=True) and SFTConfig's
    # gradient_checkpointing=True. LIBRARY_DEFAULTS names those configurations.
    "qlora_hf": dict(label="QLoRA, PEFT's way (prepare_model_for_kbit_training + transformers.Trainer)",
                     trainable="lora", quant="nf4", double_quant=True, upcast=True, lora_dtype="fp32",
                     loss="full_logits", liger=False, grad_ckpt=False, optim="adamw", amp=False),
    "qlora_trl": dict(label="QLoRA, TRL's SFTTrainer", trainable="lora", quant="nf4",
                      double_quant=True, upcast=False, lora_dtype="bf16", loss="chunked", liger=False,
                      grad_ckpt=False, optim="adamw", amp=True),
    "qlora_recipe": dict(label="QLoRA, course recipe", trainable="lora", quant="nf4", double_quant=True,
                         upcast=False, lora_dtype="bf16", loss="chunked", liger=True, grad_ckpt=True,
                         optim="paged_adamw_8bit", amp=True, fixed=("grad_ckpt", "optim")),
}

# The libraries' defaults against the course recipe (what the recipe really changes): PEFT's
# prepare_model_for_kbit_training and TRL's SFTConfig both turn gradient checkpointing on by default.
LIBRARY_DEFAULTS: list[tuple[str, dict]] = [
    ("HF defaults: prepare_model_for_kbit_training (checkpointing on), fp32 LoRA, transformers.Trainer",
     dict(method="qlora_hf", grad_ckpt=True, optim="adamw")),
    ("TRL defaults: SFTTrainer (checkpointing on, bf16 autocast, chunked loss, bf16 LoRA)",
     dict(method="qlora_trl", grad_ckpt=True, optim="adamw")),
    ("course recipe: TRL defaults + paged 8-bit AdamW + Liger kernels", dict(method="qlora_recipe")),
]


def defaults_configs(shape: str = "meta-llama/Llama-3.2-3B", seq_len: int = 512, batch: int = 1,
                     attn: str = "sdpa") -> list[tuple[str, TrainConfig]]:
    """The configurations of ``LIBRARY_DEFAULTS`` at a shape."""
    return [(label, TrainConfig(shape=shape, seq_len=seq_len, batch=batch, attn=attn, **change).resolved())
            for label, change in LIBRARY_DEFAULTS]


# The walk from PEFT's QLoRA to the course recipe, one change at a time (Llama-3.2-3B, 512, batch 1).
# It starts *without* gradient checkpointing (not the libraries' default: see LIBRARY_DEFAULTS), so
# that what each other change saves shows before checkpointing shrinks the activations.
RECIPE_WALK: list[tuple[str, dict]] = [
    ("PEFT's QLoRA without checkpointing: prepare_model_for_kbit_training(use_gradient_checkpointing=False), "
     "fp32 LoRA, Trainer (full logits, no mixed precision)",
     dict(method="qlora_hf", grad_ckpt=False, optim="adamw")),
    ("+ no fp32 upcast of embeddings and norms (no checkpointing)", dict(upcast=False)),
    ("+ chunked LM-head loss (TRL SFTTrainer; no checkpointing)", dict(loss="chunked")),
    ("+ paged 8-bit AdamW (no checkpointing)", dict(optim="paged_adamw_8bit")),
    ("+ LoRA weights in bf16 (no checkpointing)", dict(lora_dtype="bf16")),
    ("+ bf16 mixed precision (autocast, SFTConfig's default; no checkpointing)", dict(amp=True)),
    ("+ gradient checkpointing", dict(grad_ckpt=True)),
    ("+ Liger RMSNorm/SwiGLU/RoPE kernels (course recipe)", dict(liger=True)),
]


def recipe_walk_configs(shape: str = "meta-llama/Llama-3.2-3B", seq_len: int = 512, batch: int = 1,
                        attn: str = "sdpa") -> list[tuple[str, TrainConfig]]:
    """The configurations of ``RECIPE_WALK``, each one the previous plus one change."""
    out, cfg = [], None
    for label, change in RECIPE_WALK:
        if cfg is None:
            cfg = TrainConfig(shape=shape, seq_len=seq_len, batch=batch, attn=attn, **change).resolved()
        else:
            cfg = replace(cfg, **change)
        out.append((label, cfg))
    # The last step is the course recipe: name it so, so that the measurement table (which has
    # the recipe's row) and the walk are one row, not two.
    recipe = TrainConfig(shape=shape, seq_len=seq_len, batch=batch, attn=attn, method="qlora_recipe").resolved()
    if replace(cfg, method="qlora_recipe") == recipe:
        out[-1] = (out[-1][0], recipe)
    return out


# Gradient checkpointing buys memory with a second forward pass. TRL's activation offloading buys
# it with copies to CPU memory (overlapped with the forward pass on a second CUDA stream) and back
# (which the backward pass waits for): not measured yet (``memory_bench --grid targets``).
OFFLOAD_ALTERNATIVES: list[tuple[str, dict]] = [
    ("TRL, checkpointing off, activation offloading on",
     dict(method="qlora_trl", grad_ckpt=False, act_offload=True)),
    ("recipe, offloading instead of checkpointing",
     dict(method="qlora_recipe", grad_ckpt=False, act_offload=True)),
]


def offload_configs(shape: str = "meta-llama/Llama-3.2-3B", seq_len: int = 512, batch: int = 1,
                    attn: str = "sdpa") -> list[tuple[str, TrainConfig]]:
    """The configurations of ``OFFLOAD_ALTERNATIVES`` at a shape."""
    return [(label, TrainConfig(shape=shape, seq_len=seq_len, batch=batch, attn=attn, **change).resolved())
            for label, change in OFFLOAD_ALTERNATIVES]


# ------------------------------------------------------------------------------- activations
def textbook_activation_bytes(n_layers: int, hidden: int, batch: int, seq_len: int, n_heads: int,
                              attn: str = "eager", grad_ckpt: bool = False) -> float:
    """The textbook activation memory of a transformer trained in 16-bit (Korthikanti et al.,
    2022): ``L * (34*h*b*s + 5*n_heads*b*s**2)`` bytes with eager attention. The formula is for
    a GPT-style layer with dropout: its 34 and 5 include the dropout masks (1 byte per value),
    which a Llama layer does not have. The flash and memory-efficient SDPA kernels never store the
    ``s x s`` scores, so the second term goes; SDPA's math kernel stores them. With gradient
    checkpointing only each layer's input (``2*h*b*s`` bytes) is kept, plus one layer's full
    activations while it is recomputed in the backward pass."""
    _check_choice("attn", attn, ATTENTIONS)
    per_layer = 34 * hidden * batch * seq_len + (5 * n_heads * batch * seq_len ** 2 if attn == "eager" else 0)
    if grad_ckpt:
        return n_layers * 2 * hidden * batch * seq_len + per_layer
    return n_layers * per_layer


def _nbytes(dtype: str) -> float:
    return DTYPE_BYTES[dtype]


def _dtypes(cfg: TrainConfig) -> dict:
    """Bytes per value of the tensors of one layer, by role (see ``layer_activation_breakdown``)."""
    p = _nbytes(cfg.compute_dtype)
    stream = 4.0 if cfg.upcast else p             # residual stream: fp32 after the upcast
    quant = cfg.quant is not None
    y = stream                                    # norm outputs (fp32 weight x fp32 stream, or p)

    def lin_out(x):  # bitsandbytes returns its input's dtype; a 16-bit layer its compute dtype
        return x if quant else p

    dq = lin_out(y)                               # q, k, v; gate and up
    attn_out = p if cfg.amp else dq               # autocast runs attention in the compute dtype
    return {"p": p, "stream": stream, "y": y, "dq": dq, "attn_out": attn_out, "mlp": dq,
            "lora": _nbytes(cfg.lora_dtype) if cfg.lora else None, "quant": quant}


def sdpa_backend(cfg: TrainConfig, flash_attention: bool = True, device: str = "cuda") -> str:
    """The kernel PyTorch's SDPA picks on a GPU: ``flash`` (16-bit, Ampere or newer: pass
    ``flash_attention=False`` for a T4), ``efficient`` (fp32, or no flash, without grouped-query
    attention) or ``math``, which materialises the scores (fp32 with grouped-query attention,
    e.g. PEFT's upcast model trained without mixed precision). On the CPU, PyTorch's
    flash kernel takes every dtype."""
    if device == "cpu":
        return "flash"
    d = _dtypes(cfg)
    g = _dims(get_shape(cfg.shape))
    a = d["p"] if cfg.amp else d["dq"]
    if a != 4 and flash_attention:
        return "flash"
    return "efficient" if g["nh"] == g["nkv"] else "math"


def layer_activation_breakdown(cfg: TrainConfig, flash_attention: bool = True, device: str = "cuda") -> dict:
    """Bytes one decoder layer saves for the backward pass, by tensor group, as transformers'
    Llama layer, PEFT's LoRA layers and bitsandbytes' 4-bit layers save them.

    Rules (checked against the saved-tensor hooks of a real model in the tests):
    - RMSNorm keeps an fp32 copy of its input (and the normalised input when its weight trains);
    - a linear layer whose weight trains, or that carries LoRA, keeps its input; a frozen 16-bit or
      4-bit base layer keeps nothing. Several layers reading the same input share it, unless each
      casts it: under autocast to the compute dtype (an fp32 input, or PEFT's cast to fp32 LoRA
      weights on a 16-bit base), without autocast to the LoRA weights' dtype;
    - attention keeps q, k, v and its output (SDPA's flash and efficient kernels: plus the
      log-sum-exp), or with eager attention the repeated k and v, the fp32 softmax and its
      compute-dtype copy; SDPA's math kernel keeps the scaled q and k, the repeated v and the softmax;
    - the SwiGLU MLP keeps gate, SiLU(gate) and up (Liger's kernel: gate and up only).
    """
    cfg = cfg.resolved()
    g = _dims(get_shape(cfg.shape))
    T, b, s = cfg.batch * cfg.seq_len, cfg.batch, cfg.seq_len
    d = _dtypes(cfg)
    p, stream = d["p"], d["stream"]
    full = not cfg.lora

    def consumers(n: float, x: float, k: int, already_saved: bool = False) -> float:
        """Bytes the k linear layers that read one input of n values (x bytes each) keep."""
        if full:
            if cfg.amp and x != p:
                return k * n * p                  # each autocast cast is a copy of its own
            return 0.0 if already_saved else n * (p if cfg.amp else x)
        lb = d["lora"]
        if cfg.lora_dropout > 0:                  # a dropout output and its bool mask, each
            return k * n * ((p if cfg.amp else lb) + 1)
        if cfg.amp:
            casts = x != p or (cfg.lora_dtype == "fp32" and not d["quant"])
            return k * n * p if casts else (0.0 if already_saved else n * p)
        return k * n * lb if x != lb else (0.0 if already_saved else n * lb)

    out: dict[str, float] = {}
    if cfg.liger:
        out["norms"] = 2 * (T * g["h"] * stream + 4 * T)
    else:
        out["norms"] = 2 * (4 * T * g["h"] + 4 * T + (T * g["h"] * stream if full else 0))
    out["attention inputs (q, k, v)"] = consumers(T * g["h"], d["y"], 3)
    n_rep = g["nh"] // g["nkv"]
    qkv = p if cfg.amp else d["dq"]               # what attention keeps of q, k and v
    backend = sdpa_backend(cfg, flash_attention, device) if cfg.attn == "sdpa" else "eager"
    if backend in ("flash", "efficient"):
        out["attention"] = T * (g["q"] + 2 * g["kv"]) * qkv + T * g["q"] * d["attn_out"] + 4 * b * g["nh"] * s
        out["attention output (o_proj input)"] = consumers(T * g["q"], d["attn_out"], 1, already_saved=True)
    elif backend == "math":
        out["attention"] = 3 * T * g["q"] * qkv
        out["attention scores (SDPA math kernel)"] = qkv * b * g["nh"] * s * s
        out["attention output (o_proj input)"] = consumers(T * g["q"], d["attn_out"], 1)
    else:
        kv_saved = g["q"] if n_rep > 1 else g["kv"]
        out["attention"] = T * (g["q"] + 2 * kv_saved) * qkv
        # the fp32 softmax, and its copy in the attention's dtype (none when that is fp32 too)
        out["attention scores (eager)"] = (4 + (qkv if qkv != 4 else 0)) * b * g["nh"] * s * s
        out["attention output (o_proj input)"] = consumers(T * g["q"], d["attn_out"], 1)
    out["MLP inputs (gate, up)"] = consumers(T * g["h"], d["y"], 2)
    out["MLP (gate, SiLU, up)"] = (2 if cfg.liger else 3) * T * g["i"] * d["mlp"]
    out["MLP down_proj input"] = consumers(T * g["i"], d["mlp"], 1)
    if cfg.lora:
        out["LoRA A outputs"] = len(layer_linears(cfg.shape)) * T * cfg.lora_r * (p if cfg.amp else d["lora"])
        if cfg.amp and cfg.lora_dtype == "fp32" and p != 4:
            # autocast casts each fp32 LoRA weight to the compute dtype once per forward and keeps
            # the copy for the backward pass
            out["LoRA weight copies (autocast)"] = sum(
                cfg.lora_r * (x.in_features + x.out_features) for x in layer_linears(cfg.shape)) * p
    return out


def _layer_backward_transient(cfg: TrainConfig, flash_attention: bool = True, device: str = "cuda") -> float:
    """The largest gradient buffers alive inside one layer's backward pass (an approximation):
    the MLP's intermediate gradients, the residual-stream gradients, the attention's gradients
    (eager: the scores'; SDPA: q, k, v and flash attention's fp32 dq accumulator), and for 4-bit
    layers one dequantised weight."""
    g = _dims(get_shape(cfg.shape))
    T, b, s = cfg.batch * cfg.seq_len, cfg.batch, cfg.seq_len
    d = _dtypes(cfg)
    a = d["attn_out"]
    mlp = 3 * T * g["i"] * d["mlp"]
    if cfg.attn == "eager":
        # the softmax's backward: the fp32 gradient it receives and the one it returns (the
        # 16-bit gradient of the attention weights is freed once cast to fp32). Measured on an
        # H100 (SmolLM2-135M and Llama-3.2-1B, 2048 tokens): within 3% of the peak.
        attn = 8 * b * g["nh"] * s * s
    elif sdpa_backend(cfg, flash_attention, device) == "math":
        attn = (2 * a + 8) * b * g["nh"] * s * s
    else:
        attn = T * g["q"] * (3 * a + 4)
    dequant = max(x.in_features * x.out_features for x in layer_linears(cfg.shape)) * d["p"] if d["quant"] else 0.0
    return max(mlp, attn) + 2 * T * g["h"] * d["stream"] + dequant


# ---------------------------------------------------------------------------------- estimate
@dataclass
class MemoryEstimate:
    """An estimate: ``parts`` (bytes) add up to ``peak_bytes``; ``paged_bytes`` lives outside
    PyTorch's allocator (paged optimizers); ``phase`` says when the peak happens."""

    config: TrainConfig
    parts: dict = field(default_factory=dict)
    paged_bytes: float = 0.0
    phase: str = ""
    device: str = "cuda"
    flash_attention: bool = True
    # What each phase of the step holds besides the weights and optimizer states; ``parts`` takes
    # the largest. ``course_utils.sharding`` re-picks it once the model states are split.
    phases: dict = field(default_factory=dict)

    @property
    def peak_bytes(self) -> float:
        return float(sum(self.parts.values()))

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / MIB

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB

    def table(self):
        """The parts as a pandas DataFrame (MiB and percent of the peak)."""
        import pandas as pd

        rows = [{"part": k, "MiB": v / MIB, "share %": 100 * v / self.peak_bytes if self.peak_bytes else 0.0}
                for k, v in self.parts.items() if v > 0]
        if self.paged_bytes:
            rows.append({"part": "paged optimizer states (outside PyTorch's allocator)",
                         "MiB": self.paged_bytes / MIB, "share %": float("nan")})
        return pd.DataFrame(rows)

    def __str__(self) -> str:
        lines = [f"{self.config.short_shape} {self.config.method} s={self.config.seq_len} "
                 f"b={self.config.batch}: {self.peak_mib:,.0f} MiB at {self.phase}"]
        lines += [f"  {k:<38} {v / MIB:>10,.1f} MiB" for k, v in self.parts.items() if v > 0]
        if self.paged_bytes:
            lines.append(f"  {'(paged optimizer states, not counted)':<38} {self.paged_bytes / MIB:>10,.1f} MiB")
        return "\n".join(lines)


def estimate_training_memory(config: TrainConfig | str | None = None, *, device: str = "cuda",
                             flash_attention: bool = True, **fields) -> MemoryEstimate:
    """Estimate the peak memory PyTorch allocates during training steps of a configuration.

    ``estimate_training_memory("meta-llama/Llama-3.2-3B", method="qlora_recipe", seq_len=512)``
    or ``estimate_training_memory(TrainConfig(...))``. ``device="cpu"`` leaves out the CUDA
    workspaces (for comparisons with CPU measurements); ``flash_attention=False`` for GPUs
    without flash attention (a T4: compute capability below 8.0).

    ``loss="chunked"`` (TRL's fused LM head) is modelled as its GPU kernel runs it. On a CPU, TRL
    folds the same vocabulary tiles with plain torch ops and their fp32 temporaries, which this
    estimate leaves out (about 60% under for a 2-layer SmolLM2 at 128 tokens): compare CPU runs
    with ``loss="full_logits"``.
    """
    if isinstance(config, str):
        config = TrainConfig(shape=config, **fields)
    elif config is None:
        config = TrainConfig(**fields)
    elif fields:
        config = replace(config, **fields)
    if not isinstance(config, TrainConfig):
        raise ValueError("Pass a model id such as 'meta-llama/Llama-3.2-3B' or a TrainConfig.")
    _check_choice("device", device, ("cuda", "cpu"))
    cfg = config.resolved()
    shape = _get_shape(cfg.shape, cfg.layers)
    g = _dims(shape)
    pc = count_parameters(cfg.shape, cfg.layers)
    p = _nbytes(cfg.compute_dtype)
    T, L, V, h = cfg.batch * cfg.seq_len, g["L"], g["V"], g["h"]
    N = cfg.batch * (cfg.seq_len - 1)  # tokens with a next-token label
    full = not cfg.lora
    parts: dict[str, float] = {}

    # Weights.
    if cfg.quant:
        w = weights_bytes(cfg.shape, cfg.quant, double_quant=bool(cfg.double_quant),
                          other_dtype="fp32" if cfg.upcast else cfg.compute_dtype, layers=cfg.layers)
        parts["weights (4-bit linear layers)"] = w["linear"]
        parts["quantisation constants"] = w["quant_constants"]
        parts["weights (embeddings, norms, LM head)"] = w["other"]
    else:
        parts["weights"] = pc.total * p
    head_weight_bytes = 4.0 if cfg.upcast else p

    # Trainable parameters, gradients, optimizer.
    if cfg.lora:
        n_train = lora_parameters(cfg.shape, cfg.lora_r, layers=cfg.layers)
        train_bytes = _nbytes(cfg.lora_dtype)
        parts["LoRA weights"] = n_train * train_bytes
        sizes = []
        for x in model_linears(cfg.shape, cfg.layers):
            sizes += [cfg.lora_r * x.in_features, cfg.lora_r * x.out_features]
    else:
        n_train, train_bytes = pc.total, p
        sizes = [x.in_features * x.out_features for x in model_linears(cfg.shape, cfg.layers)]
        if pc.lm_head:
            sizes.append(pc.lm_head)
        sizes.append(pc.other + pc.extra)
    grads = n_train * train_bytes
    # a full fine-tune trains the embedding: in 32-bit states even with an 8-bit optimizer (Trainer)
    embedding = [] if cfg.lora else [pc.embedding]
    opt = optimizer_bytes(cfg.optim, param_bytes=train_bytes, tensor_sizes=sizes, fp32_state_sizes=embedding)
    parts["optimizer states"] = opt["allocated"]

    # Activations kept for the backward pass.
    per_layer = layer_activation_breakdown(cfg, flash_attention, device)
    a_layer = sum(per_layer.values())
    stream = 4.0 if cfg.upcast else p
    final_norm = 4 * T * h + 4 * T + (T * h * p if full else 0)
    eager_mask = cfg.batch * cfg.seq_len ** 2 * p if cfg.attn == "eager" else 0.0
    if cfg.act_offload:
        # TRL's activation offloading copies every saved tensor to CPU memory as the forward pass
        # makes it and brings it back when the backward pass needs it: about one layer's tensors
        # are on the GPU at a time (the last few of the forward pass, or the ones coming back).
        kept = (T * h * stream if cfg.grad_ckpt else a_layer) + eager_mask
    elif cfg.grad_ckpt:
        kept = L * T * h * stream + eager_mask + final_norm
    else:
        kept = L * a_layer + eager_mask + final_norm

    # The LM head and the loss.
    if cfg.loss == "full_logits":
        logits = p if cfg.amp else head_weight_bytes
        # the fp32 log-softmax; with an fp32 LM head under autocast, the bf16 copy of its weight
        head_saved = 4 * T * V + (V * h * p if cfg.amp and head_weight_bytes != p else 0.0)
        head_fwd = T * V * logits + (4 * T * V if logits != 4 else 0.0)  # logits (+ fp32 copy)
        # backward: the gradients of log-softmax and of the fp32 logits (8TV); later the 16-bit
        # logits gradient (2TV) with the LM head's weight gradient, when it trains
        head_bwd = max(8 * T * V, (V * h * p - 2 * T * V) if full else 0.0)
    else:
        compute = p if cfg.amp else stream          # TRL's head computes in the autocast dtype
        tile = min(N, LM_HEAD_TOKEN_CHUNK) * LM_HEAD_VOCAB_CHUNK * compute
        w_cast = LM_HEAD_VOCAB_CHUNK * h * compute if head_weight_bytes != compute else 0.0
        head_saved = N * h * stream + 3 * N * 4
        head_fwd = tile + w_cast
        head_bwd = tile + w_cast + N * h * (4 + stream) + (V * h * (4 + p) if full else 0.0)

    layer_bwd = _layer_backward_transient(cfg, flash_attention, device)
    recompute = a_layer if cfg.grad_ckpt else 0.0
    grad_name = "LoRA gradients" if cfg.lora else "gradients"
    phases = {
        "the end of the forward pass": {"activations": kept, "logits and loss": head_saved + head_fwd},
        "the start of the backward pass": {"activations": kept, "logits and loss": head_saved + head_bwd},
        "the backward pass of the last layer": {"activations": kept + recompute,
                                                "transient buffers": layer_bwd,
                                                # LoRA: all of them (small); full: the LM head's and the layer's
                                                grad_name: grads if cfg.lora else (V * h + pc.linear / L) * p},
        "the optimizer step": {grad_name: grads},
    }
    if full:
        # Gradients build up while activations are freed; at the end of the backward pass all
        # gradients are there, plus the embedding's dense gradient being accumulated.
        # With tied embeddings the embedding's dense gradient is added to the LM head's (two
        # copies in flight); untied, it becomes the gradient itself.
        tied_extra = 2 * pc.embedding * p if shape["tie_word_embeddings"] else 0.0
        phases["the end of the backward pass"] = {grad_name: grads,
                                                  "transient buffers": tied_extra + 2 * T * h * stream}
        # The first layer's backward comes when (nearly) every gradient is already there, with
        # that layer's activations (recomputed, under checkpointing) and its transient buffers:
        # the peak when those are large (eager attention on long sequences).
        phases["the backward pass of the first layer"] = {grad_name: grads, "activations": a_layer + eager_mask,
                                                          "transient buffers": layer_bwd}
    phase = max(phases, key=lambda k: sum(phases[k].values()))
    for name in ("activations", "logits and loss", "transient buffers", grad_name):
        parts[name] = phases[phase].get(name, 0.0)
    if device == "cuda":
        parts["CUDA workspaces (assumed)"] = CUDA_WORKSPACE_BYTES
    return MemoryEstimate(config=cfg, parts=parts, paged_bytes=opt["paged"], phase=phase, device=device,
                          flash_attention=flash_attention, phases=phases)


def estimate_mib(config: TrainConfig, device: str = "cuda") -> float:
    """``estimate_training_memory(config).peak_mib``, for tables."""
    return estimate_training_memory(config, device=device).peak_mib


# ------------------------------------------------------------------------- measured footprints
def quantized_footprint(model) -> dict:
    """What a loaded model's weights really take, counting what ``get_memory_footprint()``
    leaves out: bitsandbytes keeps 4-bit quantisation constants (absmax, and with double
    quantisation its own absmax and code) in a ``quant_state`` that is neither a parameter nor a
    buffer, and LLM.int8 its row scales (``SCB``).

    Returns ``{"parameters_and_buffers": ..., "quant_constants": ..., "total": ...}`` in bytes.
    """
    seen, params = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.data_ptr(), t.numel())
        if key not in seen:
            seen.add(key)
            params += t.numel() * t.element_size()
    constants, seen_states = 0, set()
    for module in model.modules():
        w = getattr(module, "weight", None)
        qs = getattr(w, "quant_state", None)
        if qs is not None and id(qs) not in seen_states:
            seen_states.add(id(qs))
            for name in ("absmax", "code"):
                t = getattr(qs, name, None)
                if t is not None and name == "absmax":
                    constants += t.numel() * t.element_size()
            if getattr(qs, "nested", False) and qs.state2 is not None:
                for t in (qs.state2.absmax, qs.state2.code):
                    constants += t.numel() * t.element_size()
        scb = getattr(w, "SCB", None)
        if scb is not None and (scb.data_ptr(), scb.numel()) not in seen:
            constants += scb.numel() * scb.element_size()
    return {"parameters_and_buffers": params, "quant_constants": constants, "total": params + constants}


def saved_tensor_bytes(model, inputs: dict, *, autocast_dtype=None) -> int:
    """Measure the bytes autograd keeps for the backward pass during one forward pass.

    Every tensor saved for backward passes through ``torch.autograd.graph.saved_tensors_hooks``;
    we count each storage once and leave out the model's own parameters and buffers (weights
    are counted as weights). Works on any device, the CPU included: the activations a model
    saves do not depend on where it runs. ``autocast_dtype`` runs the forward under autocast, as
    the Trainer does with ``bf16=True``.
    """
    import torch

    own = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    seen: dict[int, int] = {}

    def pack(t):
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return t
        ptr = storage.data_ptr()
        if ptr not in own and ptr not in seen:
            seen[ptr] = storage.nbytes()
        return t

    device = next(model.parameters()).device.type
    ctx = (torch.autocast(device, dtype=autocast_dtype) if autocast_dtype is not None
           else torch.autocast(device, enabled=False))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
        out = model(**inputs)
    del out
    return int(sum(seen.values()))


# ----------------------------------------------------------------------- the lecture's table
LECTURE_TABLE = "lecture_vram_table.csv"
# The lecture (Unsloth's published table) gives sizes, not models: the shape we estimate each with.
LECTURE_STAND_INS = {
    3: "meta-llama/Llama-3.2-3B", 7: "meta-llama/Llama-2-7b-hf", 8: "meta-llama/Llama-3.1-8B",
    9: "google/gemma-2-9b", 11: "meta-llama/Llama-3.2-11B-Vision", 14: "Qwen/Qwen2.5-14B",
    27: "google/gemma-2-27b", 32: "Qwen/Qwen2.5-32B", 40: "nominal/40B", 70: "meta-llama/Llama-3.1-70B",
    81: "nominal/81B", 90: "meta-llama/Llama-3.2-90B-Vision", 405: "meta-llama/Llama-3.1-405B",
}
# What we assume the published columns mean (the table does not say): one sequence of 2048
# tokens, LoRA r=16 on every linear layer, gradient checkpointing and 8-bit AdamW, as in
# Unsloth's example notebooks.
LECTURE_ASSUMPTIONS = dict(seq_len=2048, batch=1, grad_ckpt=True, optim="adamw_8bit", lora_r=16)


def load_lecture_table():
    """The lecture's VRAM table (Unsloth's published figures, in GB), as a DataFrame."""
    from pathlib import Path

    import pandas as pd

    return pd.read_csv(Path(__file__).parent / "data" / LECTURE_TABLE)


def compare_with_lecture(**assumptions):
    """The lecture's published figures side by side with our estimates, in GB (10^9 bytes).

    Columns: ``params_b``, ``stand_in``, then for ``qlora`` and ``lora``: the published figure,
    our estimate, the ratio estimate/published, and our count of the weights alone.
    ``assumptions`` override ``LECTURE_ASSUMPTIONS``.
    """
    import pandas as pd

    settings = {**LECTURE_ASSUMPTIONS, **assumptions}
    rows = []
    for _, r in load_lecture_table().iterrows():
        size = int(r["params_b"])
        shape = LECTURE_STAND_INS[size]
        q = estimate_training_memory(shape, method="qlora_trl", **settings)
        lo = estimate_training_memory(shape, method="lora16", **settings)
        rows.append({
            "params_b": size, "stand_in": short_name(shape),
            "qlora_published_gb": r["qlora_4bit_gb"], "qlora_estimate_gb": q.peak_bytes / 1e9,
            "qlora_ratio": q.peak_bytes / 1e9 / r["qlora_4bit_gb"],
            "qlora_weights_gb": weights_bytes(shape, "nf4", double_quant=True)["total"] / 1e9,
            "lora_published_gb": r["lora_16bit_gb"], "lora_estimate_gb": lo.peak_bytes / 1e9,
            "lora_ratio": lo.peak_bytes / 1e9 / r["lora_16bit_gb"],
            "lora_weights_gb": weights_bytes(shape, "bf16")["total"] / 1e9,
            "qlora_rest_gb": (q.peak_bytes - _weight_part(q)) / 1e9,
            "lora_rest_gb": (lo.peak_bytes - _weight_part(lo)) / 1e9,
        })
    return pd.DataFrame(rows)


def _weight_part(est: MemoryEstimate) -> float:
    return sum(v for k, v in est.parts.items() if k.startswith(("weights", "quantisation")))


def explain_lecture_difference(row, column: str = "qlora", threshold: float = 0.2) -> str | None:
    """One sentence on a difference larger than ``threshold`` (20%) between our estimate and the
    published figure of ``row`` (a row of ``compare_with_lecture()``), or None."""
    pub, est = row[f"{column}_published_gb"], row[f"{column}_estimate_gb"]
    weights, rest = row[f"{column}_weights_gb"], row[f"{column}_rest_gb"]
    ratio = est / pub
    what = "QLoRA (4-bit)" if column == "qlora" else "LoRA (16-bit)"
    if abs(ratio - 1) <= threshold:
        return None
    head = f"{row['params_b']}B {what}: we estimate {est:.1f} GB, {ratio:.2f}x the published {pub:g} GB. "
    if weights >= pub:
        return head + (f"The weights alone take {weights:.1f} GB by our count for {row['stand_in']}, more than "
                       "the published total: the published figure must assume a smaller model (a smaller "
                       "vocabulary, untied embeddings quantised too) or keep part of it off the GPU.")
    if ratio > 1:
        return head + (f"Besides {weights:.1f} GB of weights we count {rest:.1f} GB for LoRA, optimizer, "
                       "activations and the loss at 2048 tokens; the published figure leaves only "
                       f"{pub - weights:.1f} GB for them, so it must assume shorter sequences or offloading.")
    return head + (f"The published figure is {pub - est:.1f} GB above ours: it is what the GPU shows in use "
                   "(the allocator's reserve and the CUDA context included) or assumes longer sequences or "
                   "larger batches; our figure is the peak PyTorch allocates.")
