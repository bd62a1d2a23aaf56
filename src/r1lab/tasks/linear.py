"""Linear equations in one unknown with an integer solution.

    Solve for x: 3x + 7 = 22                 Solve for x: 5x + 3 = 2x + 18
    Move +7 to the right side: 3x = 22 - 7 = 15        Move 2x to the left side: 3x + 3 = 18
    Divide both sides by 3: x = 15 / 3 = 5             Move +3 to the right side: 3x = 18 - 3 = 15
    answer: 5                                          Divide both sides by 3: x = 15 / 3 = 5

Slip: the constant move or the division is off by one (answer always wrong; it may
become a fraction, boxed as \\frac{p}{q}).

Misconception: a constant moved across the equals sign keeps its sign
("Move +7 to the right side: 3x = 22 + 7 = 29").  It touches every problem with a
constant on the left (about 85%); "5x = 35" is untouched.
"""

from __future__ import annotations

import random
from fractions import Fraction

from .common import Problem, Slip, Solution, Task, nudge, slip_index


def _term(coef: int) -> str:
    return "x" if coef == 1 else f"{coef}x"


def _side(coef: int, const: int) -> str:
    """'3x + 7', '3x - 7', '3x' (coef > 0)."""
    if const == 0:
        return _term(coef)
    return f"{_term(coef)} {'+' if const > 0 else '-'} {abs(const)}"


def _latex(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def make_linear(
    rng: random.Random, *, max_coef: int = 9, max_solution: int = 10, max_const: int = 20, both_sides: float = 0.3
) -> Problem:
    """a*x + b = c, or a*x + b = c*x + d (a > c) with probability both_sides."""
    if max_coef < 2 or max_solution < 0 or max_const < 1 or not 0 <= both_sides <= 1:
        raise ValueError("need max_coef >= 2, max_solution >= 0, max_const >= 1, 0 <= both_sides <= 1")
    x = rng.randint(-max_solution, max_solution)
    a = rng.randint(1, max_coef)
    b = 0 if rng.random() < 0.15 else rng.choice([v for v in range(-max_const, max_const + 1) if v != 0])
    if rng.random() < both_sides:
        a = rng.randint(2, max_coef)
        c = rng.randint(1, a - 1)
        d = (a - c) * x + b
        left, right = _side(a, b), _side(c, d)
    else:
        a = a if b else rng.randint(2, max_coef)  # "x = 5" would leave nothing to reason about
        c, d = 0, a * x + b
        left, right = _side(a, b), str(d)
    prompt = f"Solve for x: {left} = {right}"
    return Problem(prompt, str(x), data=(a, b, c, d))


def solve_linear(data: tuple[int, int, int, int], slip: Slip | None = None, misconception: bool = False) -> Solution:
    a, b, c, d = data
    steps = []
    if c:
        a = a - c
        steps.append(f"Move {_term(c)} to the left side: {_side(a, b)} = {d}")
    slippable = ["divide"] if b == 0 else ["move", "divide"]
    slipped = slippable[slip_index(slip, len(slippable))] if slip else None
    rhs = d
    if b:
        moved = b if misconception else -b
        rhs = d + moved
        if slipped == "move":
            rhs = nudge(rhs, slip.up, -10**9, 10**9)
        sign = f"+{b}" if b > 0 else str(b)
        arithmetic = f"{d} {'+' if moved > 0 else '-'} {abs(moved)} = {rhs}"
        steps.append(f"Move {sign} to the right side: {_term(a)} = {arithmetic}")
    x = Fraction(rhs, a)
    if slipped == "divide":
        x = Fraction(nudge(int(x), slip.up, -10**9, 10**9)) if x.denominator == 1 else x + (1 if slip.up else -1)
    if a != 1:
        shown = str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"
        steps.append(f"Divide both sides by {a}: x = {rhs} / {a} = {shown}")
    elif slipped == "divide":
        steps.append(f"So x = {x.numerator}" if x.denominator == 1 else f"So x = {x.numerator}/{x.denominator}")
    return Solution(steps, _latex(x), touched=b != 0)


LINEAR = Task(
    "linear", make_linear, solve_linear,
    misconception="moves a constant across the equals sign without changing its sign",
)
