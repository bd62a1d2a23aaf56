"""Does the aha model compare, or does it say "wait" whatever its first answer was? (issue 19)

Its own first answers are almost never right, so its held-out responses cannot show what it does after a right
one. This feeds the first line instead, on the aha evaluation's held-out problems: "So a + b = G." with G the
right sum, or G the sum with one teacher's slip (one column off by one), then "Check:", and samples the rest
(k per problem, temperature 1). It counts, for each kind of G, the share of responses that say "wait" after
the check, that say "It matches.", and that box the right sum.

    python scripts/aha_probe.py runs/aha-s0/aha-zero/final --seed 0 [--n 100 --k 4]
"""
from __future__ import annotations

import argparse
import json
import random

from r1lab.engine import Engine, SamplingParams
from r1lab.eval.evaluate import load_problems
from r1lab.model import load
from r1lab.rewards import get
from r1lab.tasks.arithmetic import solve_addition
from r1lab.tasks.common import CHECK_MARKER, WAIT, Slip
from r1lab.tokenizer import END_THINK


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--seed", type=int, default=0, help="the run's seed (held-out problems: seed + 5, as the speedrun)")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=200)
    args = p.parse_args()
    model, tokenizer = load(args.checkpoint)
    engine = Engine(model, tokenizer)
    problems = load_problems("addition", args.n, seed=args.seed + 5, digits=4)
    rng = random.Random(f"probe:{args.seed}")
    accuracy = get("accuracy")
    result = {}
    for kind in ("right", "wrong"):
        prompts, answers, firsts = [], [], []
        for problem in problems:
            a, b = (int(x) for x in problem["prompt"][len("What is "):-1].split(" + "))
            first = str(a + b) if kind == "right" else solve_addition((a, b), slip=Slip(rng.random(), rng.random() < 0.5)).boxed
            head = tokenizer.apply_chat_template([{"role": "user", "content": problem["prompt"]}],
                                                 add_generation_prompt=True, tokenize=False)
            forced = f"So {a} + {b} = {first}.\n{CHECK_MARKER}\n"
            for j in range(args.k):
                prompts.append(head + forced)
                answers.append(problem["answer"])
                firsts.append(forced)
        params = [SamplingParams(max_tokens=args.max_tokens, temperature=1.0, seed=10_000 * (kind == "wrong") + i)
                  for i in range(len(prompts))]
        outs = engine.generate(prompts, params)
        texts = ["<think>\n" + f + o.text for f, o in zip(firsts, outs)]
        checks = [t.split(END_THINK)[0].split(CHECK_MARKER, 1)[1] for t in texts]
        right = accuracy(texts, answer=answers)
        result[kind] = {"samples": len(texts), "wait": sum(WAIT in c for c in checks) / len(texts),
                        "it_matches": sum("It matches" in c for c in checks) / len(texts),
                        "box_right": sum(right) / len(texts), "example": texts[0]}
    print(json.dumps({"checkpoint": args.checkpoint, **result}, indent=1))


if __name__ == "__main__":
    main()
