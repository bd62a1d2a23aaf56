"""Checkpoints: a folder that *is* a Hugging Face DeepseekV3ForCausalLM checkpoint.

    config.json              model_type deepseek_v3 (+ our switches under "r1lab")
    generation_config.json
    model.safetensors        Hugging Face parameter names
    tokenizer.json, tokenizer_config.json, special_tokens_map.json
    r1lab_manifest.json      size and sha256 of every file above, written last

Writes go to a temporary sibling folder that is renamed into place, so a reader never sees half a
checkpoint. Loading checks the manifest when there is one and names the file that is truncated or
corrupt. Folders written by `transformers` (no manifest, possibly sharded, possibly with fused expert
tensors) load too.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..chat_tokenizer import load_tokenizer
from .attention import rope_inv_freq
from .config import ModelConfig
from .families import FamilyConfig, FamilyLM, config_from_hf
from .hub import resolve_folder
from .moe import MoE
from .serving import warn_if_unservable
from .publish import publish_folder, recover_folder
from .transformer import Transformer

MANIFEST = "r1lab_manifest.json"


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or corrupt; the message names the file."""


# ---------------------------------------------------------------- names on disk

def _mtp_to_disk(name: str, n_layers: int) -> str:
    m = re.match(r"mtp\.(\d+)\.(.*)", name)
    if not m:
        return name
    layer, rest = n_layers + int(m.group(1)), m.group(2)
    rest = rest.replace("block.", "", 1) if rest.startswith("block.") else rest
    rest = "shared_head.norm." + rest[len("norm."):] if rest.startswith("norm.") else rest
    return f"model.layers.{layer}.{rest}"


def _mtp_from_disk(name: str, n_layers: int) -> str | None:
    m = re.match(r"model\.layers\.(\d+)\.(.*)", name)
    if not m or int(m.group(1)) < n_layers:
        return name
    depth, rest = int(m.group(1)) - n_layers, m.group(2)
    if rest.startswith(("enorm.", "hnorm.", "eh_proj.")):
        return f"mtp.{depth}.{rest}"
    if rest.startswith("shared_head.norm."):
        return f"mtp.{depth}.norm.{rest[len('shared_head.norm.'):]}"
    if rest.startswith(("shared_head.head.", "embed_tokens.")):
        return None  # shared with the main model's head / embeddings
    return f"mtp.{depth}.block.{rest}"


def state_dict_for_disk(model: Transformer) -> dict[str, torch.Tensor]:
    n = model.config.num_hidden_layers
    sd = {}
    for name, t in model.state_dict().items():
        if model.config.tie_word_embeddings and name == "lm_head.weight":
            continue
        sd[_mtp_to_disk(name, n)] = t.detach().contiguous().cpu()
    return sd


