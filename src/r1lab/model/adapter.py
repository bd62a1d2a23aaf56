"""Adapter folders in PEFT's format: what a LoRA run saves, and what `peft` loads onto transformers' model.

    adapter_config.json         peft_type LORA, base_model_name_or_path, r, lora_alpha, target_modules, ...
    adapter_model.safetensors   base_model.model.<module>.lora_A.weight (r, in) / .lora_B.weight (out, r)
    tokenizer.json, ...         the tokenizer, so the folder serves on its own
    r1lab_manifest.json         size and sha256 of every file, written last (as in a full checkpoint)

`load_adapter` rebuilds the base model from base_model_name_or_path (or `base=`) and puts the adapters on
it; `r1lab.load` does this for any folder holding adapter_config.json, so generate, eval, serve and chat
take an adapter folder wherever they take a checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..chat_tokenizer import ChatTokenizer, load_tokenizer
from .checkpoint import CheckpointError, load as load_checkpoint, save_checkpoint, write_folder, verify_checkpoint
from .lora import LoRASpec, add_adapters, adapters, has_adapters

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PEFT's names: the PeftModel wraps the transformers model as base_model.model


def is_adapter_folder(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def peft_config(spec: LoRASpec, base: str) -> dict:
    """adapter_config.json for PEFT's LoraConfig."""
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "r": spec.r,
            "lora_alpha": spec.alpha, "lora_dropout": spec.dropout, "target_modules": list(spec.targets),
            "use_rslora": spec.rslora, "bias": "none", "fan_in_fan_out": False, "use_dora": False,
            "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
            "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {}, "revision": None}


def spec_from_config(config: dict, path: Path) -> LoRASpec:
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{path}: peft_type {config.get('peft_type')!r}; r1lab reads LoRA adapters only")
    unsupported = [key for key in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform",
                                   "target_parameters", "exclude_modules", "layer_replication", "lora_bias",
                                   "trainable_token_indices", "use_qalora", "alora_invocation_tokens")
                   if config.get(key)]
    if config.get("bias", "none") != "none":
        unsupported.append("bias")
    if config.get("fan_in_fan_out"):
        unsupported.append("fan_in_fan_out")
    if unsupported:
        raise CheckpointError(f"{path}: r1lab does not support {', '.join(unsupported)} in a LoRA adapter")
    targets = config.get("target_modules")
    if isinstance(targets, str):  # PEFT reads a string as a regular expression (or all-linear)
        targets = [targets] if targets == "all-linear" else None
    if not targets:
        raise CheckpointError(f"{path}: target_modules must be a list of module names (or all-linear)")
    try:
        return LoRASpec(int(config["r"]), float(config.get("lora_alpha", 8)), float(config.get("lora_dropout", 0.0)),
                        tuple(targets), bool(config.get("use_rslora", False)))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read the LoRA settings: {e}") from e


# ---------------------------------------------------------------- save

def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights under PEFT's names."""
    out = {}
    for name, module in adapters(model).items():
        out[f"{PREFIX}{name}.lora_A.weight"] = module.lora_A.weight.detach().contiguous().cpu()
        out[f"{PREFIX}{name}.lora_B.weight"] = module.lora_B.weight.detach().contiguous().cpu()
    return out


def save_adapter(model: nn.Module, tokenizer, folder: str | Path, extra: dict[str, object] | None = None) -> Path:
    """Write the adapter folder atomically (as save_checkpoint does); `extra` as in save_checkpoint. The
    model carries its adapter_config as `model.peft_config` (set by attach_lora or load_adapter)."""

    def write(tmp: Path) -> None:
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(model.peft_config, indent=2) + "\n")
        save_file(adapter_tensors(model), str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})

    return write_folder(folder, write, tokenizer, extra)


def save_model(model: nn.Module, tokenizer, folder: str | Path, extra: dict[str, object] | None = None) -> Path:
    """What a training run writes: the adapter folder when the model carries LoRA adapters, else the full
    checkpoint."""
    if has_adapters(model):
        return save_adapter(model, tokenizer, folder, extra)
    return save_checkpoint(model, tokenizer, folder, extra)


