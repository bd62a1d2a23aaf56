"""`r1lab eval CKPT --tasks addition,countdown --k 8 --out results.jsonl`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint folder")
    p.add_argument("--tasks", default="addition", help="comma-separated built-in task names and/or .jsonl/.parquet datasets")
    p.add_argument("--n", type=int, default=100, help="problems per task (default 100)")
    p.add_argument("--k", type=int, default=8, help="samples per problem for pass@1 and maj@k (0 = greedy only)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--no-greedy", action="store_true", help="skip the greedy pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write per-problem results here (JSONL); a summary goes beside it (.summary.json)")
    p.add_argument("--overwrite", action="store_true", help="replace the --out file if it exists")
    p.add_argument("--knob", action="append", default=[], metavar="KEY=VALUE",
                   help="difficulty knob for built-in tasks, e.g. --knob digits=4 (repeatable)")


def check_eval_args(args) -> None:
    """Bad numbers and an --out that would be overwritten are refused before the model is loaded."""
    for name, low in (("n", 1), ("k", 0), ("max_tokens", 1)):
        if getattr(args, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(args, name)}")
    if not 0 <= args.temperature <= 100 or not 0 < args.top_p <= 1:
        raise ValueError(f"--temperature must be in [0, 100] and --top-p in (0, 1], got {args.temperature}, {args.top_p}")
    if args.out:
        out = Path(args.out)
        if out.is_dir():
            raise ValueError(f"--out {out} is a folder; give a .jsonl file path")
        if out.exists() and not args.overwrite:
            raise ValueError(f"{out} exists; pass --overwrite to replace it (or choose another --out)")


def run_eval(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from .. import load
    from ..config import parse_knobs
    from ..engine import Engine
    from .evaluate import evaluate, load_problems, write_results

    knobs = parse_knobs(args.knob)
    check_eval_args(args)
    model, tokenizer = load(args.checkpoint)
    engine = Engine(model, tokenizer)
    results = []
    for spec in [s.strip() for s in args.tasks.split(",") if s.strip()]:
        problems = load_problems(spec, args.n, seed=args.seed, **knobs)
        if not problems:
            raise ValueError(f"{spec}: no problems to evaluate (an empty file?)")
        results.append(evaluate(engine, tokenizer, problems, task=Path(spec).stem, k=args.k, temperature=args.temperature,
                                top_p=args.top_p, max_tokens=args.max_tokens, greedy=not args.no_greedy, seed=args.seed))
    table = Table(title=f"eval of {args.checkpoint}")
    for col in ("task", "n", f"pass@1 (k={args.k})", "greedy", f"maj@{args.k}", "mean length", "truncated"):
        table.add_column(col, justify="right")

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    for r in results:
        table.add_row(r.task, str(r.n), pct(r.pass1), pct(r.greedy), pct(r.maj), f"{r.mean_length:.1f}", pct(r.truncated))
    Console().print(table)
    if args.out:
        write_results(results, args.out)
        summary = Path(args.out).with_suffix(".summary.json")
        summary.write_text(json.dumps([r.summary() for r in results], indent=2) + "\n")
        print(f"wrote {args.out} and {summary}")
    return 0
