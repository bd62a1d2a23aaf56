"""`r1lab eval CKPT --tasks addition,countdown --k 8 --out results.jsonl`, or a served model:
`r1lab eval --endpoint http://127.0.0.1:8000/v1 --model r1 --tasks math500.jsonl`.

Sampling defaults depend on what is evaluated: built-in tasks keep their own (temperature 1, top-p 1, their
prompt as trained); dataset files get the R1 paper's set-up for reasoning models (temperature 0.6, top-p
0.95, the R1 math prompt appended). --temperature, --top-p and --instruction override both.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .endpoint import endpoint_generator
from .evaluate import R1_MATH_INSTRUCTION, R1_SAMPLING, TASK_SAMPLING, TaskResult, engine_generator, is_task
from .stats import fmt_interval


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help="checkpoint folder (or use --endpoint)")
    p.add_argument("--endpoint", metavar="URL", help="grade an OpenAI-compatible server instead, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", help="model name to request from --endpoint")
    p.add_argument("--api-key", help="bearer token for --endpoint (default: $OPENAI_API_KEY or $R1LAB_API_KEY)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight against --endpoint (default 8)")
    p.add_argument("--retries", type=int, default=4, help="retries per request on errors, 429 and 5xx (default 4)")
    p.add_argument("--tasks", default="addition", help="comma-separated built-in task names and/or .jsonl/.parquet datasets")
    p.add_argument("--n", type=int, default=100, help="problems per task (default 100)")
    p.add_argument("--k", type=int, default=8, help="samples per problem for pass@1 and maj@k/cons@k (0 = greedy only)")
    p.add_argument("--temperature", type=float, default=None, help="default: 1.0 for built-in tasks, 0.6 (R1) for datasets")
    p.add_argument("--top-p", type=float, default=None, help="default: 1.0 for built-in tasks, 0.95 (R1) for datasets")
    p.add_argument("--instruction", default=None,
                   help="appended to each prompt; default: none for built-in tasks, the R1 math prompt for datasets "
                        f"({R1_MATH_INSTRUCTION!r}); '' for none")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--thinking-budget", type=int, nargs="+", default=None, metavar="N",
                   help="close the thinking after N tokens; several N: one evaluation each, and the curve "
                        "budget -> pass@1 (an r1lab server for --endpoint, or vLLM's thinking_token_budget)")
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
    if any(b < 0 for b in getattr(args, "thinking_budget", None) or []):
        raise ValueError(f"--thinking-budget must be at least 0, got {args.thinking_budget}")
    if args.temperature is not None and not 0 <= args.temperature <= 100:
        raise ValueError(f"--temperature must be in [0, 100], got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.out:
        out = Path(args.out)
        if out.is_dir():
            raise ValueError(f"--out {out} is a folder; give a .jsonl file path")
        if out.exists() and not args.overwrite:
            raise ValueError(f"{out} exists; pass --overwrite to replace it (or choose another --out)")


def settings_for(spec: str, args, model_defaults: dict | None = None) -> dict:
    """Sampling and prompt settings for one task spec: its defaults, then the checkpoint's generation_config.json
    (open models: Qwen, Llama), then what the command line set."""
    builtin = is_task(spec)
    defaults = dict(TASK_SAMPLING if builtin else R1_SAMPLING, instruction="" if builtin else R1_MATH_INSTRUCTION)
    defaults.update(model_defaults or {})
    given = {"temperature": args.temperature, "top_p": args.top_p, "instruction": args.instruction}
    return {key: defaults[key] if given[key] is None else given[key] for key in defaults}


def _generator(args):
    if args.endpoint:
        if not args.model:
            raise SystemExit("r1lab eval: --endpoint needs --model NAME (the model the server serves)")
        if args.checkpoint:
            raise SystemExit("r1lab eval: give a checkpoint or --endpoint, not both")
        generate = endpoint_generator(args.endpoint, args.model, args.api_key, args.concurrency, args.retries)
        return generate, args.endpoint, {}
    if not args.checkpoint:
        raise SystemExit("r1lab eval: give a checkpoint folder or --endpoint URL --model NAME")
    from .. import load
    from ..engine import Engine
    from ..model.families import generation_defaults

    model, tokenizer = load(args.checkpoint)
    return engine_generator(Engine(model, tokenizer), tokenizer), args.checkpoint, generation_defaults(model)


def print_table(results: list[TaskResult], title: str, k: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("task", "n", "skipped", f"pass@1 (k={k})", "95% CI problems", "95% CI samples", "greedy", "95% CI",
                f"maj@{k} (cons@{k})", "95% CI", "mean length", "truncated"):
        table.add_column(col, justify="right")

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    for r in results:
        table.add_row(r.task, str(r.n), str(r.skipped), pct(r.pass1), fmt_interval(r.pass1_ci), fmt_interval(r.pass1_ci_samples),
                      pct(r.greedy), fmt_interval(r.greedy_ci), pct(r.maj), fmt_interval(r.maj_ci), f"{r.mean_length:.1f}",
                      pct(r.truncated))
    console = Console()
    console.print(table)
    for r in results:
        if r.skipped:
            console.print(f"{r.task}: {r.skipped} problem(s) skipped: the prompt does not fit the context")
    console.print(results[0].ci_method if results else "", style="dim")


def print_budget_curve(results: list[TaskResult]) -> None:
    """The curve thinking budget -> pass@1 (and mean length), one line per budget of each task."""
    print("thinking budget -> pass@1 (95% CI over problems), mean completion tokens")
    for r in results:
        pass1 = "-" if r.pass1 is None else f"{100 * r.pass1:5.1f}%"
        print(f"  {r.task:<32} {pass1} {fmt_interval(r.pass1_ci):>16}  {r.mean_length:7.1f} tokens")


def run_eval(args) -> int:
    from ..config import parse_knobs
    from .evaluate import evaluate_with, load_problems, write_results

    knobs = parse_knobs(args.knob)
    check_eval_args(args)
    generate, source, model_defaults = _generator(args)
    results = []
    budgets = args.thinking_budget or [None]
    for spec in [s.strip() for s in args.tasks.split(",") if s.strip()]:
        problems = load_problems(spec, args.n, seed=args.seed, **(knobs if is_task(spec) else {}))
        if not problems:
            raise ValueError(f"{spec}: no problems to evaluate (an empty file?)")
        for budget in budgets:
            name = Path(spec).stem if budget is None else f"{Path(spec).stem} (think <= {budget})"
            results.append(evaluate_with(generate, problems, task=name, k=args.k, max_tokens=args.max_tokens,
                                         greedy=not args.no_greedy, seed=args.seed, thinking_budget=budget,
                                         **settings_for(spec, args, model_defaults)))
    print_table(results, f"eval of {source}", args.k)
    if len(budgets) > 1:
        print_budget_curve(results)
    if args.out:
        write_results(results, args.out)
        summary = Path(args.out).with_suffix(".summary.json")
        summary.write_text(json.dumps([r.summary() for r in results], indent=2) + "\n")
        print(f"wrote {args.out} and {summary}")
    return 0
