"""`r1lab export CKPT`: what the serving engines need from a checkpoint.

    r1lab export runs/speedrun/final --fix-config           # config.json as vLLM / SGLang read it
    r1lab export runs/speedrun/final --gguf final.gguf      # one file for llama.cpp and Ollama

Without an option it lists which engines serve the checkpoint and why the others do not.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..model.checkpoint import read_config, rewrite_config, verify_checkpoint
from ..model.serving import ENGINES, serving_problems
from .gguf_file import write_gguf


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint folder (r1lab's or a transformers DeepseekV3 folder)")
    p.add_argument("--fix-config", action="store_true",
                   help="rewrite config.json with the fields vLLM and SGLang read (routing method, serving dtype); "
                        "weights untouched, manifest updated")
    p.add_argument("--gguf", metavar="OUT.gguf", help="write the model, tokenizer and chat template as one GGUF file")
    p.add_argument("--gguf-type", default="f32", choices=["f32", "f16"], help="weight type in the GGUF file (default f32)")


def run(args) -> int:
    folder = Path(args.checkpoint)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    if args.fix_config:
        changed = rewrite_config(folder)
        print(f"{folder / 'config.json'}: " + (f"updated {', '.join(changed)}" if changed else "already up to date"))
    if args.gguf:
        verify_checkpoint(folder)
        info = write_gguf(folder, args.gguf, args.gguf_type)
        print(f"wrote {info['path']}: {info['architecture']}, {info['tensors']} tensors, {info['bytes'] / 1e6:.1f} MB")
    if not (args.fix_config or args.gguf):
        problems = serving_problems(read_config(folder))
        stale = [k for k in ("topk_method", "scoring_func") if k not in json.loads((folder / "config.json").read_text())]
        for engine in ENGINES:
            why = problems[engine] + ([f"config.json lacks {', '.join(stale)}: run with --fix-config"]
                                      if stale and engine in ("vllm", "sglang") else [])
            print(f"{engine:<12} " + ("loads" if not why else "no: " + "; ".join(why)))
    return 0
