"""LoRA: low-rank adapters on chosen linear layers, found by their Hugging Face module names.

An adapted layer computes  y = x W^T + b + scaling * B(A(dropout(x)))  with W (and b) frozen, A (r, in)
and B (out, r) trained, scaling = alpha / r (alpha / sqrt(r) with rsLoRA), exactly as PEFT's LoRA layer
does, so that an adapter saved in PEFT's format (adapter.py) gives the same logits under `peft`.

Targets follow PEFT's rule for a list of names: a module matches when its full name equals a target or
ends with "." + target (`q_proj` matches `model.layers.3.self_attn.q_proj`); `all-linear` takes every
linear layer of the decoder blocks. Only `nn.Linear` modules inside the decoder blocks (`model.layers.*`)
are adapted; never the LM head, the MTP modules or the routed experts (transformers stores DeepSeek's
routed experts as fused tensors, not linear modules, so a PEFT adapter could not hold them). The router's
balancing bias belongs to the base model and is frozen with it.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class LoRASpec:
    """What an adapter is: rank, alpha, dropout, target names (resolved, not `all-linear`), rsLoRA."""

    r: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]
    rslora: bool = False

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)


class LoRALinear(nn.Linear):
    """A linear layer with a LoRA adapter. Holds the base layer's own weight and bias (the same Parameter
    objects, so the base's state-dict names are unchanged) plus `lora_A` and `lora_B`."""

    def __init__(self, base: nn.Linear, spec: LoRASpec):
        nn.Module.__init__(self)  # not nn.Linear.__init__: reuse the base's weight rather than allocate one
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(base.in_features, spec.r, bias=False, **factory)  # PEFT's init: kaiming-uniform
        self.lora_B = nn.Linear(spec.r, base.out_features, bias=False, **factory)
        nn.init.zeros_(self.lora_B.weight)  # so the adapted model starts as the base
        self.lora_dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.scaling = spec.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """scaling * B @ A: what merging adds to the base weight (in float32, then the weight's dtype)."""
        delta = self.lora_B.weight.float() @ self.lora_A.weight.float() * self.scaling
        return delta.to(self.weight.dtype)


def decoder_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """(full name, module) of every linear layer that LoRA may adapt: inside `model.layers.*`, not a routed
    expert, not an adapter's own A or B."""
    for name, module in model.named_modules():
        if (isinstance(module, nn.Linear) and name.startswith("model.layers.") and ".mlp.experts." not in name
                and not re.search(r"\.lora_[AB]$", name)):
            yield name, module


def parse_targets(targets: str | list[str] | tuple[str, ...]) -> list[str]:
    items = targets.split(",") if isinstance(targets, str) else list(targets)
    return [t.strip() for t in items if t.strip()]


def matches(name: str, targets: list[str]) -> bool:
    return ALL_LINEAR in targets or any(name == t or name.endswith("." + t) for t in targets)


def resolve_targets(model: nn.Module, targets: str | list[str]) -> tuple[str, ...]:
    """The module names (last component, as PEFT's target_modules) that `targets` selects; an error naming
    the available ones when a target selects nothing."""
    wanted = parse_targets(targets)
    if not wanted:
        raise ValueError("lora.targets is empty; name linear layers (e.g. q_proj,v_proj) or say all-linear")
    linears = [name for name, _ in decoder_linears(model)]
    available = sorted({n.rsplit(".", 1)[-1] for n in linears})
    for target in wanted:
        if not any(matches(n, [target]) for n in linears):
            raise ValueError(f"lora.targets: {target!r} matches no linear layer of the decoder blocks; "
                             f"this model has {', '.join(available)} (or say all-linear)")
    return tuple(sorted({n.rsplit(".", 1)[-1] for n in linears if matches(n, wanted)}))


def add_adapters(model: nn.Module, spec: LoRASpec) -> int:
    """Replace each targeted linear layer by a LoRALinear (fresh adapter: A random, B zero); freeze every
    other parameter. Returns how many layers got an adapter."""
    chosen = [(name, module) for name, module in decoder_linears(model) if matches(name, list(spec.targets))]
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, LoRALinear(module, spec))
    freeze_base(model)
    return len(chosen)


def freeze_base(model: nn.Module) -> None:
    """Only the adapters train."""
    for name, p in model.named_parameters():
        p.requires_grad_(bool(re.search(r"\.lora_[AB]\.weight$", name)))


def adapters(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def has_adapters(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


@torch.no_grad()
def merge_adapters(model: nn.Module) -> int:
    """Fold every adapter into its base weight (W += scaling * B @ A) and put the plain linear layer back.
    Returns how many were merged."""
    found = adapters(model)
    for name, module in found.items():
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
        plain.weight, plain.bias = module.weight, module.bias
        plain.weight.add_(module.delta_weight())
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, plain)
    return len(found)


@contextmanager
def merged_view(model: nn.Module):
    """Inside the block, every adapted layer's `.weight` reads as the merged weight W + scaling * B @ A (a
    new tensor; the base weight is not touched). For code that reads weights rather than calling modules,
    such as the engine deriving its decode layouts; use under torch.no_grad or inference_mode."""
    found = list(adapters(model).values())
    saved = [m._parameters["weight"] for m in found]
    try:
        for m, weight in zip(found, saved):
            m._parameters["weight"] = weight + m.delta_weight()
        yield model
    finally:
        for m, weight in zip(found, saved):
            m._parameters["weight"] = weight
