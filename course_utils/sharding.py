"""Training memory on several GPUs: DDP, ZeRO-1/2/3 and FSDP (notebook 09).

Built on the one-GPU estimator (``course_utils.memory.estimate_training_memory``): the same parts,
with the **model states** (parameters, gradients, optimizer states) split the way each engine
splits them, and the rest of a step (activations, logits, transient buffers) unchanged, since
every GPU still trains its own per-device batch.

=========  ============================================  ===========================================
strategy   engine                                        what each of the N GPUs keeps
=========  ============================================  ===========================================
``ddp``    PyTorch DDP (accelerate's ``MULTI_GPU``)      everything, plus DDP's gradient buckets
``zero1``  DeepSpeed ZeRO stage 1                        1/N of the optimizer states
``zero2``  DeepSpeed ZeRO stage 2                        1/N of the optimizer states and gradients
``zero3``  DeepSpeed ZeRO stage 3, FSDP ``FULL_SHARD``   1/N of everything, plus the layers being
                                                         gathered (the one computing, the next one)
=========  ============================================  ===========================================

``offload_optimizer`` moves the optimizer states (and the gradients they are stepped with) to CPU
memory (DeepSpeed's ZeRO-Offload); ``offload_params`` also moves the parameters' shards there
(ZeRO-3's ``offload_param``, FSDP's ``CPUOffload``), leaving only the gathered layers on the GPU.

The ZeRO paper (Rajbhandari et al., 2020) counts model states for mixed-precision Adam as
``2Ψ + 2Ψ + KΨ`` bytes (16-bit parameters and gradients, ``K = 12`` for the fp32 master weights
and the two fp32 Adam states); ``zero_model_state_bytes`` is that table, and ``master_weights=True``
makes a full fine-tune keep the same fp32 optimizer copy (DeepSpeed's bf16 mode).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .memory import (DTYPE_BYTES, GIB, MIB, MemoryEstimate, TrainConfig, _check_choice, bytes_per_param,
                     count_parameters, estimate_training_memory, lora_parameters)
from .shapes import get_shape, short_name

STRATEGIES = {
    "ddp": "DDP: every GPU holds a full copy; gradients are all-reduced",
    "zero1": "ZeRO-1: optimizer states sharded",
    "zero2": "ZeRO-2: optimizer states and gradients sharded",
    "zero3": "ZeRO-3 / FSDP full shard: optimizer states, gradients and parameters sharded",
}
# Which of the three model states each strategy splits N ways.
SHARDED = {"ddp": (), "zero1": ("optimizer",), "zero2": ("optimizer", "grads"),
           "zero3": ("optimizer", "grads", "params")}
# Cards of the lecture's question, by their nominal memory in GB (10^9 bytes; nvidia-smi shows a
# little more on the H100 and H200, so the counts below err on the safe side).
CARDS = {"T4 (16 GB)": 16, "A100/H100 (80 GB)": 80, "H200 (141 GB)": 141}

_PARAM_PARTS = ("weights", "weights (4-bit linear layers)", "quantisation constants",
                "weights (embeddings, norms, LM head)", "LoRA weights")
_GRAD_PARTS = ("gradients", "LoRA gradients")
MEASUREMENTS = "memory_measurements.csv"


def _check_gpus(n_gpus):
    if not isinstance(n_gpus, int) or isinstance(n_gpus, bool) or n_gpus <= 0:
        raise ValueError(f"n_gpus must be a positive integer (the number of GPUs), got {n_gpus!r}.")


# -------------------------------------------------------------------------------- the paper
def zero_model_state_bytes(psi: float, n_gpus: int, strategy: str, *, k: float = 12,
                           param_bytes: float = 2, grad_bytes: float = 2) -> dict:
    """Model-state bytes per GPU in the ZeRO paper's accounting (its Table 1): ``Ψ`` parameters,
    ``param_bytes`` and ``grad_bytes`` per parameter for the 16-bit copies and ``k`` bytes of
    optimizer state (12 for mixed-precision Adam), each split ``n_gpus`` ways where the strategy
    shards it. Returns ``{"params", "grads", "optimizer", "total"}``."""
    _check_choice("strategy", strategy, tuple(STRATEGIES))
    _check_gpus(n_gpus)
    full = {"params": param_bytes * psi, "grads": grad_bytes * psi, "optimizer": k * psi}
    out = {name: value / n_gpus if name in SHARDED[strategy] else value for name, value in full.items()}
    out["total"] = sum(out.values())
    return out


# ------------------------------------------------------------------------------ the estimator
@dataclass(frozen=True)
class ShardedEstimate:
    """Per-GPU memory of one configuration on ``n_gpus`` GPUs. ``parts`` (bytes, per GPU) add up
    to ``peak_bytes``, what PyTorch allocates, as in ``MemoryEstimate``; ``paged_bytes`` are the
    GPU's share of paged optimizer states (outside PyTorch's allocator); ``cpu_bytes`` is what offloading puts in the host's memory (all ranks of
    one machine together); ``one_gpu`` is the estimate it was built from."""

    one_gpu: MemoryEstimate
    n_gpus: int
    strategy: str
    offload_optimizer: bool = False
    offload_params: bool = False
    master_weights: bool = False
    parts: dict = field(default_factory=dict)
    cpu_bytes: float = 0.0
    paged_bytes: float = 0.0  # per GPU: paged optimizer states, outside PyTorch's allocator
    phase: str = ""
    phases: dict = field(default_factory=dict)  # per phase: what it holds besides the static parts

    @property
    def config(self) -> TrainConfig:
        return self.one_gpu.config

    @property
    def peak_bytes(self) -> float:
        return float(sum(self.parts.values()))

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB

    @property
    def peak_gb(self) -> float:
        return self.peak_bytes / 1e9

    def model_states(self) -> dict:
        """The per-GPU parameter, gradient and optimizer-state bytes at the optimizer step (when
        every gradient is there: the ZeRO paper's three model states)."""
        return {"params": self.parts.get("parameters", 0.0),
                "grads": self.phases["the optimizer step"]["gradients"],
                "optimizer": self.parts.get("optimizer states", 0.0)}

    def fits(self, gpu_gb: float, reserve_bytes: float | None = None) -> bool:
        """Whether the estimate, plus ``reserve_bytes`` (default: ``device_reserve_bytes()``, the
        CUDA context and allocator slack we measured), fits a card of ``gpu_gb`` GB."""
        reserve = device_reserve_bytes() if reserve_bytes is None else reserve_bytes
        return self.peak_bytes + self.paged_bytes + reserve <= gpu_gb * 1e9

    def table(self):
        """The per-GPU parts as a DataFrame (MiB), with the CPU side of offloading last."""
        import pandas as pd

        rows = [{"part": k, "MiB per GPU": v / MIB} for k, v in self.parts.items() if v > 0]
        if self.paged_bytes:
            rows.append({"part": "paged optimizer states (outside PyTorch's allocator)",
                         "MiB per GPU": self.paged_bytes / MIB})
        if self.cpu_bytes:
            rows.append({"part": "offloaded to CPU memory (all ranks)", "MiB per GPU": float("nan"),
                         "MiB on the host": self.cpu_bytes / MIB})
        return pd.DataFrame(rows)

    def __str__(self) -> str:
        alone = self.n_gpus == 1 and not (self.offload_optimizer or self.offload_params)
        head = (f"{self.config.short_shape} {self.config.method} on "
                + ("1 GPU" if alone else f"{self.n_gpus} GPU(s), {self.strategy}")
                + (", optimizer offloaded" if self.offload_optimizer else "")
                + (", parameters offloaded" if self.offload_params else "")
                + f": {self.peak_bytes / MIB:,.0f} MiB per GPU at {self.phase}")
        lines = [head] + [f"  {k:<36} {v / MIB:>12,.1f} MiB" for k, v in self.parts.items() if v > 0]
        if self.paged_bytes:
            lines.append(f"  {'(paged optimizer states, not counted)':<36} {self.paged_bytes / MIB:>12,.1f} MiB")
        if self.cpu_bytes:
            lines.append(f"  {'(on the host, all ranks)':<36} {self.cpu_bytes / MIB:>12,.1f} MiB")
        return "\n".join(lines)


def _unit_bytes(cfg: TrainConfig) -> dict:
    """The bytes of the largest unit ZeRO-3/FSDP gathers at once: one decoder layer (what
    accelerate's transformer-based wrap makes a unit), and the root unit (embeddings, LM head,
    final norm), in the dtype they are stored in; and one layer's gradients."""
    pc = count_parameters(cfg.shape, cfg.layers)
    n_layers = cfg.layers or get_shape(cfg.shape)["num_hidden_layers"]
    p = DTYPE_BYTES[cfg.compute_dtype]
    linear = pc.linear / n_layers
    per_weight = bytes_per_param(cfg.quant, double_quant=bool(cfg.double_quant)) if cfg.quant else p
    other_dtype = 4.0 if cfg.upcast else p
    layer = linear * per_weight + pc.other / n_layers * other_dtype
    if cfg.lora:
        n_lora = lora_parameters(cfg.shape, cfg.lora_r, layers=cfg.layers) / n_layers
        layer += n_lora * DTYPE_BYTES[cfg.lora_dtype]
        layer_grads = n_lora * DTYPE_BYTES[cfg.lora_dtype]
    else:
        layer_grads = (linear + pc.other / n_layers) * p
    root = (pc.embedding + pc.lm_head) * other_dtype  # a vision encoder (extra) is wrapped layer by layer
    return {"layer": layer, "root": root, "layer_grads": layer_grads}


def estimate_sharded_memory(config: TrainConfig | str | None = None, *, n_gpus: int = 1, strategy: str = "zero3",
                            offload_optimizer: bool = False, offload_params: bool = False,
                            master_weights: bool = False, device: str = "cuda", flash_attention: bool = True,
                            one_gpu: MemoryEstimate | None = None, **fields) -> ShardedEstimate:
    """Estimate the peak memory of each of ``n_gpus`` GPUs training ``config`` with ``strategy``.

    ``config`` and ``fields`` are those of ``estimate_training_memory`` (the per-device batch is
    ``batch``); ``one_gpu`` reuses an estimate already made. At ``n_gpus=1`` without offloading
    every strategy gives the one-GPU estimate (no engine splits anything on one process).

    What it models, per GPU:
    - parameters, gradients and optimizer states split as ``SHARDED[strategy]`` says, paged
      optimizer states included (with ``master_weights``, a full fine-tune's optimizer holds 12
      bytes per parameter: an fp32 master copy and two fp32 Adam states);
    - DDP: a second copy of the gradients, the buckets they are all-reduced in (accelerate's
      default; ``gradient_as_bucket_view=True`` would make them share memory);
    - ZeRO-2/3: while the backward pass runs, one layer's full gradients waiting for their
      reduce-scatter, on top of the shard;
    - ZeRO-3/FSDP: the gathered root unit (embeddings, LM head) and two decoder layers (the one
      computing and the one prefetched);
    - activations, logits and transient buffers as on one GPU: each GPU trains its own batch.
    Not modelled: communication buffers (NCCL's own, DeepSpeed's bucket sizes), fragmentation.
    """
    _check_choice("strategy", strategy, tuple(STRATEGIES))
    _check_gpus(n_gpus)
    for name, value in (("offload_optimizer", offload_optimizer), ("offload_params", offload_params),
                        ("master_weights", master_weights)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}.")
    if offload_params and strategy != "zero3":
        raise ValueError("offload_params needs sharded parameters: use strategy='zero3' "
                         "(ZeRO-3's offload_param, FSDP's CPUOffload).")
    if offload_optimizer and strategy == "ddp":
        raise ValueError("DDP cannot offload the optimizer: use strategy='zero1', 'zero2' or 'zero3' "
                         "(DeepSpeed's offload_optimizer).")
    est = one_gpu if one_gpu is not None else estimate_training_memory(
        config, device=device, flash_attention=flash_attention, **fields)
    cfg = est.config
    if master_weights and (cfg.lora or cfg.optim != "adamw"):
        raise ValueError("master_weights models a full fine-tune with mixed-precision AdamW (fp32 master "
                         "weights and states): use method='full16' with optim='adamw'.")
    offload_optimizer = offload_optimizer or offload_params  # the states follow their parameters
    many = n_gpus > 1
    grad_name = "LoRA gradients" if cfg.lora else "gradients"
    params = sum(est.parts.get(k, 0.0) for k in _PARAM_PARTS)
    grads_total = est.phases["the optimizer step"][grad_name]
    optimizer = est.parts.get("optimizer states", 0.0)
    paged = est.paged_bytes
    if master_weights:
        optimizer = 12.0 * count_parameters(cfg.shape, cfg.layers).total
    shards = SHARDED[strategy]
    units = _unit_bytes(cfg)

    cpu = 0.0
    gpu_params = params / n_gpus if "params" in shards else params
    split = n_gpus if "optimizer" in shards else 1
    gpu_optimizer, gpu_paged = optimizer / split, paged / split
    if offload_params:
        cpu += params
        gpu_params = 0.0
    if offload_optimizer:
        cpu += optimizer + paged + grads_total  # the states, and the gradients the CPU steps them with
        gpu_optimizer = gpu_paged = 0.0
    static = {"parameters": gpu_params, "optimizer states": gpu_optimizer}
    if strategy == "zero3" and (many or offload_params):
        static["gathered layers (ZeRO-3/FSDP)"] = units["root"] + 2 * units["layer"]
    if strategy == "ddp" and many:
        static["DDP gradient buckets"] = grads_total
    static["CUDA workspaces (assumed)"] = est.parts.get("CUDA workspaces (assumed)", 0.0)

    def phase_parts(name):
        parts = dict(est.phases[name])
        held = parts.pop(grad_name, 0.0)
        if "grads" in shards and (many or offload_optimizer):
            partition = 0.0 if offload_optimizer else grads_total / n_gpus
            in_flight = units["layer_grads"] if name != "the optimizer step" else 0.0
            held = min(held, partition + in_flight)
        parts["gradients"] = held
        return parts

    phases = {name: phase_parts(name) for name in est.phases}
    phase = max(phases, key=lambda k: sum(phases[k].values()))
    parts = {**static, **{k: phases[phase].get(k, 0.0)
                          for k in ("gradients", "activations", "logits and loss", "transient buffers")}}
    return ShardedEstimate(one_gpu=est, n_gpus=n_gpus, strategy=strategy, offload_optimizer=offload_optimizer,
                           offload_params=offload_params, master_weights=master_weights, parts=parts,
                           cpu_bytes=cpu, paged_bytes=gpu_paged, phase=phase, phases=phases)


# ------------------------------------------------------------------------ how many GPUs
def device_reserve_bytes() -> float:
    """What a GPU holds beyond PyTorch's peak allocation: the largest gap between the device
    memory in use and ``max_memory_allocated()`` among the measured rows of the shipped memory
    table (the CUDA context, cuBLAS, the allocator's reserve), in bytes."""
    from pathlib import Path

    import pandas as pd

    table = pd.read_csv(Path(__file__).parent / "data" / MEASUREMENTS)
    rows = table[(table["status"] == "measured") & table["device_used_mib"].notna()]
    if rows.empty:
        raise ValueError(f"No measured row of {MEASUREMENTS} records the device memory in use: pass "
                         "reserve_bytes explicitly.")
    return float((rows["device_used_mib"] - rows["peak_alloc_mib"]).max() * MIB)


def fewest_gpus(config: TrainConfig | str | None = None, *, gpu_gb: float, strategy: str = "zero3",
                max_gpus: int = 4096, reserve_bytes: float | None = None, offload_optimizer: bool = False,
                offload_params: bool = False, master_weights: bool = False, **fields) -> int | None:
    """The fewest GPUs of ``gpu_gb`` GB each that fit ``config`` with ``strategy`` (the per-device
    batch and the sequence length as given), or None when even ``max_gpus`` do not: with DDP or
    ZeRO-1/2 the parameters are not split, so adding GPUs stops helping."""
    if not isinstance(gpu_gb, (int, float)) or isinstance(gpu_gb, bool) or gpu_gb <= 0:
        raise ValueError(f"gpu_gb must be a positive number of GB, got {gpu_gb!r}.")
    _check_gpus(max_gpus)
    reserve = device_reserve_bytes() if reserve_bytes is None else reserve_bytes
    base = estimate_training_memory(config, **fields)
    kwargs = dict(strategy=strategy, offload_optimizer=offload_optimizer, offload_params=offload_params,
                  master_weights=master_weights, one_gpu=base)
    # Per-GPU memory never grows with N, so the answer can be bisected.
    if not estimate_sharded_memory(n_gpus=max_gpus, **kwargs).fits(gpu_gb, reserve):
        return None
    lo, hi = 1, max_gpus
    while lo < hi:
        mid = (lo + hi) // 2
        if estimate_sharded_memory(n_gpus=mid, **kwargs).fits(gpu_gb, reserve):
            hi = mid
        else:
            lo = mid + 1
    return lo


def lecture_gpu_table(cards: dict | None = None, strategy: str = "zero3", reserve_bytes: float | None = None,
                      offload_optimizer: bool = False, offload_params: bool = False, **assumptions):
    """For every row of the lecture's VRAM table (Unsloth's single-GPU figures) and both of its
    methods, the fewest GPUs of each card that fit it with ``strategy`` (and offloading, if
    asked), beside the published
    figure and our one-GPU estimate (GB). Same stand-in models and assumptions as
    ``memory.compare_with_lecture`` (2048 tokens, batch 1, checkpointing, 8-bit AdamW)."""
    import pandas as pd

    from .memory import LECTURE_ASSUMPTIONS, LECTURE_STAND_INS, load_lecture_table

    cards = CARDS if cards is None else cards
    settings = {**LECTURE_ASSUMPTIONS, **assumptions}
    reserve = device_reserve_bytes() if reserve_bytes is None else reserve_bytes
    rows = []
    for _, r in load_lecture_table().iterrows():
        shape = LECTURE_STAND_INS[int(r["params_b"])]
        for method, column, label in (("qlora_trl", "qlora_4bit_gb", "QLoRA"), ("lora16", "lora_16bit_gb", "LoRA")):
            cfg = TrainConfig(shape=shape, method=method, **settings)
            one = estimate_training_memory(cfg)
            row = {"params_b": int(r["params_b"]), "stand_in": short_name(shape), "method": label,
                   "published_gb": float(r[column]), "estimate_1gpu_gb": one.peak_bytes / 1e9}
            for card, gb in cards.items():
                row[card] = fewest_gpus(cfg, gpu_gb=gb, strategy=strategy, reserve_bytes=reserve,
                                        offload_optimizer=offload_optimizer, offload_params=offload_params)
            rows.append(row)
    table = pd.DataFrame(rows)
    return table.astype({card: "Int64" for card in cards})  # None (no count fits) shows as <NA>
