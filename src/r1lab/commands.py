"""Small commands: `init`, `tokenizer`, `tasks`."""
from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .config import build, model_presets
from .model.config import ModelConfig


def builtin_corpus(per_task: int = 300, seed: int = 0) -> Iterator[str]:
    """Texts from every built-in task (prompt and reference trace in chat form), for tokenizer training."""
    from . import tasks
    from .tokenizer import render_chat

    for name in tasks.names():
        for row in tasks.sample(name, per_task, seed=seed):
            yield render_chat([{"role": "user", "content": row["prompt"]}]) + row["reference_trace"]


def read_texts(paths: list[str]) -> Iterator[str]:
    """Lines of .txt files; `text`/`prompt`/`completion`/`messages` of JSONL rows."""
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"text file not found: {path}")
        with open(path, encoding="utf-8") as f:
            if path.suffix == ".jsonl":
                for line in f:
                    if line.strip():
                        row = json.loads(line)
                        for key in ("text", "prompt", "completion", "question", "answer", "problem", "solution"):
                            if isinstance(row.get(key), str):
                                yield row[key]
                        for m in row.get("messages") or []:
                            yield str(m.get("content", ""))
            else:
                yield from f


def make_tokenizer(vocab_size: int, text_files: list[str] | None = None):
    from .tokenizer import train_tokenizer

    texts = read_texts(text_files) if text_files else builtin_corpus()
    return train_tokenizer(texts, vocab_size=vocab_size)


# ---------------------------------------------------------------- init

@dataclass
class InitConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    seed: int = 0


def add_init_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu-tiny", help="model preset name or YAML file (default cpu-tiny)")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--tokenizer", help="reuse the tokenizer in this folder instead of training one")
    p.add_argument("--text", action="append", metavar="FILE", help="train the tokenizer on this .txt/.jsonl file (repeatable; default: built-in tasks)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. hidden_size=96 num_hidden_layers=2")


def run_init(args) -> int:
    import torch

    from .model import Transformer, save_checkpoint
    from .tokenizer import Tokenizer

    cfg = build(InitConfig, model_presets(), args.preset, args.overrides)
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
    p.add_argument("--text", action="append", metavar="FILE", help=".txt/.jsonl file to train on (repeatable; default: built-in tasks)")


def run_tokenizer(args) -> int:
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
    from . import tasks
    from .config import parse_knobs

    if args.action == "list":
        print("\n".join(tasks.names()))
        return 0
    if not args.name:
        raise FileNotFoundError("give a task name; one of: " + ", ".join(tasks.names()))
    tasks.main_sample(args.name, args.n, args.seed, parse_knobs(args.overrides))
    return 0
