"""`r1lab`: one entry point, a sub-command per stage.

Each command lives in the module that does the work; that module provides `add_arguments(parser)` and
`run(args) -> int`. Modules are imported only when their command runs, so `r1lab --help` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# name: (module, one-line help, example)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "init": ("r1lab.commands", "write a randomly initialised checkpoint (model + tokenizer)",
             "r1lab init --preset cpu-tiny --out runs/init"),
    "tokenizer": ("r1lab.commands", "train a byte-level BPE tokenizer on text files or the built-in tasks",
                  "r1lab tokenizer --out runs/tok --vocab-size 512"),
    "tasks": ("r1lab.commands", "print examples of a built-in verifiable task",
              "r1lab tasks sample addition -n 5"),
    "generate": ("r1lab.engine.cli", "generate a completion from a checkpoint",
                 'r1lab generate runs/speedrun/final "What is 12 + 34?" --max-tokens 64'),
    "pretrain": ("r1lab.train.pretrain", "next-token pretraining on text files or a task mixture",
                 "r1lab pretrain --preset cpu-tiny --out runs/base max_steps=300"),
    "sft": ("r1lab.train.sft", "supervised fine-tuning on chat data (loss on assistant tokens only)",
            "r1lab sft --preset cpu-tiny --init runs/base/final --out runs/sft"),
    "eval": ("r1lab.eval.cli", "evaluate a checkpoint or a served model: pass@1 over k samples, greedy, maj@k, 95% intervals",
             "r1lab eval runs/speedrun/final --tasks addition,countdown --k 8 --out runs/eval.jsonl"),
    "grpo": ("r1lab.train.grpo", "reinforcement learning on verifiable rewards (GRPO, Dr. GRPO, DAPO)",
             "r1lab grpo --preset cpu-tiny --init runs/sft/final --out runs/grpo max_steps=100"),
    "distill": ("r1lab.train.distill",
                "distill a teacher's verified reasoning (checkpoint or OpenAI-compatible URL) into a student",
                "r1lab distill --teacher runs/r1/final --student runs/student-base/final --out runs/distill"),
    "merge": ("r1lab.merge", "fold a LoRA adapter folder into its base model: a full checkpoint",
              "r1lab merge runs/sft-lora/final --out runs/sft-merged"),
    "speedrun": ("r1lab.speedrun", "the whole R1 recipe end to end: base, R1-Zero, R1, distillation, eval, report card",
                 "r1lab speedrun --preset cpu --out runs/speedrun"),
    "findings": ("r1lab.eval.seeds", "the findings of finished runs side by side, a column per seed, with 95% intervals",
                 "r1lab findings runs/seeds/seed-0 runs/seeds/seed-1 --out runs/seeds/findings.md"),
    "export": ("r1lab.export.cli", "make a checkpoint load in vLLM / SGLang (--fix-config) or llama.cpp / Ollama (--gguf)",
               "r1lab export runs/speedrun/final --gguf final.gguf"),
    "checkpoint": ("r1lab.checkpoint_cli", "rehash a checkpoint's manifest after a deliberate edit of its files",
                   "r1lab checkpoint rehash runs/sft/final"),
    "serve": ("r1lab.serve.cli", "OpenAI-compatible API + chat page that streams the thinking",
              "r1lab serve runs/speedrun/final --port 8000"),
    "chat": ("r1lab.serve.chat", "chat with a checkpoint in the terminal, thinking shown dimmed",
             "r1lab chat runs/speedrun/final"),
}


def _listing() -> str:
    width = max(map(len, COMMANDS))
    lines = ["commands:"]
    for name, (_, help_, example) in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {help_}")
        lines.append(f"  {'':<{width}}    e.g. {example}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    code = _main(sys.argv[1:] if argv is None else argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A torchrun worker whose job is done (checkpoints written, process group torn down) leaves without
        # the interpreter's teardown: in about 1 run in 30, a gloo rank's C++ destructors there ended in
        # "terminate called without an active exception" (SIGABRT), failing a finished job.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed, or its reader left
                pass
        os._exit(code)
    return code


def _main(argv: list[str]) -> int:
    top = argparse.ArgumentParser(
        prog="r1lab",
        description="Build your own DeepSeek-R1-style reasoning model: pretrain, SFT, GRPO, distill, eval, serve.",
        epilog=_listing(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"r1lab {__import__('r1lab').__version__}")
    top.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    top.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    if not argv:
        top.print_help()
        return 2
    ns = top.parse_args(argv[:1])
    module_name, help_, example = COMMANDS[ns.command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"r1lab {ns.command}", description=f"{help_}.\n\nexample: {example}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    getattr(module, f"add_{ns.command}_arguments", getattr(module, "add_arguments", None))(parser)
    args = parser.parse_intermixed_args(argv[1:])
    run = getattr(module, f"run_{ns.command}", getattr(module, "run", None))
    from .config import ConfigError
    from .model.checkpoint import CheckpointError

    try:
        return int(run(args) or 0)
    except BrokenPipeError:  # `r1lab ... | head`: the reader left, nothing more to say
        sys.stderr.close()
        return 0
    except (ConfigError, CheckpointError, OSError, ValueError, FloatingPointError) as e:
        message = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the exception held
        print(f"r1lab {ns.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"r1lab {ns.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
