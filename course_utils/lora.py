"""LoRA helpers for notebook 04: PEFT reference layers, adapter surgery and measurements.

The notebook asks the student to write a LoRA layer and a parameter counter; this module holds
what the notebook *uses* to check and measure them: a PEFT layer built from given ``A`` and ``B``,
the step-0 effect of PEFT's initialisations, deterministic "as if trained" adapters, adapter
deltas, folder sizes and fair forward timings.

Shapes follow the maths of the notebook: ``y = x @ W + (alpha / r) * x @ A @ B`` with
``A: (in_features, r)`` and ``B: (r, out_features)``. PEFT stores the transposes
(``lora_A.weight: (r, in)``, ``lora_B.weight: (out, r)``), like ``nn.Linear`` does.
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from pathlib import Path

LORA_INITS = ("default", "gaussian", "olora", "pissa")


def lora_scaling(r: int, alpha: float, use_rslora: bool = False) -> float:
    """``alpha / r`` (LoRA) or ``alpha / sqrt(r)`` (rank-stabilised LoRA)."""
    if not isinstance(r, int) or r <= 0:
        raise ValueError(f"The LoRA rank r must be a positive integer, got {r!r}.")
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def peft_lora_linear(base, A, B, *, alpha: float, use_rslora: bool = False):
    """PEFT's own ``lora.Linear`` around a copy of ``base``, with the given ``A`` and ``B``.

    ``A`` is ``(in_features, r)`` and ``B`` is ``(r, out_features)``, as in the notebook. The
    result is the layer PEFT would build inside a model, so comparing a hand-written layer with it
    compares against the library, not against another hand-written formula.
    """
    import torch
    from torch import nn
    from peft import LoraConfig, inject_adapter_in_model

    if not isinstance(base, nn.Linear):
        raise ValueError(f"base must be a torch.nn.Linear, got {type(base).__name__}.")
    A, B = torch.as_tensor(A), torch.as_tensor(B)
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != base.in_features or B.shape[1] != base.out_features \
            or A.shape[1] != B.shape[0]:
        raise ValueError(
            f"A must be (in_features={base.in_features}, r) and B (r, out_features={base.out_features}); "
            f"got A {tuple(A.shape)} and B {tuple(B.shape)}.")
    r = A.shape[1]

    class _Holder(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

    holder = _Holder(copy.deepcopy(base))
    config = LoraConfig(r=r, lora_alpha=alpha, use_rslora=use_rslora, target_modules=["layer"],
                        lora_dropout=0.0)
    holder = inject_adapter_in_model(config, holder)
    layer = holder.layer
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(A.T.to(layer.lora_A["default"].weight.dtype))
        layer.lora_B["default"].weight.copy_(B.T.to(layer.lora_B["default"].weight.dtype))
    return layer


def linear_shapes(model) -> dict[str, tuple[int, int]]:
    """``{module name: (in_features, out_features)}`` for every ``nn.Linear`` in ``model``."""
    from torch import nn

    return {name: (m.in_features, m.out_features) for name, m in model.named_modules()
            if isinstance(m, nn.Linear)}


def base_parameter_count(model) -> int:
    """Parameters of the model (tied weights counted once), as PEFT's "all params" counts them."""
    return sum(p.numel() for p in model.parameters())


def randomize_adapter(peft_model, adapter_name: str = "default", *, std: float = 0.02,
                      seed: int = 0) -> None:
    """Give ``adapter_name`` non-zero, seeded ``B`` matrices, as if it had been trained.

    A fresh LoRA adapter has ``B = 0`` and changes nothing; merging, combining and timing an adapter
    are only worth checking on one that does something. ``std`` keeps the change small, like a
    real fine-tune.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    found = False
    with torch.no_grad():
        for module in peft_model.modules():
            lora_B = getattr(module, "lora_B", None)
            if lora_B is not None and adapter_name in lora_B:
                w = lora_B[adapter_name].weight
                w.copy_(torch.randn(w.shape, generator=gen).mul_(std).to(w.dtype))
                found = True
    if not found:
        raise ValueError(f"No LoRA adapter named {adapter_name!r} in this model; "
                         f"it has {list(getattr(peft_model, 'peft_config', {}))}.")


def lora_layers(peft_model) -> dict:
    """``{module name: LoRA layer}`` for every PEFT LoRA layer in ``peft_model``."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in peft_model.named_modules() if isinstance(m, LoraLayer)}


