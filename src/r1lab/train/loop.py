"""The one training loop. Every stage that trains (pretrain, SFT, distillation's SFT, GRPO) runs `train`:
setup of the stateful parts, resume, metrics, progress, checkpoint cadence, the wall-time budget and the
final save, around a step function that the stage provides:

    step_fn(step) -> record      # step: 0-based optimizer step; record: that step's metrics (with "loss")
                                 # a "stop" key (not logged) ends the run after this step, saved as at the time limit

`lm_step` is pretraining's and SFT's step (one batch of the stream, one optimizer step); GRPO's is
`train.grpo.GRPOStep` (collect -> advantages -> policy batch -> update -> metrics record).

    run = setup_run(out, cfg, resume)               # distributed job, seeds, the checkpoint to resume from
    model, tokenizer = load_model_for(run, ...)     # the resumed, --init or fresh model; tokenizer settled
    trainer = Trainer.build(run, model, tokenizer)  # wrapped model + optimizer
    train(trainer, stream, lm_step(trainer, stream), desc="pretrain")
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ConfigError, TrainConfig, save_yaml
from ..guard import check_output
from ..model import Transformer
from ..model.adapter import load_any, save_model
from ..model.checkpoint import CheckpointError
from ..tokenizer import Tokenizer
from .checkpoint import Checkpointer, Stateful, full_state, is_fsdp, resume_point
from .data import Batch
from .dist import RunState, all_reduce_sum, broadcast_object, init_distributed, seed_everything
from .metrics import MetricsLogger, Progress, device_peak
from .step import lm_loss, local_micro_batches, lr_at, make_optimizer, train_dtype, train_step, wrap_model

# ---------------------------------------------------------------- the run, its model and tokenizer


def setup_run(out_dir: str | Path, cfg: Any, resume: bool, train_cfg: TrainConfig | None = None,
              overwrite: bool = False) -> RunState:
    """Join the distributed job, seed every RNG, and find the checkpoint to resume from.

    Without --resume or --overwrite, a folder that holds a trained model or metrics is refused (guard.py);
    with --resume and no checkpoint yet, the run starts fresh, so scripts can always pass it; with --resume
    and every checkpoint damaged, it is refused (see checkpoint.resume_point)."""
    train_cfg = train_cfg or cfg.train
    dist = init_distributed(train_cfg.device)
    out_dir = Path(out_dir)
    latest = None
    if dist.is_main:
        check_output(out_dir, overwrite=overwrite, resume=resume, discard=("checkpoints", "metrics.jsonl"))
        latest = resume_point(out_dir) if resume else None
    latest = broadcast_object(None if latest is None else str(latest), dist)
    seed_everything(train_cfg.seed)
    return RunState(out_dir, dist, train_cfg, Path(latest) if latest else None)


def save_config(run: RunState, cfg: Any) -> None:
    """config.yaml: the resolved config (after the tokenizer and --init settled the model's shape)."""
    if run.dist.is_main:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run.out_dir / "config.yaml")


def load_model_for(run: RunState, init: str | Path | None, model_cfg=None,
                   tokenizer: Tokenizer | None = None) -> tuple[Transformer, Tokenizer]:
    """(model, tokenizer) to train: the resumed checkpoint, else `init`'s checkpoint (each with its own
    tokenizer), else a fresh model of `model_cfg` (seeded with train.seed) sized to `tokenizer`."""
    source = run.resume_from or (Path(init) if init else None)
    if source is not None:
        model, loaded = load_any(source)  # a LoRA run's checkpoints are adapter folders
        if loaded is None:
            raise CheckpointError(f"{source} has no tokenizer.json; r1lab needs its own tokenizer next to the weights")
        # tensors read from safetensors can sit at any byte offset, and MKL's matmul results depend on
        # alignment: fresh (64-byte aligned) copies make a resumed run compute exactly as the original did
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                t.data = t.data.clone()
        return model, loaded
    if model_cfg is None or tokenizer is None:
        raise ConfigError("a fresh model needs a model config and a tokenizer (or an init checkpoint)")
    model_cfg.vocab_size = max(model_cfg.vocab_size, tokenizer.vocab_size)
    model_cfg.bos_token_id, model_cfg.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model_cfg.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(run.train.seed)
    return Transformer(model_cfg), tokenizer


@dataclass
class Trainer:
    """The parts a step function works on: the run, the model (and its data-parallel wrapper), the
    tokenizer, the optimizer, and the device's peak FLOP/s for MFU (set by `train`)."""

    run: RunState
    model: Transformer
    tokenizer: Tokenizer
    wrapped: nn.Module
    optimizer: torch.optim.Optimizer
    peak: float = 1.0

    @classmethod
    def build(cls, run: RunState, model: Transformer, tokenizer: Tokenizer) -> "Trainer":
        wrapped = wrap_model(model, run)
        return cls(run, model, tokenizer, wrapped, make_optimizer(model, run.train))


