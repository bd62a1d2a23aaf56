"""`r1lab generate CKPT "PROMPT"`: one completion from a checkpoint, streamed to stdout as it comes."""
from __future__ import annotations

import argparse
import sys

from ..model.families import generation_defaults
from ..tokenizer import response_prefix_of
from .engine import Engine
from .precision import add_dtype_argument, load_for_serving
from .sampling import SamplingParams
from .speculative import add_speculative_arguments, drafter_from_args


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint folder (ours or a transformers DeepseekV3 one)")
    parser.add_argument("prompt", help="prompt text (raw, unless --chat)")
    parser.add_argument("--chat", action="store_true",
                        help="wrap the prompt as a user message in the chat template (the answer starts inside <think>)")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=None,
                        help="0 = greedy (default: the checkpoint's generation_config.json for open models, else 0.6 "
                             "as DeepSeek-R1 advises)")
    parser.add_argument("--top-p", type=float, default=None, help="default: as --temperature, else 0.95")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true")
    parser.add_argument("--device", default=None, help="cpu, cuda, … (default: where the model loads)")
    add_dtype_argument(parser)
    add_speculative_arguments(parser)


def run_generate(args: argparse.Namespace) -> int:
    model, tokenizer = load_for_serving(args.checkpoint, args.dtype, args.device)
    if tokenizer is None:
        raise ValueError(f"{args.checkpoint} has no tokenizer.json; generate needs one")
    model.eval()
    engine = Engine(model, tokenizer, max_running=1, device=args.device,
                    drafter=drafter_from_args(args, next(model.parameters()).device))
    if args.chat:
        prompt_ids = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True)
    else:
        prompt_ids = tokenizer.encode(args.prompt)
    defaults = {"temperature": 0.6, "top_p": 0.95, **generation_defaults(model)}
    temperature = defaults["temperature"] if args.temperature is None else args.temperature
    top_p = defaults["top_p"] if args.top_p is None else args.top_p
    params = SamplingParams(max_tokens=args.max_tokens, temperature=temperature, top_p=top_p,
                            top_k=args.top_k, seed=args.seed, stop=args.stop, ignore_eos=args.ignore_eos)
    if args.chat:  # the template pre-fills the opening of the thinking; show it
        sys.stdout.write(response_prefix_of(tokenizer))
    finish = None
    for event in engine.submit(prompt_ids, params).events():
        sys.stdout.write(event.text)
        sys.stdout.flush()
        finish = event.finish_reason or finish
    sys.stdout.write("\n")
    if finish == "length":
        print(f"[stopped at --max-tokens {args.max_tokens}]", file=sys.stderr)
    return 0