def _unfuse_experts(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers v5 may keep routed experts as stacked tensors (E, 2I, H) / (E, H, I); split them."""
    out = {}
    for name, t in tensors.items():
        m = re.match(r"(.*\.mlp\.experts)\.(gate_up_proj|down_proj)$", name)
        if not m:
            out[name] = t
            continue
        prefix, kind = m.groups()
        for e in range(t.shape[0]):
            if kind == "gate_up_proj":
                gate, up = t[e].chunk(2, dim=0)
                out[f"{prefix}.{e}.gate_proj.weight"], out[f"{prefix}.{e}.up_proj.weight"] = gate, up
            else:
                out[f"{prefix}.{e}.down_proj.weight"] = t[e]
    return out


# ---------------------------------------------------------------- save

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_folder(folder: str | Path, write: Callable[[Path], None], tokenizer=None,
                 extra: dict[str, object] | None = None) -> Path:
    """Write a model folder atomically: `write(tmp)` fills a temporary sibling with the weights, then the
    tokenizer and `extra` files are added (file name -> JSON-able object or bytes), the manifest last, and
    `publish.publish_folder` swaps it in. Full checkpoints and LoRA adapter folders are both written this way."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-{os.getpid()}-", dir=folder.parent))
    try:
        write(tmp)
        if tokenizer is not None:
            tokenizer.save(tmp)
        for name, obj in (extra or {}).items():
            data = obj if isinstance(obj, bytes) else (json.dumps(obj, indent=2) + "\n").encode()
            (tmp / name).write_bytes(data)
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        manifest = {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in files}
        (tmp / MANIFEST).write_text(json.dumps({"files": manifest}, indent=2) + "\n")
        for p in tmp.iterdir():  # make the data durable before the rename publishes it
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        publish_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def save_checkpoint(model: Transformer | FamilyLM, tokenizer, folder: str | Path,
                    extra: dict[str, object] | None = None) -> Path:
    """Write model (+ tokenizer) to `folder` atomically. `extra` maps file names to JSON-able objects
    (or bytes) stored beside the model, e.g. training state."""

    def write(tmp: Path) -> None:
        cfg = model.config
        if isinstance(cfg, FamilyConfig):  # the dtype written, and the checkpoint's own generation defaults
            cfg.torch_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        (tmp / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2) + "\n")
        gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "do_sample": True,
               "temperature": 0.6, "top_p": 0.95}
        if cfg.pad_token_id is not None:
            gen["pad_token_id"] = cfg.pad_token_id
        gen = getattr(cfg, "generation", None) or gen
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        save_file(state_dict_for_disk(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})

    write_folder(folder, write, tokenizer, extra)
    warn_if_unservable(model.config, folder)
    return Path(folder)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rewrite_config(folder: str | Path) -> list[str]:
    """Bring an older checkpoint's config.json up to today's (the routing fields vLLM and SGLang read, the
    serving dtype), keeping any other keys, and update the manifest so the checkpoint still verifies.
    The weights are not touched. Returns the keys that were added or changed."""
    folder = Path(folder)
    path = folder / "config.json"
    verify_checkpoint(folder)  # do not bless a damaged checkpoint with a fresh manifest
    cfg = read_config(folder)
    old = json.loads(path.read_text())
    new = {**old, **cfg.to_hf_dict()}
    changed = sorted(k for k in new if old.get(k, object()) != new[k])
    if not changed:
        return []
    _write_atomic(path, json.dumps(new, indent=2) + "\n")
    manifest_path = folder / MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        manifest["files"]["config.json"] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        _write_atomic(manifest_path, json.dumps(manifest, indent=2) + "\n")
    return changed


# ---------------------------------------------------------------- load

_WARNED: set[str] = set()