# ---------------------------------------------------------------- the loop

StepFn = Callable[[int], dict[str, Any]]


def train(trainer: Trainer, stream: Stateful, step_fn: StepFn, *, desc: str, extra: Stateful | None = None,
          time_limit_s: float = 0.0) -> int:
    """Run `step_fn` for train.max_steps optimizer steps (or until `time_limit_s` of wall time), resuming
    from run.resume_from; log every step, checkpoint every train.save_every steps and at the end, then
    write the servable model to out_dir/final. Returns the last step."""
    run, cfg, dist, model = trainer.run, trainer.run.train, trainer.run.dist, trainer.model
    ckpt = Checkpointer(run, model, trainer.tokenizer, trainer.optimizer, stream, wrapped=trainer.wrapped, extra=extra)
    step = 0
    if run.resume_from is not None:
        step = ckpt.restore(run.resume_from)
        if dist.is_main:
            print(f"resuming from {run.resume_from} (step {step})", file=sys.stderr)
    else:
        seed_everything(cfg.seed + 1 + dist.rank)  # per-rank streams for anything random while training
    logger = MetricsLogger(run.out_dir, dist.is_main, step if run.resume_from is not None else None)
    # a quick re-measure each run (3 matmuls, well under a second): the cache keeps the best figure seen, so
    # one taken while the machine was busy does not stay the denominator
    peak_dtype = torch.bfloat16 if train_dtype(run, model) == "bf16" else torch.float32  # MFU of what it runs
    peak = device_peak(dist.device, refresh=True, repeats=2, dtype=peak_dtype) if dist.is_main else None
    trainer.peak = peak.flops * dist.world_size if peak is not None else 1.0
    progress = Progress(cfg.max_steps, step, desc, dist.is_main, cfg.log_every)
    if peak is not None:
        progress.peak = peak.label() + (f" x {dist.world_size} ranks" if dist.world_size > 1 else "")
    started = time.perf_counter()
    try:
        while step < cfg.max_steps:
            record = step_fn(step)
            stop = record.pop("stop", None)  # a step function's reason to end the run here (saved like at the time limit)
            step += 1
            record = {"step": step, **record, "elapsed": time.perf_counter() - started}
            if not math.isfinite(record["loss"]):
                raise FloatingPointError(f"{desc}: loss is {record['loss']} at step {step}; lower lr or check the data")
            logger.log(record)
            progress.update(step, record)
            out_of_time = time_limit_s > 0 and time.perf_counter() - started >= time_limit_s or bool(stop)
            if dist.enabled:  # every rank must stop at the same step
                out_of_time = bool(all_reduce_sum([float(out_of_time)], dist)[0])
            if out_of_time and dist.is_main:
                print(f"{desc}: stopping at step {step}: {stop}" if stop else
                      f"{desc}: time limit of {time_limit_s:.0f} s reached at step {step}", file=sys.stderr)
            if (cfg.save_every > 0 and step % cfg.save_every == 0) or step == cfg.max_steps or out_of_time:
                ckpt.save(step)
            if out_of_time:
                break
    finally:
        progress.close()
        logger.close()
    final_model = full_state(model, trainer.optimizer, trainer.wrapped, dist)[0] if is_fsdp(trainer.wrapped) else model
    if dist.is_main:
        save_model(final_model, trainer.tokenizer, run.out_dir / "final")
        print(f"wrote {run.out_dir / 'final'}", file=sys.stderr)
    return step


# ---------------------------------------------------------------- pretraining's and SFT's step

def lm_step(trainer: Trainer, stream, loss_fn: Callable = lm_loss) -> StepFn:
    """One optimizer step on the stream's next global batch (this rank's rows, in micro-batches)."""
    run, cfg, model = trainer.run, trainer.run.train, trainer.model

    def step_fn(step: int) -> dict[str, Any]:
        started = time.perf_counter()
        batch: Batch = stream.next_batch()
        lr = lr_at(step, cfg)
        stats = train_step(trainer.wrapped, model, trainer.optimizer, local_micro_batches(batch, run), lr, run, loss_fn)
        if run.dist.device.type == "cuda":
            torch.cuda.synchronize()
        step_time = time.perf_counter() - started
        tokens_per_s = stats.tokens / step_time
        mfu = model.flops_per_token(batch.input_ids.shape[1]) * tokens_per_s / trainer.peak
        return {"loss": stats.loss, "lr": lr, "tokens_per_s": tokens_per_s, "mfu": mfu, "grad_norm": stats.grad_norm,
                "tokens": stats.tokens, "targets": stats.targets, "step_time": step_time, **stats.parts, **stats.router}

    return step_fn
