"""`r1lab chat CKPT`: chat with a checkpoint in the terminal, in-process (no server).

The thinking streams dimmed, the answer plain. Reads stdin line by line, so it also works piped:

    printf 'What is 12 + 34?\\n/temperature 0\\nAnd 5 + 6?\\n' | r1lab chat runs/speedrun/final

Commands: /reset (new conversation), /temperature X, /max-tokens N, /exit.

Tools: `--tools FILE.py` offers the file's public functions to the model (their JSON schemas from the type
hints and docstrings, as transformers builds them). A call the model makes is run, shown dimmed with its
result, and the result goes back to the model, which goes on until it answers in text (at most
MAX_TOOL_ROUNDS calls a turn). `--tool-choice required` makes the first reply of each turn a call
(constrained decoding; `--thinking-budget` closes the thinking first).
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import sys
import time
from pathlib import Path

from rich.console import Console

from ..engine.precision import add_dtype_argument
from ..tokenizer import thinking_prefilled
from .reasoning import ReasoningSplitter

HELP = "commands: /reset  /temperature X  /max-tokens N  /exit"
MAX_TOOL_ROUNDS = 8


def add_chat_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint folder")
    p.add_argument("--temperature", type=float, default=0.6, help="0 = greedy (default 0.6, as DeepSeek-R1 suggests)")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-tokens", type=int, default=512, help="tokens per answer, thinking included")
    p.add_argument("--seed", type=int, default=None, help="fix the sampling seed (each turn uses seed + turn)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--tools", default=None, metavar="FILE.py",
                   help="offer the public functions of this Python file to the model as tools, and run its calls")
    p.add_argument("--tool-choice", choices=["auto", "required"], default="auto",
                   help="required: the first reply of each turn must call a tool (constrained decoding)")
    p.add_argument("--thinking-budget", type=int, default=None, help="close the thinking after this many tokens")
    add_dtype_argument(p)


def load_tools(path: str | Path) -> dict:
    """The public functions defined in a Python file, by name (their schemas: `tool_schemas`)."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"r1lab_tools_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"--tools {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tools = {name: fn for name, fn in vars(module).items()
             if inspect.isfunction(fn) and not name.startswith("_") and fn.__module__ == module.__name__}
    if not tools:
        raise ValueError(f"--tools {path}: no public functions in the file")
    return tools


def tool_schemas(tools: dict) -> list[dict]:
    from transformers.utils import get_json_schema

    return [get_json_schema(fn) for fn in tools.values()]


def run_tool(tools: dict, name: str, arguments: str) -> str:
    """A call's result as text (JSON for anything but a string); an exception is the result too, as text."""
    try:
        result = tools[name](**json.loads(arguments))
    except Exception as e:  # noqa: BLE001 - the model sees what went wrong, as an agent framework shows it
        return f"error: {type(e).__name__}: {e}"
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)


def run_chat(args) -> int:
    from ..engine import Engine
    from ..engine.precision import load_for_serving

    args.loaded_tools = load_tools(args.tools) if args.tools else {}  # a bad file fails before the model loads
    model, tokenizer = load_for_serving(args.checkpoint, args.dtype)
    engine = Engine(model, tokenizer, max_running=1)
    engine.start()  # decode on the engine's thread; this one prints, and stays free to catch Ctrl-C
    try:
        return chat_loop(engine, tokenizer, args, sys.stdin, Console(highlight=False, soft_wrap=True))
    finally:
        engine.stop()


