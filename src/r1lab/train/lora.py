"""LoRA for the training commands (SFT, GRPO, distillation): the `lora.*` config section and the hook that
puts adapters on the model a run trains.

    r1lab sft  --init BASE --out runs/sft-lora  lora.r=8 lora.alpha=16 lora.targets=q_proj,o_proj
    r1lab grpo --init BASE --out runs/grpo-lora lora.r=16 lora.targets=all-linear

With lora.r > 0 only the adapters train (the optimizer sees only them); checkpoints and final/ are adapter
folders in PEFT's format that name BASE as their base model; `--resume` rebuilds BASE + adapter exactly.
lora.r=0 (the default) is full fine-tuning.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError
from ..model.adapter import peft_config
from ..model.lora import LoRASpec, add_adapters, adapters, freeze_base, has_adapters, merge_adapters, resolve_targets


@dataclass
class LoRAConfig:
    r: int = 0  # adapter rank; 0 = off (full fine-tuning)
    alpha: float = 16.0  # the update is scaled by alpha / r (alpha / sqrt(r) with rslora)
    dropout: float = 0.0  # on the adapter's input, in training
    targets: str = "all-linear"  # comma-separated module names as in the HF checkpoint (q_proj,v_proj,...), or all-linear
    rslora: bool = False

    def __post_init__(self) -> None:
        if self.r < 0:
            raise ValueError(f"lora.r must be 0 (off) or a positive rank, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")


def attach_lora(model: nn.Module, cfg: LoRAConfig | None, base: str | None, run) -> nn.Module:
    """The model a run trains. cfg.r > 0: a fresh adapter on the base (seeded with train.seed), or the
    resumed one, and everything else frozen. cfg.r == 0 with an adapter folder as --init: the adapter is
    merged and the whole model trains."""
    if cfg is None or cfg.r == 0:
        if has_adapters(model):
            merge_adapters(model)
            model.requires_grad_(True)
        return model
    if run.train.fsdp:
        raise ConfigError("lora.r > 0 does not combine with train.fsdp=true (use DDP: the base is frozen)")
    try:
        spec = LoRASpec(cfg.r, cfg.alpha, cfg.dropout, resolve_targets(model, cfg.targets), cfg.rslora)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if has_adapters(model):  # resumed (or --init is an adapter folder): train that adapter on
        have = model.peft_config
        if (have["r"], float(have["lora_alpha"]), sorted(have["target_modules"])) != (spec.r, spec.alpha, list(spec.targets)):
            raise ConfigError(f"the model already carries a LoRA adapter (r={have['r']}, alpha={have['lora_alpha']}, "
                              f"targets={','.join(have['target_modules'])}) unlike lora.*; merge it first (r1lab merge)")
        freeze_base(model)
    else:
        if not base:
            raise ConfigError("lora.r > 0 needs --init: the base model the adapters sit on")
        torch.manual_seed(run.train.seed)
        add_adapters(model, spec)
        model.peft_config = peft_config(spec, str(Path(base).resolve()) if Path(base).is_dir() else str(base))
    # the router's balancing bias is part of the base: it stays as it is
    model.config.bias_update_speed = 0.0
    if run.dist.is_main:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        print(f"lora: r={spec.r} alpha={spec.alpha:g} on {len(adapters(model))} layers ({', '.join(spec.targets)}): "
              f"{trainable:,} trainable parameters, {trainable / total:.2%} of {total:,}", file=sys.stderr)
    return model
