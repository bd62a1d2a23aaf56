"""`r1lab pretrain`: next-token training on packed token blocks, from local text files or a task mixture.

    r1lab pretrain --preset cpu-tiny --out runs/base max_steps=300
    r1lab pretrain --preset cpu-tiny --out runs/base --data corpus.jsonl --resume
    torchrun --nproc_per_node=2 -m r1lab.cli pretrain --preset cpu-tiny --out runs/base

In Python: `pretrain(cfg, out, init=None, tokenizer=None, resume=False)`; `train_lm` is what it shares
with `sft` (and distillation's SFT): the run folder, the model and tokenizer, config.yaml, the loop.

Documents (a text paragraph, a `text` field, or a task's prompt + reference trace in chat form) are
concatenated, each BOS ... EOS, and cut into seq_len blocks.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError, TrainConfig, build
from ..model.config import PRESETS as MODEL_PRESETS, ModelConfig
from ..tokenizer import Tokenizer, train_tokenizer
from .data import DataConfig, make_source, make_stream, tokenizer_texts
from .datacheck import check_data_files
from .dist import distributed_job
from .lora import attach_lora
from .loop import Trainer, load_model_for, lm_step, save_config, setup_run, train


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)


PRESETS: dict[str, dict] = {
    # On the addition + countdown mixture (30% slipped traces) cpu-tiny learns to copy the operands' digits
    # in a sudden drop of the loss around step 250-350 with Muon: after 600 steps, 2 seeds gave 94% and 98%
    # greedy on held-out 4-digit additions (pass@1 at temperature 1: 50%, 48%); 300 Muon steps or 300 AdamW
    # steps gave 0%, and 400 steps at lr 6e-3 also 0%
    "cpu-tiny": {"model": MODEL_PRESETS["cpu-tiny"],
                 "train": dict(max_steps=600, batch_size=16, seq_len=256, lr=3e-3, warmup_steps=30, save_every=200,
                               optimizer="muon")},
    "cpu-vllm": {"model": MODEL_PRESETS["cpu-vllm"],
                 "train": dict(max_steps=600, batch_size=16, seq_len=256, lr=3e-3, warmup_steps=30, save_every=200,
                               optimizer="muon")},
    "cpu-micro": {"model": MODEL_PRESETS["cpu-micro"],
                  "train": dict(max_steps=600, batch_size=16, seq_len=256, lr=4e-3, warmup_steps=30, save_every=200,
                                optimizer="muon")},
    "cpu-20m": {"model": MODEL_PRESETS["cpu-20m"],
                "train": dict(max_steps=500, batch_size=16, seq_len=512, lr=1.5e-3, warmup_steps=50, save_every=100)},
    "gpu-small": {"model": MODEL_PRESETS["gpu-small"],
                  "train": dict(max_steps=5000, batch_size=64, micro_batch_size=16, seq_len=2048, lr=6e-4,
                                warmup_steps=200, save_every=500)},
}


def settle_tokenizer(tokenizer: str | Path | Tokenizer | None, cfg, source) -> Tokenizer:
    """The tokenizer of a fresh model: the one given (object or folder), else one trained on the run's
    documents or on the built-in tasks (deterministic, so every rank trains the same one)."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if tokenizer:
        return Tokenizer.load(tokenizer)
    return train_tokenizer(tokenizer_texts(cfg.data, source), vocab_size=cfg.model.vocab_size)


def train_lm(cfg, out: str | Path, *, stream: str, desc: str, init: str | Path | None = None,
             tokenizer: str | Path | Tokenizer | None = None, resume: bool = False, overwrite: bool = False) -> Path:
    """Next-token training of `cfg` (model, train, data sections) into `out`, on a `stream` of "packed"
    documents or "chat" examples: run folder, model + tokenizer, config.yaml, the loop. Returns out/final.
    overwrite: replace a trained run in `out` (see guard.py)."""
    if cfg.train.seq_len > cfg.model.max_position_embeddings:
        raise ConfigError(f"seq_len {cfg.train.seq_len} exceeds the model's max_position_embeddings "
                          f"{cfg.model.max_position_embeddings}")
    if cfg.data.files:  # every line checked before anything is written
        check_data_files(cfg.data.files, "text" if stream == "packed" else "chat")
    with distributed_job():
        run = setup_run(out, cfg, resume, overwrite=overwrite)
        source = make_source(cfg.data, cfg.train.seed)
        from_checkpoint = run.resume_from is not None or init is not None
        settled = None if from_checkpoint else settle_tokenizer(tokenizer, cfg, source)
        model, settled = load_model_for(run, init, cfg.model, settled)
        model = attach_lora(model, getattr(cfg, "lora", None), init, run)  # LoRA hook (SFT, distillation)
        cfg.model = model.config
        save_config(run, cfg)
        if run.dist.is_main and run.resume_from is None:
            counts = model.param_count()
            print(f"{desc}: {counts['total'] / 1e6:.2f}M parameters ({counts['activated'] / 1e6:.2f}M activated), "
                  f"vocab {settled.vocab_size}, {run.dist.world_size} rank(s) on {run.dist.device}", file=sys.stderr)
        trainer = Trainer.build(run, model, settled)
        data = make_stream(stream, source, settled, cfg.train, cfg.data)
        train(trainer, data, lm_step(trainer, data), desc=desc)
    return Path(out) / "final"


def pretrain(cfg: PretrainConfig, out: str | Path, *, init: str | Path | None = None,
             tokenizer: str | Path | Tokenizer | None = None, resume: bool = False, overwrite: bool = False) -> Path:
    """Pretrain `cfg.model` (or `init`'s model) on cfg.data's packed documents; returns out/final."""
    return train_lm(cfg, out, stream="packed", desc="pretrain", init=init, tokenizer=tokenizer, resume=resume,
                    overwrite=overwrite)


# ---------------------------------------------------------------- command

def add_common_arguments(p: argparse.ArgumentParser, presets: dict) -> None:
    p.add_argument("--preset", default="cpu-tiny", help=f"preset ({', '.join(presets)}) or a YAML file (default cpu-tiny)")
    p.add_argument("--out", required=True, help="run folder: config.yaml, metrics.jsonl, checkpoints/, final/")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out (fresh if none)")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds (checkpoints, final/, metrics)")
    p.add_argument("--tokenizer", metavar="DIR", help="without --init: use this tokenizer instead of training one")
    p.add_argument("--data", nargs="+", metavar="FILE", help="JSONL / Parquet / txt files (default: the built-in task mixture)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. max_steps=100 lr=1e-3 data.tasks=addition")


def add_pretrain_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, PRESETS)
    p.add_argument("--init", metavar="CKPT", help="start from this checkpoint (model + tokenizer) instead of a fresh model")


def split_data_args(args) -> None:
    """`--data a.jsonl b.jsonl max_steps=5`: argparse hands the key=value items to --data; give them back."""
    files = args.data or []
    args.overrides = [*args.overrides, *(f for f in files if "=" in f and not Path(f).exists())]
    args.data = [f for f in files if "=" not in f or Path(f).exists()]


def config_from_args(cls, presets: dict, args):
    """The stage's config from --preset, key=value overrides and --data."""
    split_data_args(args)
    cfg = build(cls, presets, args.preset, args.overrides)
    if args.data:
        cfg.data.files = list(args.data)
    return cfg


def run_pretrain(args) -> int:
    pretrain(config_from_args(PretrainConfig, PRESETS, args), args.out, init=args.init, tokenizer=args.tokenizer,
             resume=args.resume, overwrite=args.overwrite)
    return 0
