"""GSM8K-style word problems from a few templates, two or three arithmetic steps each.

    Mia buys 7 pencils at 3 dollars each and pays with a 50 dollar bill.
    How much change does she get, in dollars?
    7*3=21 dollars for the pencils
    50-21=29 dollars of change
    answer: 29

Slip: one step's result off by one; later steps use the wrong value.  Every template
depends on every step with a non-zero factor, so a slip always changes the answer.

Misconception: not defined (no single wrong rule fits all templates); asking for one
raises ValueError.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from .common import Problem, Slip, Solution, Task, nudge, slip_index

NAMES = [("Mia", "she"), ("Tom", "he"), ("Ava", "she"), ("Leo", "he"), ("Zoe", "she"), ("Sam", "he")]
ITEMS = ["pencil", "apple", "sticker", "marble", "card", "orange"]


@dataclass(frozen=True)
class Ref:
    """The result of an earlier step."""

    index: int


@dataclass(frozen=True)
class Step:
    left: int | Ref
    op: str  # + - * /
    right: int | Ref
    label: str  # what the result counts, e.g. "dollars of change"


@dataclass(frozen=True)
class WordProblem:
    template: str
    values: tuple[int, ...]  # the numbers that make the problem (its split identity)
    prompt: str
    steps: tuple[Step, ...]


def _change(rng: random.Random) -> WordProblem:
    (name, pronoun), item = rng.choice(NAMES), rng.choice(ITEMS)
    count, price = rng.randint(2, 9), rng.randint(2, 12)
    bill = next(b for b in (20, 50, 100, 200) if b > count * price)
    prompt = (f"{name} buys {count} {item}s at {price} dollars each and pays with a {bill} dollar bill. "
              f"How much change does {pronoun} get, in dollars?")
    steps = (Step(count, "*", price, f"dollars for the {item}s"), Step(bill, "-", Ref(0), "dollars of change"))
    return WordProblem("change", (count, price, bill), prompt, steps)


def _bags(rng: random.Random) -> WordProblem:
    (name, pronoun), item = rng.choice(NAMES), rng.choice(ITEMS)
    start, bags, per = rng.randint(2, 30), rng.randint(2, 9), rng.randint(2, 12)
    given = rng.randint(1, start + bags * per - 1)
    prompt = (f"{name} has {start} {item}s. {pronoun.capitalize()} buys {bags} bags with {per} {item}s in each bag, "
              f"then gives {given} {item}s to a friend. How many {item}s does {name} have now?")
    steps = (Step(bags, "*", per, f"{item}s in the bags"), Step(start, "+", Ref(0), f"{item}s in all"),
             Step(Ref(1), "-", given, f"{item}s left"))
    return WordProblem("bags", (start, bags, per, given), prompt, steps)


def _hours(count: int) -> str:
    return "1 hour" if count == 1 else f"{count} hours"


def _trip(rng: random.Random) -> WordProblem:
    vehicle = rng.choice(["train", "car", "bus", "boat"])
    speed1, speed2 = rng.randint(2, 12) * 5, rng.randint(2, 12) * 5
    hours1, hours2 = rng.randint(1, 6), rng.randint(1, 6)
    prompt = (f"A {vehicle} travels at {speed1} km per hour for {_hours(hours1)}, then at {speed2} km per hour "
              f"for {_hours(hours2)}. How many kilometers does it travel in total?")
    steps = (Step(speed1, "*", hours1, "km in the first part"), Step(speed2, "*", hours2, "km in the second part"),
             Step(Ref(0), "+", Ref(1), "km in total"))
    return WordProblem("trip", (speed1, hours1, speed2, hours2), prompt, steps)


def _boxes(rng: random.Random) -> WordProblem:
    name, _ = rng.choice(NAMES)
    boxes, per = rng.randint(2, 12), rng.randint(2, 12)
    bought = rng.randint(1, boxes)
    prompt = (f"A baker makes {boxes * per} cookies and packs them equally into {boxes} boxes. "
              f"{name} buys {bought} boxes. How many cookies does {name} buy?")
    steps = (Step(boxes * per, "/", boxes, "cookies in each box"), Step(Ref(0), "*", bought, "cookies bought"))
    return WordProblem("boxes", (boxes, per, bought), prompt, steps)


def _savings(rng: random.Random) -> WordProblem:
    name, _ = rng.choice(NAMES)
    weekly, weeks = rng.randint(2, 20), rng.randint(2, 10)
    spent = rng.randint(1, weekly * weeks - 1)
    thing = rng.choice(["book", "game", "kite", "ball"])
    prompt = (f"{name} saves {weekly} dollars every week for {weeks} weeks, then spends {spent} dollars on a {thing}. "
              f"How many dollars does {name} have left?")
    steps = (Step(weekly, "*", weeks, "dollars saved"), Step(Ref(0), "-", spent, "dollars left"))
    return WordProblem("savings", (weekly, weeks, spent), prompt, steps)


TEMPLATES: dict[str, Callable[[random.Random], WordProblem]] = {
    "change": _change, "bags": _bags, "trip": _trip, "boxes": _boxes, "savings": _savings,
}
OPS: dict[str, Callable[[int, int], int]] = {
    "+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y, "/": lambda x, y: x // y,
}


def make_word(rng: random.Random, *, templates: str = "all") -> Problem:
    """templates: "all" or a comma-separated subset of change,bags,trip,boxes,savings."""
    chosen = list(TEMPLATES) if templates == "all" else [t.strip() for t in templates.split(",")]
    unknown = [t for t in chosen if t not in TEMPLATES]
    if unknown or not chosen:
        raise ValueError(f"unknown word templates {unknown}; valid: {', '.join(TEMPLATES)}")
    problem = TEMPLATES[rng.choice(chosen)](rng)
    answer = solve_word(problem).boxed
    # Names and items do not make a new problem: split on the template and its numbers.
    return Problem(problem.prompt, answer, data=problem, key=f"{problem.template}:{problem.values}")


def solve_word(problem: WordProblem, slip: Slip | None = None, misconception: bool = False) -> Solution:
    if misconception:
        raise ValueError("word problems have no misconception rule")
    slipped = slip_index(slip, len(problem.steps)) if slip else -1
    results: list[int] = []
    lines = []
    for index, step in enumerate(problem.steps):
        left, right = (results[v.index] if isinstance(v, Ref) else v for v in (step.left, step.right))
        result = OPS[step.op](left, right)
        if index == slipped:
            result = nudge(result, slip.up, 0, 10**9)
        results.append(result)
        lines.append(f"{left}{step.op}{right}={result} {step.label}")
    return Solution(lines, str(results[-1]))


WORD = Task("word", make_word, solve_word, misconception=None)
