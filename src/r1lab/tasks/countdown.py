"""Countdown: combine the given numbers with + - * / to hit a target.

    Using the numbers 25, 5, 4, make 80. You may use + - * / and each number at most once.
    <think>
    25+5+4: 25+5=30, 30+4=34, no
    (25-5)*4: 25-5=20, 20*4=80, yes
    </think>
    The answer is \\boxed{(25-5)*4}.

The row's `answer` is the target ("80"); the trace boxes an expression.  The accuracy
reward checks the expression (r1lab.rewards.countdown), not the number: any expression
that uses each given number at most once and evaluates exactly to the target scores 1.

The teacher's trace is a short search: one to three failed attempts (random, fixed per
problem) before the expression that works, so longer reasoning finds more answers.
Intermediate results are kept positive integers, as in the game.

Slip: the teacher miscalculates the last step of a failing attempt (the one closest to
the target), believes it hits the target and boxes it.  The boxed expression is wrong.
Misconception: not defined; asking for one raises ValueError.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Union

from .common import Problem, Slip, Solution, Task

# An expression: a given number, or (op, left, right).
Expr = Union[int, tuple]
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


@dataclass(frozen=True)
class Countdown:
    numbers: tuple[int, ...]
    target: int
    solution: Expr


def _combine(rng: random.Random, numbers: list[int]) -> tuple[Expr, int]:
    """Play the game randomly: merge two numbers at a time until one is left."""
    pool: list[tuple[Expr, int]] = [(n, n) for n in numbers]
    while len(pool) > 1:
        (left, x), (right, y) = pool.pop(rng.randrange(len(pool))), pool.pop(rng.randrange(len(pool)))
        if x < y:
            (left, x), (right, y) = (right, y), (left, x)
        ops = ["+", "*"] + (["-"] if x > y else []) + (["/"] if y > 1 and x % y == 0 else [])
        op = rng.choice(ops)
        value = {"+": x + y, "-": x - y, "*": x * y, "/": x // max(y, 1)}[op]
        pool.append(((op, left, right), value))
    return pool[0]


def show(expr: Expr) -> str:
    """Expression text that reads in the order the trace computes it.

    A compound right operand is always bracketed ("18-7+(20-18)", not the equal
    "18-7+20-18"), so reading left to right follows the evaluation steps."""
    if isinstance(expr, int):
        return str(expr)
    op, left, right = expr
    left_text, right_text = show(left), show(right)
    if isinstance(left, tuple) and PRECEDENCE[left[0]] < PRECEDENCE[op]:
        left_text = f"({left_text})"
    if isinstance(right, tuple):
        right_text = f"({right_text})"
    return f"{left_text}{op}{right_text}"


def _steps(expr: Expr, last_result: int | None = None) -> tuple[list[str], int]:
    """Evaluation lines in order ("25-5=20"); last_result overrides the final step's value (a slip)."""
    if isinstance(expr, int):
        return [], expr
    op, left, right = expr
    left_steps, x = _steps(left)
    right_steps, y = _steps(right)
    value = {"+": x + y, "-": x - y, "*": x * y, "/": x // y}[op]
    if last_result is not None:
        value = last_result
    return left_steps + right_steps + [f"{x}{op}{y}={value}"], value


def make_countdown(rng: random.Random, *, numbers: int = 3, max_number: int = 25, max_target: int = 100) -> Problem:
    if not 2 <= numbers <= 6 or max_number < 2 or max_target < 2:
        raise ValueError("need 2 <= numbers <= 6, max_number >= 2, max_target >= 2")
    for _ in range(10_000):
        given = [rng.randint(1, max_number) for _ in range(numbers)]
        solution, target = _combine(rng, given)
        if 1 <= target <= max_target and target not in given:
            break
    else:
        raise ValueError(f"could not draw a reachable target with numbers={numbers}, max_number={max_number}")
    prompt = (f"Using the numbers {', '.join(map(str, given))}, make {target}. "
              f"You may use + - * / and each number at most once.")
    data = Countdown(tuple(given), target, solution)
    return Problem(prompt, str(target), data=data, key=f"{sorted(given)}->{target}",
                   columns={"numbers": given, "target": target})


def _failures(problem: Countdown, rng: random.Random, count: int) -> list[tuple[Expr, int]]:
    seen, found = set(), []
    for _ in range(200):
        expr, value = _combine(rng, list(problem.numbers))
        if value != problem.target and show(expr) not in seen:
            seen.add(show(expr))
            found.append((expr, value))
            if len(found) == count:
                break
    return found


def solve_countdown(problem: Countdown, slip: Slip | None = None, misconception: bool = False) -> Solution:
    if misconception:
        raise ValueError("countdown has no misconception rule")
    # The search is random but fixed per problem, so the same problem always gets the same trace.
    rng = random.Random(f"countdown:{problem.numbers}:{problem.target}")
    failures = _failures(problem, rng, rng.randint(1, 3))
    lines = []
    for expr, _ in failures:
        steps, _ = _steps(expr)
        lines.append(f"{show(expr)}: {', '.join(steps)}, no")
    answer = problem.solution
    if slip:
        near = _failures(problem, rng, 30) or failures
        if near:
            answer, _ = min(near, key=lambda found: abs(found[1] - problem.target))
        steps, _ = _steps(answer, last_result=problem.target)
    else:
        steps, _ = _steps(answer)
    lines.append(f"{show(answer)}: {', '.join(steps)}, yes")
    return Solution(lines, show(answer))


COUNTDOWN = Task("countdown", make_countdown, solve_countdown, misconception=None)
