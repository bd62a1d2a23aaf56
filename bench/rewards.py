"""Reward throughput: r1lab's accuracy reward against plain math-verify, measured in the same run.

    python bench/rewards.py [--n 1000]

The batch mixes every task's teacher traces (30% with a slip, so wrong) with LaTeX
answers (fractions, roots, intervals).  The peer is what Open-R1's accuracy reward does:
math-verify parse of the whole completion, then verify against the parsed gold, for every
row (countdown rows left out: math-verify cannot judge an expression against a target).
Prints a table, then one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time

from r1lab import rewards, tasks
from r1lab.rewards.accuracy import _parse_gold as parsed_gold_cache

LATEX = [  # (gold, boxed prediction)
    ("\\frac{1}{2}", "0.5"), ("\\frac{1}{2}", "\\dfrac{2}{4}"), ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"), ("(1,2]", "(1, 2]"), ("3\\pi", "\\pi"), ("x^2+1", "1+x^{2}"),
    ("\\{1,2\\}", "\\{2, 1\\}"), ("12", "\\frac{24}{2}"), ("7", "8"),
]


def build(n: int, seed: int = 0) -> list[dict]:
    """n rows: {completion, answer, task, numbers}, ~90% task traces and ~10% LaTeX answers."""
    rng = random.Random(seed)
    per_task = (n - n // 10) // len(tasks.names())
    rows = []
    for name in tasks.names():
        for row in tasks.sample(name, per_task, seed=seed, noise=0.3):
            rows.append({"completion": row["reference_trace"], "answer": row["answer"], "task": name,
                         "numbers": row.get("numbers")})
    while len(rows) < n:
        gold, predicted = rng.choice(LATEX)
        completion = f"<think>\nworking it out\n</think>\nThe answer is $\\boxed{{{predicted}}}$."
        rows.append({"completion": completion, "answer": gold, "task": "math", "numbers": None})
    rng.shuffle(rows)
    return rows


def cold() -> None:
    """Empty the parse caches (ours and math-verify's) so every measurement starts cold."""
    from math_verify import parser

    parsed_gold_cache.cache_clear()
    parser.parse_latex_cached.cache_clear()
    parser.parse_expr_cached.cache_clear()


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    from math_verify import parse, verify

    rows = build(args.n)
    accuracy, format_reward = rewards.get("accuracy"), rewards.get("format")
    columns = {key: [row[key] for row in rows] for key in ("answer", "task", "numbers")}
    completions = [row["completion"] for row in rows]
    accuracy(completions, **columns)  # warm up: imports and lazy set-up inside math-verify
    cold()

    ours_s, scores = timed(lambda: accuracy(completions, **columns))
    math_rows = [row for row in rows if row["task"] != "countdown"]
    math_columns = {key: [row[key] for row in math_rows] for key in ("answer", "task", "numbers")}
    cold()
    ours_math_s, math_scores = timed(lambda: accuracy([row["completion"] for row in math_rows], **math_columns))

    def peer() -> list[float]:
        out = []
        for row in math_rows:
            gold = parse("$" + row["answer"] + "$")
            out.append(float(verify(gold, parse(row["completion"]))))
        return out

    cold()
    peer_s, peer_scores = timed(peer)
    format_s, _ = timed(lambda: format_reward(completions))

    ours_rate, ours_math_rate, peer_rate = len(rows) / ours_s, len(math_rows) / ours_math_s, len(math_rows) / peer_s
    correct = sum(scores) / len(scores)
    print(f"{'reward':<40}{'rows':>6}{'seconds':>10}{'rows/s':>12}")
    print(f"{'r1lab accuracy (all rows)':<40}{len(rows):>6}{ours_s:>10.3f}{ours_rate:>12.0f}")
    print(f"{'r1lab accuracy (non-countdown rows)':<40}{len(math_rows):>6}{ours_math_s:>10.3f}{ours_math_rate:>12.0f}")
    print(f"{'math-verify parse+verify (same rows)':<40}{len(math_rows):>6}{peer_s:>10.3f}{peer_rate:>12.0f}")
    print(f"{'r1lab format':<40}{len(rows):>6}{format_s:>10.3f}{len(rows) / format_s:>12.0f}")
    agree = sum(a == b for a, b in zip(math_scores, peer_scores)) / len(math_rows)
    print(f"speed-up over math-verify: {ours_math_rate / peer_rate:.1f}x; verdicts agree on {agree:.1%} of "
          f"non-countdown rows; share judged correct overall: {correct:.3f}")
    print(json.dumps({
        "bench": "rewards", "accuracy_per_s": round(ours_rate, 1), "math_verify_per_s": round(peer_rate, 1),
        "speedup_vs_math_verify": round(ours_math_rate / peer_rate, 2), "format_per_s": round(len(rows) / format_s, 1),
        "rows": len(rows), "share_correct": round(correct, 3), "agreement_with_math_verify": round(agree, 4),
    }))


if __name__ == "__main__":
    main()
