"""Training: the shared loop (loop.py), data (data.py), and the stages built on it (pretrain, sft; GRPO
and distillation add their own loss on top of the same pieces)."""
from .data import Batch, ChatStream, DataConfig, Example, PackedStream, chat_example, make_source
from .loop import (Checkpointer, Dist, MetricsLogger, Progress, RunState, StepStats, fit, init_distributed, init_model,
                   latest_checkpoint, lm_loss, local_micro_batches, lr_at, make_optimizer, peak_flops, save_config,
                   setup_run, train_step, wrap_model)

__all__ = ["Batch", "ChatStream", "Checkpointer", "DataConfig", "Dist", "Example", "MetricsLogger", "PackedStream",
           "Progress", "RunState", "StepStats", "chat_example", "fit", "init_distributed", "init_model",
           "latest_checkpoint", "lm_loss", "local_micro_batches", "lr_at", "make_optimizer", "make_source",
           "peak_flops", "save_config", "setup_run", "train_step", "wrap_model"]
