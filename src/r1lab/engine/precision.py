"""The dtype the engine serves a checkpoint in: `r1lab serve / generate --dtype` (default auto).

auto is bfloat16 where the device computes it natively and the matrices are wide enough for it to pay,
else float32. Measured with bench/decode.py (one thread, a CPU with AVX512-BF16, r1lab's engine in fp32
against bf16 in the same conditions): a Qwen2 of 30M parameters (hidden 512) decoded 1.1x as fast in bf16
at batch 1 and 2.1x at batch 32; the cpu-tiny and cpu-20m presets (hidden 128 and 256) decoded 3.4x and
1.6x *slower* in bf16 at batch 1 (oneDNN's bf16 matrix-vector products of such small matrices cost more
than fp32's) and 0.9x / 1.25x at batch 32. Hence the width threshold. The engine keeps its KV cache and
attention in float32 on CPU either way (see Engine).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

CHOICES = ("auto", "float32", "bfloat16", "float16")
MIN_BF16_HIDDEN = 512  # narrower models decode as fast or faster in fp32 on CPU (module docstring)


def has_fast_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether `device` has bf16 arithmetic units (CUDA: compute capability 8+; CPU: AVX512-BF16 or AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def serving_dtype(choice: str, hidden_size: int, device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype for `choice` (one of CHOICES) for a model of this hidden size on `device`."""
    if choice not in CHOICES:
        raise ValueError(f"--dtype must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice != "auto":
        return getattr(torch, choice)
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if has_fast_bf16(device) else torch.float16
    return torch.bfloat16 if has_fast_bf16(device) and hidden_size >= MIN_BF16_HIDDEN else torch.float32


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="auto", choices=CHOICES,
                        help="weights' dtype (default auto: bfloat16 where the device has bf16 units and the model's "
                             f"hidden size is at least {MIN_BF16_HIDDEN}, else float32)")


def load_for_serving(checkpoint: str | Path, choice: str, device: str | torch.device | None = None):
    """(model, tokenizer) of a checkpoint folder, LoRA adapter folder or hub id, loaded straight into the dtype
    `choice` picks."""
    from ..model.adapter import base_of, is_adapter_folder, load_any
    from ..model.hub import resolve_folder

    folder = resolve_folder(checkpoint)
    try:  # a missing or broken config.json is the loader's to report, with its path
        config = (base_of(folder) if is_adapter_folder(folder) else folder) / "config.json"
        hidden = json.loads(config.read_text()).get("hidden_size")
    except (OSError, ValueError, AttributeError):
        hidden = None
    hidden = hidden if isinstance(hidden, int) else 0
    return load_any(folder, dtype=serving_dtype(choice, hidden, device or "cpu"))