def verify_checkpoint(folder: str | Path, full: bool = True) -> None:
    """Raise CheckpointError naming the first file that is missing, truncated or altered. A folder without
    a manifest (saved by transformers, or copied by hand) is loaded unverified, with a one-line warning."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.exists():
        if str(folder) not in _WARNED:
            _WARNED.add(str(folder))
            print(f"r1lab: warning: {folder} has no {MANIFEST}; its files are not verified (fine for a folder saved "
                  "by transformers; an r1lab checkpoint without one is incomplete)", file=sys.stderr)
        return
    try:
        manifest = json.loads(path.read_text())["files"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"corrupt manifest {path}: {e}") from e
    for name, meta in manifest.items():
        f = folder / name
        if not f.exists():
            raise CheckpointError(f"checkpoint file missing: {f}")
        size = f.stat().st_size
        hint = (f"; if you edited it on purpose, run `r1lab checkpoint rehash {folder}`"
                if name.endswith(".json") and name != MANIFEST else "")
        if size != meta["bytes"]:
            raise CheckpointError(f"checkpoint file truncated or altered: {f} has {size} bytes, manifest says "
                                  f"{meta['bytes']}{hint}")
        if full and _sha256(f) != meta["sha256"]:
            raise CheckpointError(f"checkpoint file corrupt (sha256 mismatch): {f}{hint}")


def read_config(folder: str | Path) -> ModelConfig | FamilyConfig:
    """The model config of a checkpoint folder: DeepSeek-V3, or Llama / Qwen2 / Qwen3 (with the folder's
    generation_config.json, whose EOS ids and sampling defaults they keep)."""
    path = Path(folder) / "config.json"
    if not path.exists():
        raise CheckpointError(f"not a checkpoint folder (no config.json): {folder}")
    gen_path = Path(folder) / "generation_config.json"
    try:
        generation = json.loads(gen_path.read_text()) if gen_path.exists() else {}
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return config_from_hf(data, generation)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"cannot read model config {path}: {e}") from e


def _read_tensors(folder: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors file(s), floating-point ones converted to `dtype` one at a
    time (a bf16 file never sits in memory beside a whole fp32 copy of itself)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"no model.safetensors in {folder}")
    tensors = {}
    for name in files:
        path = folder / name
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    t = f.get_tensor(key)
                    keep = dtype is None or not t.is_floating_point() or "e_score_correction_bias" in key
                    tensors[key] = t if keep else t.to(dtype)
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for bad files
            raise CheckpointError(f"cannot read weights file {path}: {e}") from e
    return tensors


def load_model(folder: str | Path, verify: bool = True, dtype: torch.dtype = torch.float32) -> Transformer | FamilyLM:
    """The model of a checkpoint folder (or a Hugging Face hub id), its floating-point weights in `dtype`."""
    folder = resolve_folder(folder)
    recover_folder(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    if verify:
        verify_checkpoint(folder)
    cfg = read_config(folder)
    tensors = _unfuse_experts(_read_tensors(folder, dtype))
    if isinstance(cfg, FamilyConfig):
        return _load_family(folder, cfg, tensors, dtype)
    n = cfg.num_hidden_layers
    if cfg.num_nextn_predict_layers and not any(k.startswith(f"model.layers.{n}.") for k in tensors):
        # transformers' DeepseekV3 has no MTP module: its config says 1 MTP layer, its files hold none
        print(f"note: {folder} has no multi-token-prediction weights; loading without MTP", file=sys.stderr)
        cfg.num_nextn_predict_layers = 0
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = model.state_dict()
    state = {}
    for disk_name, t in tensors.items():
        name = _mtp_from_disk(disk_name, n)
        if name is None or name not in expected:
            continue  # e.g. MTP layers of a bigger checkpoint, rotary buffers
        if tuple(t.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"{folder / 'model.safetensors'}: tensor {disk_name} has shape {tuple(t.shape)}, "
                                  f"config implies {tuple(expected[name].shape)}")
        state[name] = t.to(dtype) if t.is_floating_point() and "e_score_correction_bias" not in name else t.float()
        tensors[disk_name] = None  # the file's copy is freed as soon as it is converted
    if cfg.tie_word_embeddings and "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing = [k for k in expected if k not in state and not k.endswith(".load")]
    if missing:
        raise CheckpointError(f"{folder}: weights missing for {len(missing)} parameters, e.g. {missing[:3]}")
    model.load_state_dict(state, strict=False, assign=True)
    # buffers that are not saved must be real tensors, not meta
    model.inv_freq, model.rope_scale = rope_inv_freq(cfg)
    for m in model.modules():
        if isinstance(m, MoE):
            m.load = torch.zeros(cfg.n_routed_experts)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()


def _load_family(folder: Path, cfg: FamilyConfig, tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> FamilyLM:
    """A Llama / Qwen2 / Qwen3 model: the names on disk are the module names."""
    with torch.device("meta"):
        model = FamilyLM(cfg)
    expected = model.state_dict()
    state = {}
    for name, t in tensors.items():
        if name not in expected:
            continue  # e.g. rotary buffers some exporters save
        if tuple(t.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"{folder}: tensor {name} has shape {tuple(t.shape)}, "
                                  f"config implies {tuple(expected[name].shape)}")
        state[name] = t.to(dtype) if t.is_floating_point() else t
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
        if "model.embed_tokens.weight" in state:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(f"{folder}: weights missing for {len(missing)} parameters, e.g. {missing[:3]}")
    model.load_state_dict(state, strict=False, assign=True)
    model.init_buffers()
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    cfg.torch_dtype = str(dtype).removeprefix("torch.")
    return model.eval()


def load(folder: str | Path, verify: bool = True, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from a checkpoint folder or hub id: DeepSeek-V3 (ours or saved by transformers),
    Llama, Qwen2 or Qwen3. The tokenizer is r1lab's own when the folder holds it, else the folder's
    tokenizer.json rendered with its own chat template; None without a tokenizer.json."""
    folder = resolve_folder(folder)
    model = load_model(folder, verify=verify, dtype=dtype)
    tokenizer = load_tokenizer(folder) if (folder / "tokenizer.json").exists() else None
    return model, tokenizer