# ---------------------------------------------------------------- load

def read_adapter_config(folder: Path) -> dict:
    path = folder / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return config


def base_of(folder: str | Path, base: str | Path | None = None) -> Path:
    """The base model folder: `base`, else adapter_config.json's base_model_name_or_path."""
    folder = Path(folder)
    named = base or read_adapter_config(folder).get("base_model_name_or_path")
    if not named:
        raise CheckpointError(f"{folder / ADAPTER_CONFIG} names no base_model_name_or_path; pass the base model (--base)")
    if not Path(named).is_dir():
        raise CheckpointError(f"the base model {named} of adapter {folder} is not a folder here; pass it with --base")
    return Path(named)


def load_adapter(folder: str | Path, base: str | Path | None = None, verify: bool = True, **kwargs):
    """(model with adapters, tokenizer) from an adapter folder: the base model with the adapters on it (in the
    base's dtype; `kwargs`, e.g. dtype=, go to the base's loader). The tokenizer is the folder's own when it
    has one, else the base's."""
    folder = Path(folder)
    if verify:
        verify_checkpoint(folder)
    config = read_adapter_config(folder)
    spec = spec_from_config(config, folder / ADAPTER_CONFIG)
    base_dir = base_of(folder, base)
    model, tokenizer = load_checkpoint(base_dir, verify=verify, **kwargs)
    if add_adapters(model, spec) == 0:
        raise CheckpointError(f"{folder / ADAPTER_CONFIG}: target_modules {list(spec.targets)} match no linear layer "
                              f"of {base_dir}")
    weights = folder / ADAPTER_WEIGHTS
    try:
        with safe_open(str(weights), framework="pt") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(f"cannot read adapter weights {weights}: {e}") from e
    params = dict(model.named_parameters())
    wanted = {f"{PREFIX}{name}.lora_{ab}.weight": f"{name}.lora_{ab}.weight" for name in adapters(model) for ab in "AB"}
    unexpected = sorted(k for k in tensors if k.replace(".default.", ".") not in wanted)
    if unexpected:
        raise CheckpointError(f"{weights}: {len(unexpected)} tensors fit no adapted layer of {base_dir}, e.g. {unexpected[:3]}")
    found = {k.replace(".default.", "."): t for k, t in tensors.items()}
    missing = sorted(k for k in wanted if k not in found)
    if missing:
        raise CheckpointError(f"{weights}: no weights for {len(missing)} adapted layers, e.g. {missing[:3]}")
    with torch.no_grad():
        for disk_name, name in wanted.items():
            param, t = params[name], found[disk_name]
            if t.shape != param.shape:
                raise CheckpointError(f"{weights}: {disk_name} has shape {tuple(t.shape)}, "
                                      f"the model expects {tuple(param.shape)}")
            param.copy_(t)
    model.peft_config = dict(config, base_model_name_or_path=config.get("base_model_name_or_path") or str(base_dir))
    if (folder / "tokenizer.json").exists():  # as a checkpoint's: r1lab's own, else the folder's with its template
        tokenizer = load_tokenizer(folder)
        if isinstance(tokenizer, ChatTokenizer) and not (folder / "generation_config.json").exists():
            # no generation_config.json in an adapter folder: stop on every EOS id of the base's (Qwen: two)
            tokenizer.eos_token_ids |= frozenset(getattr(model.config, "eos_token_ids", None) or [])
    return model.eval(), tokenizer


def load_any(folder: str | Path, **kwargs):
    """(model, tokenizer) from a full checkpoint or an adapter folder (the base with its adapters);
    `kwargs` (e.g. dtype=) go to the checkpoint loader (the base's, for an adapter folder)."""
    return load_adapter(folder, **kwargs) if is_adapter_folder(folder) else load_checkpoint(folder, **kwargs)