def chat_loop(engine, tokenizer, args, lines, console: Console) -> int:
    """The read-reply loop over `lines` (stdin or any iterable of lines); returns the exit status."""
    interactive = sys.stdin.isatty() and lines is sys.stdin
    temperature, max_tokens = args.temperature, args.max_tokens
    history: list[dict] = [{"role": "system", "content": args.system}] if args.system else []
    turn = 0
    if interactive:
        console.print(f"[dim]{HELP}[/dim]")
    while True:
        if interactive:
            console.print("[bold]you>[/bold] ", end="")
        line = lines.readline()
        if not line:  # end of input
            return 0
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, value = text.partition(" ")
            if command in ("/exit", "/quit"):
                return 0
            if command == "/reset":
                history = history[:1] if args.system else []
                console.print("[dim](new conversation)[/dim]")
            elif command in ("/temperature", "/max-tokens"):
                try:
                    number = float(value) if command == "/temperature" else int(value)
                    if number < 0 or (command == "/max-tokens" and number < 1):
                        raise ValueError
                except ValueError:
                    wanted = "number >= 0" if command == "/temperature" else "whole number >= 1"
                    console.print(f"[red]{command} needs a {wanted}[/red]")
                    continue
                if command == "/temperature":
                    temperature = number
                else:
                    max_tokens = number
                console.print(f"[dim]({command[1:]} = {number})[/dim]")
            else:
                console.print(f"[dim]{HELP}[/dim]")
            continue
        if not interactive:
            console.print(f"> {text}", markup=False)  # piped input is not echoed by a terminal
        history.append({"role": "user", "content": text})
        seed = None if args.seed is None else args.seed + turn
        tools = getattr(args, "loaded_tools", None)
        if tools is None:
            tools = args.loaded_tools = load_tools(args.tools) if getattr(args, "tools", None) else {}
        for round_ in range(MAX_TOOL_ROUNDS + 1):
            forced = bool(tools) and round_ == 0 and getattr(args, "tool_choice", "auto") == "required"
            answer, calls, reasoning = reply(engine, tokenizer, history, temperature, args.top_p, max_tokens, seed, console,
                                             tools if round_ < MAX_TOOL_ROUNDS else {}, forced,
                                             getattr(args, "thinking_budget", None))
            if not calls:
                history.append({"role": "assistant", "content": answer})  # the answer only: thinking is not fed back
                break
            # a tool sub-turn keeps its thinking (the template decides: DeepSeek's rule)
            history.append({"role": "assistant", "content": answer, "reasoning_content": reasoning or None,
                            "tool_calls": [c.openai() for c in calls]})
            for c in calls:
                result = run_tool(tools, c.name, c.arguments)
                console.print(f"[dim]→ {c.name}({c.arguments}) = {result}[/dim]", markup=True, highlight=False)
                history.append({"role": "tool", "tool_call_id": c.id, "content": result})
        turn += 1


def reply(engine, tokenizer, history, temperature, top_p, max_tokens, seed, console: Console, tools: dict | None = None,
          forced: bool = False, thinking_budget: int | None = None) -> tuple[str, list, str]:
    """Stream one assistant turn to the console; returns its answer (without the thinking), the tool calls it
    made (with `tools`; `forced`: it must make one) and its thinking."""
    from ..engine import SamplingParams
    from .tools import parse_calls, tool_format

    schemas = tool_schemas(tools) if tools else None
    prompt = tokenizer.apply_chat_template(history, add_generation_prompt=True, tools=schemas)
    room = engine.max_model_len - len(prompt)
    if room < 1:
        console.print("[red]the conversation no longer fits the context: /reset to start again[/red]")
        return "", [], ""
    params = SamplingParams(max_tokens=min(max_tokens, room), temperature=temperature, top_p=top_p, seed=seed,
                            constraint=_constraint(engine, tokenizer, schemas if forced else None, thinking_budget))
    splitter, started, answering = ReasoningSplitter(thinking_prefilled(tokenizer)), time.perf_counter(), False
    handle = engine.submit(prompt, params)
    finish = None
    try:
        for ev in handle.events():
            delta = splitter.feed(ev.text)
            if ev.finish_reason is not None:
                delta.reasoning += splitter.finish().reasoning
                finish = ev.finish_reason
            if delta.reasoning:
                console.print(delta.reasoning, style="dim", end="", markup=False)
            if delta.content:
                if not answering:
                    answering = True
                    console.print(f"\n[dim]— thought for {time.perf_counter() - started:.1f} s —[/dim]")
                console.print(delta.content, end="", markup=False)
    except KeyboardInterrupt:
        handle.cancel()
        finish = "interrupted"
    console.print()
    if finish == "length":
        console.print("[dim](stopped at the max-tokens limit)[/dim]")
    elif finish == "interrupted":
        console.print("[dim](interrupted)[/dim]")
    if not tools or finish == "interrupted":
        return splitter.content, [], splitter.reasoning
    content, calls = parse_calls(tool_format(tokenizer), splitter.content, set(tools))
    return content or "", calls, splitter.reasoning


def _constraint(engine, tokenizer, forced_tools: list[dict] | None, budget: int | None):
    """A forced call (after the thinking), or a thinking budget alone, or None."""
    from ..rollout import budget_constraint
    from ..tokenizer import Tokenizer
    from .tools import call_grammar, tool_format

    if not forced_tools:
        return budget_constraint(engine, tokenizer, budget) if budget is not None else None
    from ..engine.constraint import Grammars

    grammars = Grammars(tokenizer, engine.model.config.vocab_size)
    grammar = grammars.compile(call_grammar(tool_format(tokenizer), forced_tools, True, grammars,
                                            isinstance(tokenizer, Tokenizer)))
    prefilled = thinking_prefilled(tokenizer)
    return grammars.constraint(grammar, thinking=prefilled, think_id=None, end_think_id=tokenizer.end_think_token_id,
                               budget=budget)
