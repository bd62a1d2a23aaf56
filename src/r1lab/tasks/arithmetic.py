"""Column addition and subtraction, worked right to left one column per line.

    What is 4821 + 1379?          What is 5302 - 1879?
    1+9=10, write 0 carry 1       12-9=3, borrow 1
    2+7+1=10, write 0 carry 1     10-7-1=2, borrow 1
    8+3+1=12, write 2 carry 1     13-8-1=4, borrow 1
    4+1+1=6, write 6 carry 0      5-1-1=3, borrow 0
    So 4821 + 1379 = 6200.        So 5302 - 1879 = 3423.

Slip: one column's result is off by one; carries/borrows follow the wrong value,
so the answer is off by exactly one unit in that column (always wrong).

Misconceptions (the answer is wrong exactly when the rule touches the problem):
- addition: the carry into a column whose digits sum to 9 is forgotten
  ("4+5=9, write 9 carry 0" where 4+5+1=10 was due).
- subtraction: "smaller from larger": a column whose top digit is smaller
  subtracts top from bottom instead of borrowing ("3-8" becomes "8-3=5, borrow 0").
  That result is always larger than the truth, so touched means wrong.

Check (addition, `check` > 0 in the stream): after the first pass, which keeps its slip if it made one,
the trace works the columns again, carefully (no slip), and compares:

    So 4821 + 1379 = 6210.
    Check:
    1+9=10, write 0 carry 1
    ...
    4+1+1=6, write 6 carry 0
    6200 is not 6210, wait. 2+7+1=10, not 11, so 4821 + 1379 = 6200.

(or "It matches." when the two agree); the boxed answer is the checked one. The check has no closing
"So 4821 + 1379 = 6200." line: it ends with its last column, so the only whole answer before "It matches."
is the first pass's, which the box then copies, and a wrong first answer is fixed only through "wait",
whose line assembles the sum from the checked columns. (With that closing line the model learned to
write "It matches." after every check and box the re-derived sum, right either way, so the reward could
not tell the comparison from its absence, and "wait" never paid; issue 19.) With `quick` the first pass
is its last line alone (the answer stated without the working) and the fix names no step. The check
repeats the first pass's procedure, reading the digits from the question: a second way (the operands
swapped) asked the 1.5M-parameter model for new attention patterns it did not learn in 100 steps, and a
header repeating the operands ("Check: 4821 + 1379 again.") was copied wrong and then added.
"""

from __future__ import annotations

import random

from .common import CHECK_MARKER, WAIT, Problem, Slip, Solution, Task, digit_range, nudge, random_number, slip_index


def _digits(n: int, width: int) -> list[int]:
    """Digits of n, least significant first, zero-padded to width."""
    return [int(c) for c in reversed(str(n).zfill(width))]


def _from_digits(written: list[int]) -> int:
    return int("".join(str(d) for d in reversed(written)))


def make_addition(rng: random.Random, *, digits: int = 4, min_digits: int | None = None) -> Problem:
    """Two operands, each with between min_digits (default: digits) and digits digits."""
    low, high = digit_range(digits, min_digits)
    a = random_number(rng, rng.randint(low, high))
    b = random_number(rng, rng.randint(low, high))
    return Problem(f"What is {a} + {b}?", str(a + b), data=(a, b))


def solve_addition(data: tuple[int, int], slip: Slip | None = None, misconception: bool = False) -> Solution:
    a, b = data
    width = max(len(str(a)), len(str(b)))
    slipped = slip_index(slip, width) if slip else -1
    steps, written, carry, touched = [], [], 0, False
    for column, (x, y) in enumerate(zip(_digits(a, width), _digits(b, width))):
        if x + y == 9 and carry:
            touched = True
            if misconception:
                steps.append(f"{x}+{y}=9, write 9 carry 0")
                written.append(9)
                carry = 0
                continue
        total = x + y + carry
        if column == slipped:
            total = nudge(total, slip.up, 0, 19)
        plus_carry = "+1" if carry else ""
        carry = total // 10
        steps.append(f"{x}+{y}{plus_carry}={total}, write {total % 10} carry {carry}")
        written.append(total % 10)
    if carry:
        steps.append("write the final carry 1")
        written.append(1)
    result = _from_digits(written)
    steps.append(f"So {a} + {b} = {result}.")
    return Solution(steps, str(result), touched)


def check_addition(data: tuple[int, int], first: Solution, miss: bool = False) -> Solution:
    """`first` (the first pass, maybe slipped) followed by a careful second pass whose columns end the check
    (no closing "So" line): "It matches." keeps the first answer, the only whole answer written so far; on a
    mismatch, "wait", the first step that went wrong with its right value, and the answer assembled from the
    checked columns. miss: a careless check that says "It matches." anyway and keeps the first answer."""
    a, b = data
    again = solve_addition((a, b))
    steps = [*first.steps, CHECK_MARKER, *again.steps[:-1]]
    if again.boxed == first.boxed or miss:
        return Solution([*steps, "It matches."], first.boxed, first.touched)
    wrong = next(((w, c) for w, c in zip(first.steps, again.steps) if w != c), None)
    where = ""
    if wrong is not None and len(first.steps) > 1:  # a quick first pass has no working to point into
        wrong_eq, right_eq = (line.split(",")[0] for line in wrong)
        same_sum = wrong_eq.split("=")[0] == right_eq.split("=")[0]
        where = f" {right_eq}, not {wrong_eq.split('=')[-1] if same_sum else wrong_eq},"
    fix = f"{again.boxed} is not {first.boxed}, {WAIT}.{where} {'so' if where else 'So'} {a} + {b} = {again.boxed}."
    return Solution([*steps, fix], again.boxed, first.touched)


def make_subtraction(rng: random.Random, *, digits: int = 4, min_digits: int | None = None) -> Problem:
    """a - b with a >= b, so the result is never negative."""
    low, high = digit_range(digits, min_digits)
    a = random_number(rng, rng.randint(low, high))
    b = random_number(rng, rng.randint(low, high))
    a, b = max(a, b), min(a, b)
    return Problem(f"What is {a} - {b}?", str(a - b), data=(a, b))


def solve_subtraction(data: tuple[int, int], slip: Slip | None = None, misconception: bool = False) -> Solution:
    a, b = data
    width = len(str(a))
    slipped = slip_index(slip, width) if slip else -1
    steps, written, borrow = [], [], 0
    columns = list(zip(_digits(a, width), _digits(b, width)))
    touched = any(top < bottom for top, bottom in columns)
    for column, (top, bottom) in enumerate(columns):
        if misconception and top < bottom:
            # The buggy teacher never borrows, so `borrow` stays 0 throughout.
            steps.append(f"{bottom}-{top}={bottom - top}, borrow 0")
            written.append(bottom - top)
            continue
        value = top - bottom - borrow
        shown_top = f"1{top}" if value < 0 else str(top)
        minus_borrow = "-1" if borrow else ""
        borrow = 1 if value < 0 else 0
        value += 10 * borrow
        if column == slipped:
            value = nudge(value, slip.up, 0, 9)
        steps.append(f"{shown_top}-{bottom}{minus_borrow}={value}, borrow {borrow}")
        written.append(value)
    result = _from_digits(written)
    steps.append(f"So {a} - {b} = {result}.")
    return Solution(steps, str(result), touched)


ADDITION = Task(
    "addition", make_addition, solve_addition,
    misconception="forgets the carry into a column whose two digits sum to 9", check=check_addition,
)
SUBTRACTION = Task(
    "subtraction", make_subtraction, solve_subtraction,
    misconception="subtracts the smaller digit from the larger instead of borrowing",
)
