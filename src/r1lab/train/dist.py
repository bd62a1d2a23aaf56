"""Where a training process stands: its rank in a torchrun job, collectives that are no-ops on one
process, and the run it belongs to (folder, train config, the checkpoint to resume from)."""
from __future__ import annotations

import os
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist

from ..config import ConfigError, TrainConfig

@dataclass
class Dist:
    """Where this process stands: rank in the job, how many ranks, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> Dist:
    """Join the torchrun job if there is one (gloo on CPU, NCCL on GPU) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"train.device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={device} but this machine has no usable CUDA GPU; use device=cpu (or auto)")
    if dev.type == "cuda":
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, local, dev)


@contextmanager
def distributed_job():
    """Around a training command: on success every rank waits for the others (rank 0 may still be writing
    the final checkpoint) before the process group is torn down; tearing down while a peer still talks
    to it aborted a gloo rank ("terminate called without an active exception") now and then."""
    try:
        yield
        if tdist.is_available() and tdist.is_initialized():
            tdist.barrier()
    finally:
        if tdist.is_available() and tdist.is_initialized():
            tdist.destroy_process_group()


def all_reduce_sum(values: list[float], dist: Dist) -> list[float]:
    if not dist.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=dist.device if dist.device.type == "cuda" else "cpu")
    tdist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj: Any, dist: Dist) -> Any:
    """Rank 0's value on every rank (decisions such as "which checkpoint" are taken once)."""
    if not dist.enabled:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------- the run

@dataclass
class RunState:
    out_dir: Path
    dist: Dist
    train: TrainConfig
    resume_from: Path | None = None  # the checkpoint to continue from (None: a fresh run)

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
