"""Small commands: `init`, `tokenizer`, `tasks`. (The corpus helpers they use live in train/data.py.)"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import torch

from . import tasks
from .config import build, model_presets, parse_knobs
from .guard import check_output
from .model import Transformer, save_checkpoint
from .model.config import ModelConfig
from .tokenizer import Tokenizer, train_tokenizer
from .train.data import builtin_corpus, file_documents


def make_tokenizer(vocab_size: int, text_files: list[str] | None = None) -> Tokenizer:
    """A BPE tokenizer trained on the documents pretraining would read from `text_files` (JSONL/Parquet
    rows, .txt paragraphs), or on every built-in task."""
    return train_tokenizer(file_documents(text_files) if text_files else builtin_corpus(), vocab_size=vocab_size)


# ---------------------------------------------------------------- init

@dataclass
class InitConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    seed: int = 0


def add_init_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu-tiny", help="model preset name or YAML file (default cpu-tiny)")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint or tokenizer already in --out")
    p.add_argument("--tokenizer", help="reuse the tokenizer in this folder instead of training one")
    p.add_argument("--text", action="append", metavar="FILE",
                   help="train the tokenizer on this .txt/.jsonl file (repeatable; default: built-in tasks)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. hidden_size=96 num_hidden_layers=2")


def run_init(args) -> int:
    cfg = build(InitConfig, model_presets(), args.preset, args.overrides)
    check_output(args.out, overwrite=args.overwrite)
    tok = Tokenizer.load(args.tokenizer) if args.tokenizer else make_tokenizer(cfg.model.vocab_size, args.text)
    if tok.vocab_size > cfg.model.vocab_size:
        cfg.model.vocab_size = tok.vocab_size
    cfg.model.bos_token_id, cfg.model.eos_token_id, cfg.model.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    torch.manual_seed(cfg.seed)
    model = Transformer(cfg.model)
    save_checkpoint(model, tok, args.out)
    counts = model.param_count()
    print(f"wrote {args.out}: {counts['total'] / 1e6:.2f}M parameters ({counts['activated'] / 1e6:.2f}M activated per token), "
          f"vocab {tok.vocab_size}")
    return 0


# ---------------------------------------------------------------- tokenizer

def add_tokenizer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder to write tokenizer.json + tokenizer_config.json into")
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--overwrite", action="store_true", help="replace a tokenizer or checkpoint already in --out")
    p.add_argument("--text", action="append", metavar="FILE",
                   help=".txt/.jsonl/.parquet file to train on, read as pretraining reads it (repeatable; "
                        "default: built-in tasks)")


def run_tokenizer(args) -> int:
    check_output(args.out, overwrite=args.overwrite)
    tok = make_tokenizer(args.vocab_size, args.text)
    tok.save(args.out)
    print(f"wrote {args.out}/tokenizer.json: vocab {tok.vocab_size}")
    return 0


# ---------------------------------------------------------------- tasks

def add_tasks_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["sample", "list"])
    p.add_argument("name", nargs="?", help="task name (see `r1lab tasks list`)")
    p.add_argument("-n", type=int, default=5, help="how many examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="difficulty knobs as key=value, e.g. digits=6 noise=0.3")


def run_tasks(args) -> int:
    if args.action == "list":
        print("\n".join(tasks.names()))
        return 0
    if not args.name:
        raise FileNotFoundError("give a task name; one of: " + ", ".join(tasks.names()))
    tasks.main_sample(args.name, args.n, args.seed, parse_knobs(args.overrides))
    return 0
