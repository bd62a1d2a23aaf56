"""The shared training loop: distributed setup, AdamW, the learning-rate schedule, exact checkpoint/resume,
metrics, a progress bar, and one optimizer step with gradient accumulation.

Pretraining and SFT call `fit`; GRPO and distillation build on the pieces (`setup_run`, `make_optimizer`,
`lr_at`, `wrap_model`, `train_step`, `Checkpointer`, `MetricsLogger`, `Progress`) with their own loss.

Resume is exact: a checkpoint holds the model (and the MoE router biases, which are buffers in its state
dict), the optimizer, every rank's RNG states and the data position, so a run killed at any point and
resumed logs bitwise the same losses as one that never stopped (same device, same thread count).
"""
from __future__ import annotations

import io
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from ..config import ConfigError, TrainConfig, save_yaml
from ..model import Transformer, save_checkpoint, update_router_bias
from ..model.checkpoint import MANIFEST, CheckpointError, verify_checkpoint
from .data import Batch

# ---------------------------------------------------------------- distributed

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
    dev = torch.device(device)
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


# ---------------------------------------------------------------- run folder

@dataclass
class RunState:
    out_dir: Path
    dist: Dist
    train: TrainConfig
    resume_from: Path | None = None  # the checkpoint to continue from (None: a fresh run)

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"


def setup_run(out_dir: str | Path, cfg: Any, resume: bool, train_cfg: TrainConfig | None = None) -> RunState:
    """Join the distributed job, seed every RNG, and find the checkpoint to resume from.

    Without --resume, a folder that already holds checkpoints is refused (rather than mixing two runs);
    with --resume and no complete checkpoint yet, the run starts fresh, so scripts can always pass it."""
    train_cfg = train_cfg or cfg.train
    dist = init_distributed(train_cfg.device)
    out_dir = Path(out_dir)
    latest = None
    if dist.is_main:
        found = list_checkpoints(out_dir / "checkpoints")
        if found and not resume:
            raise ConfigError(f"{out_dir} already holds a run ({found[-1]}); pass --resume to continue it, "
                              "or choose another --out")
        latest = latest_checkpoint(out_dir / "checkpoints") if resume else None
    latest = broadcast_object(None if latest is None else str(latest), dist)
    seed_everything(train_cfg.seed)
    return RunState(out_dir, dist, train_cfg, Path(latest) if latest else None)


def save_config(run: RunState, cfg: Any) -> None:
    """config.yaml: the resolved config (after the tokenizer and --init settled the model's shape)."""
    if run.dist.is_main:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run.out_dir / "config.yaml")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- optimizer and schedule

