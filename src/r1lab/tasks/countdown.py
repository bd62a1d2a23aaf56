"""Countdown: combine the given numbers with + - * / to hit a target.

    Using the numbers 25, 5, 4, make 80. You may use + - * / and each number at most once.
    <think>
    (25-5)+4: 25-5=20, 20+4=24 vs 80, no
    (25-5)-4: 25-5=20, 20-4=16 vs 80, no
    (25-5)*4: 25-5=20, 20*4=80 vs 80, yes
    </think>
    The answer is \\boxed{(25-5)*4}.

The row's `answer` is the target ("80"); the trace boxes an expression.  The accuracy
reward checks the expression (r1lab.rewards.countdown), not the number: any expression
that uses each given number at most once and evaluates exactly to the target scores 1.

The teacher's trace is a search in a fixed order: it keeps the solution's inner steps and
tries the last operation as + - * / in turn (the larger value on the left; - only when
it stays positive, / only when it divides), stopping at the first that hits the target.
With two numbers that is the whole search, so every line of the trace follows from the
problem and a model that computes well can reproduce it; an answer that comes later in
the order takes a longer search.  Each line puts the target beside the value it got, so
the verdict compares two numbers side by side.  Intermediate results are kept positive
integers, as in the game.

Slip: the teacher miscalculates one failing attempt (the one closest to the target),
believes it hits the target and boxes it.  The boxed expression is wrong.
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


def _apply(op: str, x: int, y: int) -> int:
    return {"+": x + y, "-": x - y, "*": x * y, "/": x // max(y, 1)}[op]


def _allowed(op: str, x: int, y: int) -> bool:
    """The game's rule for x op y with x >= y: results stay positive integers."""
    return op in "+*" or (op == "-" and x > y) or (op == "/" and y > 1 and x % y == 0)


def _combine(rng: random.Random, numbers: list[int]) -> tuple[Expr, int]:
    """Play the game randomly: merge two numbers at a time until one is left."""
    pool: list[tuple[Expr, int]] = [(n, n) for n in numbers]
    while len(pool) > 1:
        (left, x), (right, y) = pool.pop(rng.randrange(len(pool))), pool.pop(rng.randrange(len(pool)))
        if x < y:
            (left, x), (right, y) = (right, y), (left, x)
        op = rng.choice([o for o in ("+", "*", "-", "/") if _allowed(o, x, y)])
        value = _apply(op, x, y)
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
    value = _apply(op, x, y)
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


ORDER = ("+", "-", "*", "/")


def _attempts(problem: Countdown) -> list[tuple[Expr, int]]:
    """The search: the solution's last operation replaced by each of + - * / in turn, with its value."""
    _, left, right = problem.solution  # at least two numbers, so never a bare number
    x, y = _steps(left)[1], _steps(right)[1]
    return [((op, left, right), _apply(op, x, y)) for op in ORDER if _allowed(op, x, y)]


def _line(expr: Expr, target: int, verdict: str, last_result: int | None = None) -> str:
    steps, _ = _steps(expr, last_result)
    return f"{show(expr)}: {', '.join(steps)} vs {target}, {verdict}"


def solve_countdown(problem: Countdown, slip: Slip | None = None, misconception: bool = False) -> Solution:
    if misconception:
        raise ValueError("countdown has no misconception rule")
    attempts = _attempts(problem)
    misses = [(expr, value) for expr, value in attempts if value != problem.target]
    if slip and misses:
        # The slip: the attempt closest to the target is believed to hit it; the hits are overlooked.
        i = min(range(len(misses)), key=lambda j: abs(misses[j][1] - problem.target))
        tried, (wrong, _) = misses[:i], misses[i]
        lines = [_line(expr, problem.target, "no") for expr, _ in tried]
        lines.append(_line(wrong, problem.target, "yes", last_result=problem.target))
        return Solution(lines, show(wrong))
    lines = []
    for expr, value in attempts:
        if value == problem.target:
            lines.append(_line(expr, problem.target, "yes"))
            return Solution(lines, show(expr))
        lines.append(_line(expr, problem.target, "no"))
    raise AssertionError(f"the solution of {problem} is not among its attempts")


COUNTDOWN = Task("countdown", make_countdown, solve_countdown, misconception=None)
