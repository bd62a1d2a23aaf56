"""Checkpoints of a run: checkpoints/step_N holds the servable model folder (weights, config, tokenizer)
plus trainer_state.json (step, stream position, extra state), optimizer.pt and rng.pt (every rank's RNG
states). The Checkpointer is built once with every stateful part of the run, so that saving and
restoring take only a step number.

Resume is exact: a run killed at any point and resumed logs bitwise the same metrics as one that never
stopped (same device, same thread count). The MoE router biases are buffers in the model's state dict.
"""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from ..model import Transformer
from ..model.adapter import save_model
from ..model.checkpoint import MANIFEST, CheckpointError, verify_checkpoint
from .dist import Dist, RunState


class Stateful(Protocol):
    """What a checkpoint needs from the data or prompt stream (and any extra part): a JSON-able state."""

    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


STATE_FILE = "trainer_state.json"


def list_checkpoints(root: Path) -> list[Path]:
    """step_N folders under root, oldest first (complete or not)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def resume_point(out_dir: Path) -> Path | None:
    """The checkpoint --resume continues from; None (a fresh start) when there is none yet, in which case the
    metrics of the run that never reached a checkpoint are kept as metrics.restarted.jsonl, not truncated.
    Checkpoints that exist but are all damaged are refused: restarting from step 0 would lose the run."""
    found = list_checkpoints(out_dir / "checkpoints")
    latest = latest_checkpoint(out_dir / "checkpoints")
    if found and latest is None:
        names = ", ".join(p.name for p in found)
        raise CheckpointError(f"every checkpoint in {out_dir / 'checkpoints'} is damaged ({names}; reasons above); "
                              "refusing to restart from step 0: repair one, or pass --overwrite to start over")
    metrics = out_dir / "metrics.jsonl"
    if latest is None and metrics.is_file() and metrics.stat().st_size:
        os.replace(metrics, out_dir / "metrics.restarted.jsonl")
    return latest


def latest_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint that is complete: manifest present, every file of it intact, trainer state
    in it. save_checkpoint writes to a temporary folder and renames, so a killed save leaves only a
    hidden temporary folder; the checks also catch a folder damaged later."""
    for folder in reversed(list_checkpoints(root)):
        try:
            if not (folder / MANIFEST).is_file():
                raise CheckpointError(f"no manifest in {folder}")
            if STATE_FILE not in json.loads((folder / MANIFEST).read_text())["files"]:
                raise CheckpointError(f"no training state in {folder}")
            verify_checkpoint(folder, full=True)
            return folder
        except (CheckpointError, ValueError, KeyError, OSError) as e:
            print(f"skipping checkpoint {folder}: {e}", file=sys.stderr)
    return None


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def is_fsdp(wrapped: nn.Module | None) -> bool:
    return wrapped is not None and type(wrapped).__name__.startswith("FSDP")


class Checkpointer:
    """Saves and restores every stateful part of a run: the model (and tokenizer, for a servable folder),
    the optimizer, the data or prompt stream, every rank's RNG states, and `extra` (GRPO: where its
    frozen reference model comes from). Keeps the newest train.keep_checkpoints. Rank 0 writes; save and
    restore are collective calls (every rank must make them)."""

    def __init__(self, run: RunState, model: Transformer, tokenizer, optimizer: torch.optim.Optimizer,
                 stream: Stateful, *, wrapped: nn.Module | None = None, extra: Stateful | None = None):
        self.run, self.model, self.tokenizer, self.optimizer = run, model, tokenizer, optimizer
        self.stream, self.wrapped, self.extra = stream, wrapped, extra
        self.root = run.checkpoint_dir

    def save(self, step: int) -> Path:
        dist = self.run.dist
        rng = [None] * dist.world_size
        if dist.enabled:
            tdist.all_gather_object(rng, _rng_state())
        else:
            rng = [_rng_state()]
        model_to_save, opt_state = full_state(self.model, self.optimizer, self.wrapped, dist)
        folder = self.root / f"step_{step}"
        if dist.is_main:
            state = {"step": step, "data": self.stream.state_dict(),
                     "extra": self.extra.state_dict() if self.extra is not None else {}, "world_size": dist.world_size}
            save_model(model_to_save, self.tokenizer, folder, extra={
                STATE_FILE: state, "optimizer.pt": _to_bytes(opt_state), "rng.pt": _to_bytes(rng)})
            self._prune(step)
        return folder

    def _prune(self, newest: int) -> None:
        # only checkpoints up to the one just written count: a higher-numbered one left from before a resume
        # is damaged (else the run would have resumed from it) and must not push good ones out
        keep = self.run.train.keep_checkpoints
        done = [p for p in list_checkpoints(self.root) if int(p.name[5:]) <= newest]
        old = done[:-keep] if keep > 0 else []
        for folder in old:
            # rename first: a kill mid-delete must not leave a step_N folder that looks resumable
            trash = folder.with_name(f".{folder.name}.deleting")
            os.rename(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)
        for stale in self.root.glob(".step_*"):  # temporaries of earlier saves or deletes that were killed
            shutil.rmtree(stale, ignore_errors=True)

    def restore(self, folder: Path) -> int:
        """Put the optimizer state, this rank's RNG states, the stream position and the extra state back;
        the model was built from `folder` already. Returns the step to continue from."""
        dist = self.run.dist
        state = json.loads((folder / STATE_FILE).read_text())
        opt_state = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        if is_fsdp(self.wrapped):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.wrapped, self.optimizer, opt_state,
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(opt_state)
        rng = torch.load(folder / "rng.pt", map_location="cpu", weights_only=True)
        _set_rng_state(rng[dist.rank % len(rng)])
        self.stream.load_state_dict(state.get("data", {}))
        if self.extra is not None:
            self.extra.load_state_dict(state.get("extra", {}))
        return int(state["step"])


def full_state(model: Transformer, optimizer: torch.optim.Optimizer, wrapped: nn.Module | None, dist: Dist):
    """(a plain model holding the full weights, the full optimizer state) for rank 0 to write."""
    if not is_fsdp(wrapped):
        return model, optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(wrapped, options=opts)
    opt_state = get_optimizer_state_dict(wrapped, optimizer, options=opts)
    if not dist.is_main:
        return None, None
    with torch.device("meta"):
        plain = Transformer(model.config)
    prefix = "module."
    plain.load_state_dict({k[len(prefix):]: v for k, v in weights.items()}, strict=False, assign=True)
    return plain, opt_state

