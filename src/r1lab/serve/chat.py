"""`r1lab chat CKPT`: chat with a checkpoint in the terminal, in-process (no server).

The thinking streams dimmed, the answer plain. Reads stdin line by line, so it also works piped:

    printf 'What is 12 + 34?\\n/temperature 0\\nAnd 5 + 6?\\n' | r1lab chat runs/speedrun/final

Commands: /reset (new conversation), /temperature X, /max-tokens N, /exit.
"""
from __future__ import annotations

import argparse
import sys
import time

from rich.console import Console

from ..engine.precision import add_dtype_argument
from ..tokenizer import thinking_prefilled
from .reasoning import ReasoningSplitter

HELP = "commands: /reset  /temperature X  /max-tokens N  /exit"


def add_chat_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint folder")
    p.add_argument("--temperature", type=float, default=0.6, help="0 = greedy (default 0.6, as DeepSeek-R1 suggests)")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-tokens", type=int, default=512, help="tokens per answer, thinking included")
    p.add_argument("--seed", type=int, default=None, help="fix the sampling seed (each turn uses seed + turn)")
    p.add_argument("--system", default=None, help="system prompt")
    add_dtype_argument(p)


def run_chat(args) -> int:
    from ..engine import Engine
    from ..engine.precision import load_for_serving

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
        answer = reply(engine, tokenizer, history, temperature, args.top_p, max_tokens, seed, console)
        history.append({"role": "assistant", "content": answer})  # the answer only: thinking is not fed back
        turn += 1


def reply(engine, tokenizer, history, temperature, top_p, max_tokens, seed, console: Console) -> str:
    """Stream one assistant turn to the console; returns its answer (without the thinking)."""
    from ..engine import SamplingParams

    prompt = tokenizer.apply_chat_template(history, add_generation_prompt=True)
    room = engine.max_model_len - len(prompt)
    if room < 1:
        console.print("[red]the conversation no longer fits the context: /reset to start again[/red]")
        return ""
    params = SamplingParams(max_tokens=min(max_tokens, room), temperature=temperature, top_p=top_p, seed=seed)
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
    return splitter.content
