"""`r1lab`: one entry point, a sub-command per stage.

Each command lives in the module that does the work; that module provides `add_arguments(parser)` and
`run(args) -> int`. Modules are imported only when their command runs, so `r1lab --help` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name: (module, one-line help, example)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "init": ("r1lab.commands", "write a randomly initialised checkpoint (model + tokenizer)",
             "r1lab init --preset cpu-tiny --out runs/init"),
    "tokenizer": ("r1lab.commands", "train a byte-level BPE tokenizer on text files or the built-in tasks",
                  "r1lab tokenizer --out runs/tok --vocab-size 512"),
    "tasks": ("r1lab.commands", "print examples of a built-in verifiable task",
              "r1lab tasks sample addition -n 5"),
}


def _listing() -> str:
    width = max(map(len, COMMANDS))
    lines = ["commands:"]
    for name, (_, help_, example) in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {help_}")
        lines.append(f"  {'':<{width}}    e.g. {example}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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
    args = parser.parse_args(argv[1:])
    run = getattr(module, f"run_{ns.command}", getattr(module, "run", None))
    from .config import ConfigError
    from .model.checkpoint import CheckpointError

    try:
        return int(run(args) or 0)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"r1lab {ns.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"r1lab {ns.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
