"""One optimizer step: the optimizer, the learning-rate schedule, the model wrapped for data parallelism,
and forward/backward over micro-batches with gradient accumulation, clipping and the MoE bias update."""
from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from ..config import ConfigError, TrainConfig
from ..engine.precision import MIN_BF16_HIDDEN, has_fast_bf16
from ..model import Transformer, update_router_bias
from .data import Batch
from .dist import RunState, all_reduce_sum
from .optim import Muon, Optimizers

# ---------------------------------------------------------------- optimizer and schedule

def make_optimizer(model: nn.Module, cfg: TrainConfig):
    """AdamW; weight decay only on matrices, not on norms, biases or the embedding table.
    train.optimizer=muon: Muon for the matrices inside the blocks (attention, dense and shared MLPs), AdamW
    for the embedding, head, norms, routers and routed experts (see optim.py); one lr for both. LoRA adapters
    (the only trainable parameters with lora.r > 0) stay on AdamW."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.optimizer not in ("adamw", "muon"):
        raise ConfigError(f"train.optimizer must be adamw or muon, got {cfg.optimizer!r}")
    # routed experts stay on AdamW: each sees a fraction of the tokens, and orthogonalising their many
    # small matrices would cost most of Muon's time on a CPU for no measured gain
    muon, decay, no_decay = [], [], []
    for n, p in named:
        if (cfg.optimizer == "muon" and p.dim() == 2 and n.startswith(("model.layers.", "mtp."))
                and not n.endswith("mlp.gate.weight") and ".mlp.experts." not in n and ".lora_" not in n):
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


def train_dtype(run: RunState, model: nn.Module) -> str:
    """fp32 or bf16 (autocast, fp32 master weights). train.dtype=auto: bf16 on GPU, and on a CPU with bf16 units
    for models at least MIN_BF16_HIDDEN wide; else fp32. train.dtype=fp32|bf16 forces one. Measured (train_step
    tokens/s, 2 threads, AVX512-BF16): bf16 vs fp32 was 0.85x for cpu-tiny, 0.83x for cpu-20m (MoE; its experts
    are small matrices), 1.74x for cpu-20m dense and 1.44x for gpu-small (hidden 768, MoE)."""
    dtype = run.train.dtype
    if dtype == "auto":
        device = run.dist.device
        wide = getattr(model.config, "hidden_size", 0) >= MIN_BF16_HIDDEN
        dtype = "bf16" if device.type == "cuda" or (wide and has_fast_bf16(device)) else "fp32"
    if dtype not in ("fp32", "bf16"):
        raise ConfigError(f"train.dtype must be auto, fp32 or bf16, got {dtype!r}")
    return dtype


def autocast(run: RunState, model: nn.Module):
    """The forward's autocast context for train_dtype."""
    if train_dtype(run, model) == "fp32":
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
            with autocast(run, model):
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