def delta_weight(layer, adapter_name: str = "default"):
    """The change ``scaling * B @ A`` (PEFT's layout, ``(out, in)``) an adapter adds to one layer."""
    return layer.get_delta_weight(adapter_name)


def logits(model, inputs):
    """The model's logits for ``inputs`` (a dict of tensors): eval mode (no dropout; note that
    ``get_peft_model`` returns a model in training mode), no gradients, float32."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(**inputs).logits.float()
    finally:
        model.train(was_training)


def max_abs_diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


def init_effects(model, inputs, *, inits=LORA_INITS, r: int = 8,
                 target_modules=("q_proj", "v_proj")) -> list[dict]:
    """What each PEFT initialisation changes at step 0, measured on a copy of ``model``.

    For each init: is ``B`` zero, how far the *base* weights moved (OLoRA and PiSSA move part of
    ``W`` into the adapter), and how far the model's output moved (base + adapter together).
    """
    from peft import LoraConfig, get_peft_model

    unknown = set(inits) - set(LORA_INITS)
    if unknown:
        raise ValueError(f"Unknown init {sorted(unknown)}; choose from {LORA_INITS}.")
    before = logits(model, inputs)
    originals = {n: p.detach().clone() for n, p in model.named_parameters()
                 if any(n.endswith(f"{t}.weight") for t in target_modules)}
    rows = []
    for init in inits:
        config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(target_modules),
                            init_lora_weights=True if init == "default" else init)
        peft_model = get_peft_model(copy.deepcopy(model), config)
        layers = lora_layers(peft_model)
        b_max = max(m.lora_B["default"].weight.abs().max().item() for m in layers.values())
        a_max = max(m.lora_A["default"].weight.abs().max().item() for m in layers.values())
        base_moved = 0.0
        for name, m in layers.items():
            key = name.replace("base_model.model.", "", 1) + ".weight"
            base_moved = max(base_moved, max_abs_diff(m.get_base_layer().weight, originals[key]))
        rows.append({"init": init, "max |A|": a_max, "max |B|": b_max,
                     "base W moved (max)": base_moved,
                     "output moved (max logit)": max_abs_diff(logits(peft_model, inputs), before)})
        del peft_model
    return rows


def folder_size_mb(path) -> float:
    """Total size of the files under ``path``, in MB (10**6 bytes)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist; save something there first.")
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def _sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def merged_vs_unmerged_times(peft_model, inputs, *, rounds: int = 5, repeats: int = 3,
                             warmup: int = 2) -> dict:
    """Median forward time (seconds) of ``peft_model`` with its adapter unmerged and merged.

    The two settings alternate round by round (unmerged, merge, merged, unmerge), so a busy
    machine slows both alike. The model is left unmerged.
    """
    import torch

    if rounds < 1 or repeats < 1:
        raise ValueError("rounds and repeats must be at least 1.")
    device = next(peft_model.parameters()).device
    times = {"unmerged": [], "merged": []}

    def run(n):
        out = []
        for _ in range(n):
            _sync(device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                peft_model(**inputs)
            _sync(device)
            out.append(time.perf_counter() - t0)
        return out

    run(warmup)
    for _ in range(rounds):
        times["unmerged"] += run(repeats)
        peft_model.merge_adapter()
        run(1)
        times["merged"] += run(repeats)
        peft_model.unmerge_adapter()
    return {k: statistics.median(v) for k, v in times.items()}
