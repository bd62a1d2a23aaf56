"""`r1lab merge`: fold a LoRA adapter into its base model and write a full checkpoint.

    r1lab merge runs/sft-lora/final --out runs/sft-merged
    r1lab merge runs/sft-lora/final --out runs/sft-merged --base path/to/base    # base moved, or another copy

The base model is adapter_config.json's base_model_name_or_path unless --base names it. The merged folder
is an ordinary checkpoint (the base's format, W + scaling * B @ A in every adapted layer) with the
adapter folder's tokenizer.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .model.adapter import is_adapter_folder, load_adapter
from .model.checkpoint import CheckpointError, save_checkpoint
from .model.lora import merge_adapters


def merge(adapter_dir: str | Path, out: str | Path, base: str | Path | None = None) -> int:
    """Write the merged checkpoint to `out`; returns how many layers were merged."""
    if not is_adapter_folder(adapter_dir):
        raise CheckpointError(f"not an adapter folder (no adapter_config.json): {adapter_dir}")
    model, tokenizer = load_adapter(adapter_dir, base=base)
    merged = merge_adapters(model)
    save_checkpoint(model, tokenizer, out)
    return merged


def add_merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapter", metavar="ADAPTER_DIR", help="LoRA adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--out", required=True, help="folder to write the merged checkpoint to")
    p.add_argument("--base", help="the base model folder (default: adapter_config.json's base_model_name_or_path)")


def run_merge(args) -> int:
    n = merge(args.adapter, args.out, args.base)
    print(f"wrote {args.out}: {n} adapted layers merged into the base", file=sys.stderr)
    return 0