def make_optimizer(model: nn.Module, cfg: TrainConfig):
    """AdamW; weight decay only on matrices, not on norms, biases or the embedding table.
    train.optimizer=muon: Muon for the matrices inside the blocks (attention, dense and shared MLPs), AdamW
    for the embedding, head, norms, routers and routed experts (see optim.py); one lr for both."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.optimizer not in ("adamw", "muon"):
        raise ConfigError(f"train.optimizer must be adamw or muon, got {cfg.optimizer!r}")
    # routed experts stay on AdamW: each sees a fraction of the tokens, and orthogonalising their many
    # small matrices would cost most of Muon's time on a CPU for no measured gain
    muon, decay, no_decay = [], [], []
    for n, p in named:
        if (cfg.optimizer == "muon" and p.dim() == 2 and n.startswith(("model.layers.", "mtp."))
                and not n.endswith("mlp.gate.weight") and ".mlp.experts." not in n):
            muon.append(p)
        else:
            (decay if p.dim() >= 2 and id(p) not in embeddings else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = next(model.parameters()).is_cuda
    adamw = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, fused=fused or None)
    if not muon:
        return adamw
    if cfg.fsdp:
        raise ConfigError("train.optimizer=muon needs whole matrices; it does not combine with train.fsdp=true")
    from .optim import Muon, Optimizers

    return Optimizers(Muon(muon, lr=cfg.lr, weight_decay=cfg.weight_decay), adamw)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine to lr * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    low = cfg.lr * cfg.min_lr_ratio
    return low + 0.5 * (cfg.lr - low) * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------- model wrapping

class LossModule(nn.Module):
    """Runs `loss_fn(model, batch)` as its forward, so that DDP and FSDP, which hook `forward`, see the
    whole loss computation (ours is `model.loss`, GRPO's is its own)."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.module = model

    def forward(self, loss_fn: Callable, batch: Batch):
        return loss_fn(self.module, batch)


def lm_loss(model: Transformer, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-token loss (plus MTP and balance terms) averaged over the batch's target tokens."""
    return model.loss(batch.input_ids, batch.labels, batch.position_ids, batch.attn_mask)


def wrap_model(model: Transformer, run: RunState) -> nn.Module:
    """The model on its device, wrapped for data parallelism when there are several ranks: DDP, or FSDP2
    (`fully_shard` per block, then the root) with train.fsdp=true for models that do not fit one device."""
    cfg, dist = run.train, run.dist
    model.to(dist.device).train()
    wrapped: nn.Module = LossModule(model)
    if dist.enabled and cfg.fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in [*model.model.layers, *model.mtp]:
            fully_shard(block)
        fully_shard(wrapped)
    elif dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # a routed expert that got no token in this batch has no gradient: DDP must be told to expect that
        unused = model.config.mlp == "moe" or bool(model.mtp)
        wrapped = DistributedDataParallel(wrapped, device_ids=[dist.device] if dist.device.type == "cuda" else None,
                                          find_unused_parameters=unused)
    if cfg.compile:
        wrapped.compile()
    return wrapped


def autocast(run: RunState):
    """fp32 on CPU, bf16 autocast on GPU (train.dtype=auto); train.dtype=fp32|bf16 forces one."""
    dtype = run.train.dtype
    if dtype == "auto":
        dtype = "bf16" if run.dist.device.type == "cuda" else "fp32"
    if dtype not in ("fp32", "bf16"):
        raise ConfigError(f"train.dtype must be auto, fp32 or bf16, got {dtype!r}")
    if dtype == "fp32":
        return nullcontext()
    return torch.autocast(run.dist.device.type, dtype=torch.bfloat16)


# ---------------------------------------------------------------- one optimizer step

@dataclass
class StepStats:
    loss: float  # mean over every target token of the global batch
    parts: dict[str, float]
    grad_norm: float
    tokens: int  # positions processed over all ranks (padding included: it costs compute)
    targets: int  # tokens with a loss over all ranks
    router: dict[str, float]


def local_micro_batches(batch: Batch, run: RunState) -> list[Batch]:
    """This rank's rows of the global batch, cut into micro-batches of train.micro_batch_size rows."""
    B, world = batch.input_ids.shape[0], run.dist.world_size
    if B % world:
        raise ConfigError(f"batch_size {B} is not divisible by the number of ranks {world}")
    per_rank = B // world
    local = batch.rows(run.dist.rank * per_rank, (run.dist.rank + 1) * per_rank)
    micro = run.train.micro_batch_size or per_rank
    if per_rank % micro:
        raise ConfigError(f"batch_size {B} over {world} rank(s) gives {per_rank} rows each, "
                          f"not divisible by micro_batch_size {micro}")
    return [local.rows(i, i + micro) for i in range(0, per_rank, micro)]


def train_step(wrapped: nn.Module, model: Transformer, optimizer: torch.optim.Optimizer, micro_batches: list[Batch],
               lr: float, run: RunState, loss_fn: Callable = lm_loss, weights: list[float] | None = None) -> StepStats:
    """Forward/backward every micro-batch, clip, step, then nudge the MoE router biases.

    Each micro-batch's loss is a mean over its own targets; `weights` (default: its share of the global
    batch's target tokens, so the step minimises the mean over all targets whatever the split over ranks
    and micro-batches) say how much each counts. Weights sum to 1 over all ranks' micro-batches."""
    dist = run.dist
    for group in optimizer.param_groups:
        group["lr"] = lr
    n_targets = [b.n_targets for b in micro_batches]
    tokens = sum(b.input_ids.numel() for b in micro_batches)
    total_targets, total_tokens = all_reduce_sum([float(sum(n_targets)), float(tokens)], dist)
    if weights is None:
        weights = [n / max(total_targets, 1.0) for n in n_targets]
    is_ddp = hasattr(wrapped, "no_sync")
    loss_sum, parts_sum = 0.0, {}
    for i, (mb, w) in enumerate(zip(micro_batches, weights)):
        # DDP averages gradients over ranks; scaling by world_size turns that average into our weighted sum
        sync = nullcontext() if not is_ddp or i == len(micro_batches) - 1 else wrapped.no_sync()
        with sync:
            with autocast(run):
                loss, parts = wrapped(loss_fn, mb.to(dist.device))
            # a micro-batch without targets has a NaN mean; with weight 0 its gradient is exactly zero
            (loss * (w * dist.world_size)).backward()
        if w:
            loss_sum += w * loss.item()
        for k, v in parts.items():  # every key on every rank, even at weight 0: the all-reduce needs them all
            parts_sum[k] = parts_sum.get(k, 0.0) + (w * v if w else 0.0)
    max_norm = run.train.grad_clip if run.train.grad_clip > 0 else float("inf")
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    router = update_router_bias(model)  # all-reduces the expert loads itself under torch.distributed
    keys = sorted(parts_sum)
    reduced = all_reduce_sum([loss_sum] + [parts_sum[k] for k in keys], dist)
    return StepStats(reduced[0], dict(zip(keys, reduced[1:])), float(grad_norm), int(total_tokens), int(total_targets), router)


# ---------------------------------------------------------------- checkpoints

STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    step: int
    data: dict[str, Any]
    extra: dict[str, Any]


def list_checkpoints(root: Path) -> list[Path]:
    """step_N folders under root, oldest first (complete or not)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


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


def _is_fsdp(wrapped: nn.Module | None) -> bool:
    return wrapped is not None and type(wrapped).__name__.startswith("FSDP")


class Checkpointer:
    """checkpoints/step_N: the servable model folder (weights, config, tokenizer) plus trainer_state.json
    (step, data position, caller state), optimizer.pt and rng.pt (every rank's RNG states). Keeps the
    newest `keep`. Rank 0 writes; save and restore are collective calls (every rank must make them)."""

    def __init__(self, run: RunState):
        self.run = run
        self.root = run.checkpoint_dir

    def save(self, step: int, model: Transformer, tokenizer, optimizer: torch.optim.Optimizer,
             data_state: dict[str, Any], extra: dict[str, Any] | None = None, wrapped: nn.Module | None = None) -> Path:
        dist = self.run.dist
        rng = [None] * dist.world_size
        if dist.enabled:
            tdist.all_gather_object(rng, _rng_state())
        else:
            rng = [_rng_state()]
        model_to_save, opt_state = full_state(model, optimizer, wrapped, dist)
        folder = self.root / f"step_{step}"
        if dist.is_main:
            state = {"step": step, "data": data_state, "extra": extra or {}, "world_size": dist.world_size}
            save_checkpoint(model_to_save, tokenizer, folder, extra={
                STATE_FILE: state, "optimizer.pt": _to_bytes(opt_state), "rng.pt": _to_bytes(rng)})
            self._prune()
        return folder

    def _prune(self) -> None:
        keep = self.run.train.keep_checkpoints
        old = list_checkpoints(self.root)[:-keep] if keep > 0 else []
        for folder in old:
            # rename first: a kill mid-delete must not leave a step_N folder that looks resumable
            trash = folder.with_name(f".{folder.name}.deleting")
            os.rename(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)
        for stale in self.root.glob(".step_*"):  # temporaries of earlier saves or deletes that were killed
            shutil.rmtree(stale, ignore_errors=True)

    def restore(self, folder: Path, optimizer: torch.optim.Optimizer, wrapped: nn.Module | None = None) -> TrainerState:
        """Load the optimizer state and this rank's RNG states; the caller built the model from `folder`."""
        dist = self.run.dist
        state = json.loads((folder / STATE_FILE).read_text())
        opt_state = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        if _is_fsdp(wrapped):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(wrapped, optimizer, opt_state, options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(opt_state)
        rng = torch.load(folder / "rng.pt", map_location="cpu", weights_only=True)
        _set_rng_state(rng[dist.rank % len(rng)])
        return TrainerState(int(state["step"]), state.get("data", {}), state.get("extra", {}))


def full_state(model: Transformer, optimizer: torch.optim.Optimizer, wrapped: nn.Module | None, dist: Dist):
    """(a plain model holding the full weights, the full optimizer state) for rank 0 to write."""
    if not _is_fsdp(wrapped):
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


# ---------------------------------------------------------------- metrics and progress

class MetricsLogger:
    """metrics.jsonl: one JSON object per step, flushed as written (and TensorBoard when installed).
    On resume, lines past the resumed step (written before the kill) are dropped first."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int | None = None):
        self.enabled = enabled
        self.file = None
        self.tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "metrics.jsonl"
        kept = []
        if resume_step is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
                except ValueError:
                    pass  # a line cut short by the kill
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
        self.file = open(path, "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:
            pass

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


class Progress:
    """A rich progress bar (step, loss, tokens/s, MFU, ETA) on rank 0; plain lines every log_every steps
    when the output is not a terminal (logs, CI)."""

    def __init__(self, total: int, start: int, desc: str, enabled: bool, log_every: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

        self.enabled, self.log_every = enabled, max(1, log_every)
        self.console = Console(stderr=True)
        self.bar = None
        if enabled and self.console.is_terminal:
            self.bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console)
            self.task = self.bar.add_task(desc, total=total, completed=start, info="")
            self.bar.start()
        self.desc, self.total = desc, total

    def update(self, step: int, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if "reward" in record:  # GRPO: the loss hovers near 0 by construction; the reward is what moves
            acc = f"  acc {record['accuracy']:.2f}" if "accuracy" in record else ""
            info = f"reward {record['reward']:.3f}{acc}  len {record['response_length']:.0f}  {record['tokens_per_s']:,.0f} tok/s"
        else:
            info = f"loss {record['loss']:.4f}  {record['tokens_per_s']:,.0f} tok/s  MFU {record['mfu']:.1%}"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif step % self.log_every == 0 or step == self.total:
            print(f"{self.desc} step {step}/{self.total}  {info}  lr {record['lr']:.2e}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


_PEAK: dict[str, float] = {}
# dense bf16 tensor-core peaks (FLOP/s) of common accelerators; others are measured
GPU_PEAKS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12,
             "A10G": 70e12, "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


def peak_flops(device: torch.device, size: int = 1024, repeats: int = 10) -> float:
    """The device's matmul peak FLOP/s, the denominator of MFU. R1LAB_PEAK_FLOPS overrides; known GPUs
    come from a table; anything else is measured once (best of a few fp32 matmuls)."""
    if os.environ.get("R1LAB_PEAK_FLOPS"):
        return float(os.environ["R1LAB_PEAK_FLOPS"])
    key = f"{device}:{size}"
    if key in _PEAK:
        return _PEAK[key]
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for gpu, flops in GPU_PEAKS.items():
            if gpu in name:
                _PEAK[key] = flops
                return flops
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    _PEAK[key] = 2 * size**3 / best
    return _PEAK[key]


# ---------------------------------------------------------------- the loop

class DataStream:
    """What `fit` needs from data: the next global batch, and a position to save and restore."""

    def next_batch(self) -> Batch: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def fit(run: RunState, model: Transformer, tokenizer, data: DataStream, *, desc: str = "train",
        loss_fn: Callable = lm_loss) -> Transformer:
    """Train `model` for train.max_steps optimizer steps on `data`, checkpointing every save_every steps
    and at the end, resuming from run.resume_from; then write the servable model to out_dir/final."""
    cfg, dist = run.train, run.dist
    wrapped = wrap_model(model, run)
    optimizer = make_optimizer(model, cfg)
    ckpt = Checkpointer(run)
    step = 0
    if run.resume_from is not None:
        state = ckpt.restore(run.resume_from, optimizer, wrapped)
        step = state.step
        data.load_state_dict(state.data)
        if dist.is_main:
            print(f"resuming from {run.resume_from} (step {step})", file=sys.stderr)
    else:
        # per-rank streams for anything random during training (nothing here; GRPO samples)
        seed_everything(cfg.seed + 1 + dist.rank)
    logger = MetricsLogger(run.out_dir, dist.is_main, step if run.resume_from is not None else None)
    peak = peak_flops(dist.device) * dist.world_size if dist.is_main else 1.0
    progress = Progress(cfg.max_steps, step, desc, dist.is_main, cfg.log_every)
    started = time.perf_counter()
    try:
        while step < cfg.max_steps:
            t0 = time.perf_counter()
            batch = data.next_batch()
            stats = train_step(wrapped, model, optimizer, local_micro_batches(batch, run), lr_at(step, cfg), run, loss_fn)
            if dist.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            step += 1
            tokens_per_s = stats.tokens / dt
            seq_len = batch.input_ids.shape[1]
            record = {"step": step, "loss": stats.loss, "lr": lr_at(step - 1, cfg), "tokens_per_s": tokens_per_s,
                      "mfu": model.flops_per_token(seq_len) * tokens_per_s / peak, "grad_norm": stats.grad_norm,
                      "tokens": stats.tokens, "targets": stats.targets, "step_time": dt,
                      "elapsed": time.perf_counter() - started, **stats.parts, **stats.router}
            if not math.isfinite(stats.loss):
                raise FloatingPointError(f"loss is {stats.loss} at step {step}; lower lr or check the data")
            logger.log(record)
            progress.update(step, record)
            if (cfg.save_every > 0 and step % cfg.save_every == 0) or step == cfg.max_steps:
                ckpt.save(step, model, tokenizer, optimizer, data.state_dict(), wrapped=wrapped)
    finally:
        progress.close()
        logger.close()
    final_model, _ = full_state(model, optimizer, wrapped, dist) if _is_fsdp(wrapped) else (model, None)
    if dist.is_main:
        save_checkpoint(final_model, tokenizer, run.out_dir / "final")
        print(f"wrote {run.out_dir / 'final'}", file=sys.stderr)
    return model


# ---------------------------------------------------------------- model and tokenizer for a run

def init_model(run: RunState, model_cfg, init: str | None, tokenizer_dir: str | None,
               corpus: Callable[[], Iterable[str]]):
    """(model, tokenizer) to train: the resumed checkpoint, else --init's checkpoint, else a fresh model of
    `model_cfg` (seeded) with the tokenizer from --tokenizer or trained on `corpus()` (deterministic, so
    every rank trains the same one)."""
    import r1lab
    from ..tokenizer import Tokenizer, train_tokenizer

    source = run.resume_from or (Path(init) if init else None)
    if source is not None:
        model, tokenizer = r1lab.load(source)
        if tokenizer is None:
            raise CheckpointError(f"{source} has no tokenizer.json; r1lab needs its own tokenizer next to the weights")
        # tensors read from safetensors can sit at any byte offset, and MKL's matmul results depend on
        # alignment: fresh (64-byte aligned) copies make a resumed run compute exactly as the original did
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                t.data = t.data.clone()
        return model, tokenizer
    tokenizer = Tokenizer.load(tokenizer_dir) if tokenizer_dir else train_tokenizer(corpus(), vocab_size=model_cfg.vocab_size)
    model_cfg.vocab_size = max(model_cfg.vocab_size, tokenizer.vocab_size)
    model_cfg.bos_token_id, model_cfg.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model_cfg.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(run.train.seed)
    return Transformer(model_cfg), tokenizer
