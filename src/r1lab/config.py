"""Configs: dataclasses, named presets, YAML files and `key=value` overrides.

Every command builds one dataclass (its own, composed of sections such as `model: ModelConfig` and
`train: TrainConfig`). Values are applied in order: dataclass defaults, the preset (a name, or a YAML
file), then `key=value` overrides from the command line. A key is either dotted (`model.hidden_size=64`)
or bare (`lr=1e-3`), in which case it must name exactly one field across the sections. An unknown key
is an error that lists the valid keys.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .model.config import PRESETS as MODEL_PRESETS


class ConfigError(ValueError):
    pass


@dataclass
class TrainConfig:
    """The shared training loop's knobs (pretrain, SFT, GRPO and distillation all use it)."""

    max_steps: int = 1000
    batch_size: int = 32  # sequences per optimizer step, over all ranks
    micro_batch_size: int = 0  # sequences per forward/backward per rank; 0 = no gradient accumulation
    seq_len: int = 256
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    save_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    dtype: str = "auto"  # auto = bf16 autocast on GPU and on CPUs with bf16 units for hidden >= 512, else fp32; or fp32 | bf16
    compile: bool = False
    device: str = "auto"
    fsdp: bool = False  # under torchrun: shard parameters, gradients and optimizer state (FSDP2) instead of DDP
    optimizer: str = "adamw"  # adamw | muon (Muon for the matrices inside the blocks, AdamW for the rest)

    def __post_init__(self) -> None:
        check_ranges(self, {"max_steps": 1, "batch_size": 1, "micro_batch_size": 0, "seq_len": 2, "warmup_steps": 0,
                            "weight_decay": 0, "grad_clip": 0, "save_every": 0, "keep_checkpoints": 0, "log_every": 1,
                            "seed": 0, "min_lr_ratio": 0})
        if not 0 < self.lr < float("inf"):
            raise ValueError(f"train.lr must be a positive number, got {self.lr}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")


def check_ranges(obj: Any, lows: dict[str, float], section: str = "train") -> None:
    """ValueError naming the first field below its lowest allowed value (e.g. max_steps=0)."""
    for name, low in lows.items():
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < low:
            raise ValueError(f"{section}.{name} must be at least {low}, got {value!r}")


def field_names(obj: Any, prefix: str = "") -> list[str]:
    """All settable keys of a (nested) dataclass, dotted."""
    names = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            names += field_names(value, f"{prefix}{f.name}.")
        else:
            names.append(prefix + f.name)
    return names


def _resolve(obj: Any, key: str) -> str:
    names = field_names(obj)
    if key in names:
        return key
    matches = [n for n in names if n.rsplit(".", 1)[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"ambiguous key {key!r}: say one of {', '.join(matches)}")
    raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(names)}")


def _field_type(obj: Any, name: str) -> Any:
    hints = typing.get_type_hints(type(obj))
    return hints[name]


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Turn a command-line string (or YAML value) into the field's type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        for a in args:
            try:
                return coerce(value, a, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: cannot read {value!r} as {tp}")
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
        if origin in (dict, list) or tp in (dict, list):
            if isinstance(value, str):
                value = yaml.safe_load(value)
            expected = origin or tp
            if not isinstance(value, expected):
                raise ValueError
            return value
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: cannot read {value!r} as {getattr(tp, '__name__', tp)}") from None
    return value


def set_key(obj: Any, key: str, value: Any) -> None:
    path = _resolve(obj, key).split(".")
    target = obj
    for part in path[:-1]:
        target = getattr(target, part)
    tp = _field_type(target, path[-1])
    setattr(target, path[-1], coerce(value, tp, ".".join(path)))


def apply_dict(obj: Any, values: dict[str, Any]) -> None:
    """Apply a nested dict (from YAML or a preset) onto a dataclass."""
    for k, v in values.items():
        if isinstance(v, dict) and dataclasses.is_dataclass(getattr(obj, k, None)):
            apply_dict(getattr(obj, k), v)
        else:
            set_key(obj, k, v)


def parse_overrides(items: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        pairs.append((k.strip(), v.strip()))
    return pairs


def parse_knobs(items: list[str]) -> dict[str, Any]:
    """key=value pairs with JSON/YAML-typed values (digits=4 -> 4, noise=0.3 -> 0.3, name=x -> "x")."""
    return {k: yaml.safe_load(v) if v else v for k, v in parse_overrides(items)}


def build(cls: type, presets: dict[str, dict] | None = None, preset: str | None = None,
          overrides: list[str] | None = None) -> Any:
    """cls() <- preset (name or YAML path) <- key=value overrides, then re-validated."""
    obj = cls()
    if preset:
        if presets and preset in presets:
            apply_dict(obj, presets[preset])
        elif Path(preset).suffix in (".yaml", ".yml") or Path(preset).is_file():
            path = Path(preset)
            if not path.is_file():
                raise ConfigError(f"config file not found: {path}")
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
                raise ConfigError(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"cannot read config file {path}: {e}") from None
            if not isinstance(data, dict):
                raise ConfigError(f"{path}: expected a mapping of keys to values")
            apply_dict(obj, data)
        else:
            valid = ", ".join(presets or {})
            raise ConfigError(f"unknown preset {preset!r}; valid presets: {valid} (or a path to a YAML file)")
    for k, v in parse_overrides(overrides or []):
        set_key(obj, k, v)
    return revalidate(obj)


def revalidate(obj: Any) -> Any:
    """Run __post_init__ checks again after fields were set one by one."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            revalidate(value)
    if hasattr(obj, "__post_init__"):
        try:
            obj.__post_init__()
        except ValueError as e:
            raise ConfigError(str(e)) from e
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def save_yaml(obj: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))


# ---- the model presets, as config sections ----

def model_presets() -> dict[str, dict]:
    return {name: {"model": values} for name, values in MODEL_PRESETS.items()}


__all__ = ["ConfigError", "TrainConfig", "build", "field_names", "model_presets", "save_yaml", "set_key", "to_dict"]
