"""`r1lab pretrain`: next-token training on packed token blocks, from local text files or a task mixture.

    r1lab pretrain --preset cpu-tiny --out runs/base max_steps=300
    r1lab pretrain --preset cpu-tiny --out runs/base --data corpus.jsonl --resume
    torchrun --nproc_per_node=2 -m r1lab.cli pretrain --preset cpu-tiny --out runs/base

Documents (a text paragraph, a `text` field, or a task's prompt + reference trace in chat form) are
concatenated, each BOS ... EOS, and cut into seq_len blocks.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError, TrainConfig, build
from ..model.config import PRESETS as MODEL_PRESETS, ModelConfig
from .data import DataConfig, PackedStream, make_source, pretrain_text
from .loop import distributed_job, fit, init_model, save_config, setup_run


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
    "cpu-micro": {"model": MODEL_PRESETS["cpu-micro"],
                  "train": dict(max_steps=600, batch_size=16, seq_len=256, lr=4e-3, warmup_steps=30, save_every=200,
                                optimizer="muon")},
    "cpu-20m": {"model": MODEL_PRESETS["cpu-20m"],
                "train": dict(max_steps=500, batch_size=16, seq_len=512, lr=1.5e-3, warmup_steps=50, save_every=100)},
    "gpu-small": {"model": MODEL_PRESETS["gpu-small"],
                  "train": dict(max_steps=5000, batch_size=64, micro_batch_size=16, seq_len=2048, lr=6e-4,
                                warmup_steps=200, save_every=500)},
}


def add_common_arguments(p: argparse.ArgumentParser, presets: dict) -> None:
    p.add_argument("--preset", default="cpu-tiny", help=f"preset ({', '.join(presets)}) or a YAML file (default cpu-tiny)")
    p.add_argument("--out", required=True, help="run folder: config.yaml, metrics.jsonl, checkpoints/, final/")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out (fresh if none)")
    p.add_argument("--tokenizer", metavar="DIR", help="without --init: use this tokenizer instead of training one")
    p.add_argument("--data", nargs="+", metavar="FILE", help="JSONL / Parquet / txt files (default: the built-in task mixture)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. max_steps=100 lr=1e-3 data.tasks=addition")


def add_pretrain_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, PRESETS)
    p.add_argument("--init", metavar="CKPT", help="start from this checkpoint (model + tokenizer) instead of a fresh model")


def tokenizer_corpus(data: DataConfig, source) -> Callable[[], Iterable[str]]:
    """Texts to train a fresh tokenizer on: the files' documents, or every built-in task (so the later
    stages' tasks tokenize well whatever this run's mixture is)."""
    from ..commands import builtin_corpus

    if data.files:
        return lambda: (pretrain_text(source[i]) for i in range(min(20_000, len(source.rows))))
    return builtin_corpus


def split_data_args(args) -> None:
    """`--data a.jsonl b.jsonl max_steps=5`: argparse hands the key=value items to --data; give them back."""
    files = args.data or []
    args.overrides = [*args.overrides, *(f for f in files if "=" in f and not Path(f).exists())]
    args.data = [f for f in files if "=" not in f or Path(f).exists()]


def train_command(cfg, args, make_stream: Callable, desc: str) -> int:
    """What pretrain and SFT share: run folder, model + tokenizer, config.yaml, the loop, teardown."""
    if getattr(args, "data", None):
        cfg.data.files = list(args.data)
    if cfg.train.seq_len > cfg.model.max_position_embeddings:
        raise ConfigError(f"seq_len {cfg.train.seq_len} exceeds the model's max_position_embeddings {cfg.model.max_position_embeddings}")
    with distributed_job():
        run = setup_run(args.out, cfg, args.resume)
        source = make_source(cfg.data, cfg.train.seed)
        model, tokenizer = init_model(run, cfg.model, args.init, args.tokenizer, tokenizer_corpus(cfg.data, source))
        cfg.model = model.config
        save_config(run, cfg)
        if run.dist.is_main and run.resume_from is None:
            counts = model.param_count()
            print(f"{desc}: {counts['total'] / 1e6:.2f}M parameters ({counts['activated'] / 1e6:.2f}M activated), "
                  f"vocab {tokenizer.vocab_size}, {run.dist.world_size} rank(s) on {run.dist.device}", file=sys.stderr)
        fit(run, model, tokenizer, make_stream(source, tokenizer, cfg), desc=desc)
    return 0


def run_pretrain(args) -> int:
    split_data_args(args)
    cfg = build(PretrainConfig, PRESETS, args.preset, args.overrides)
    return train_command(cfg, args, lambda source, tok, c: PackedStream(source, tok, c.train.seq_len, c.train.batch_size),
                         "pretrain")

