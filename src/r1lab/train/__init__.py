"""Training: the one outer loop (loop.py) around a step function, the pieces it is built from (dist,
step, checkpoint, metrics), data (data.py), and the stages: pretrain, sft, grpo, distill."""
from .data import Batch, ChatStream, DataConfig, Example, PackedStream, chat_example, make_source, make_stream
from .dist import Dist, RunState, init_distributed
from .loop import Trainer, lm_step, load_model_for, save_config, setup_run, train
from .step import lm_loss, local_micro_batches, lr_at, make_optimizer, train_step, wrap_model

__all__ = ["Batch", "ChatStream", "DataConfig", "Dist", "Example", "PackedStream", "RunState", "Trainer", "chat_example",
           "init_distributed", "lm_loss", "lm_step", "load_model_for", "local_micro_batches", "lr_at", "make_optimizer",
           "make_source", "make_stream", "save_config", "setup_run", "train", "train_step", "wrap_model"]
