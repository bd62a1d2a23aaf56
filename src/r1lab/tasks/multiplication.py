"""Long multiplication: one row per digit of the second factor, one line per digit product.

    What is 482 * 37?
    2*7=14, write 4 carry 1
    8*7+1=57, write 7 carry 5
    4*7+5=33, write 3 carry 3
    write the final carry 3
    482*7=3374
    2*3=6, write 6 carry 0
    ...
    482*30=14460
    3374+14460=17834
    So 482 * 37 = 17834.

Slip: one digit product (with its carry) off by one; the row and the sum follow it,
so the answer is off by exactly 10^k (always wrong).

Misconception: "zero times a number is that number" (0*7=7).  It touches a problem
when some digit pair has exactly one zero; each application adds a positive amount,
so touched means wrong.
"""

from __future__ import annotations

import random

from .common import Problem, Slip, Solution, Task, digit_range, nudge, random_number, slip_index


def make_multiplication(rng: random.Random, *, digits_a: int = 3, digits_b: int = 1) -> Problem:
    digit_range(digits_a, None, "digits_a")
    digit_range(digits_b, None, "digits_b")
    a, b = random_number(rng, digits_a), random_number(rng, digits_b)
    return Problem(f"What is {a} * {b}?", str(a * b), data=(a, b))


def solve_multiplication(data: tuple[int, int], slip: Slip | None = None, misconception: bool = False) -> Solution:
    a, b = data
    a_digits = [int(c) for c in reversed(str(a))]
    b_digits = [int(c) for c in reversed(str(b))]
    slipped = slip_index(slip, len(a_digits) * len(b_digits)) if slip else -1
    steps, rows, touched, product_index = [], [], False, 0
    for shift, y in enumerate(b_digits):
        written, carry = [], 0
        for x in a_digits:
            product = x * y
            if (x == 0) != (y == 0):
                touched = True
                if misconception:
                    product = x + y  # "0*7=7"
            total = product + carry
            if product_index == slipped:
                total = nudge(total, slip.up, 0, 99)
            product_index += 1
            plus_carry = f"+{carry}" if carry else ""
            steps.append(f"{x}*{y}{plus_carry}={total}, write {total % 10} carry {total // 10}")
            written.append(total % 10)
            carry = total // 10
        if carry:
            steps.append(f"write the final carry {carry}")
            written.append(carry)
        row = int("".join(str(d) for d in reversed(written))) * 10**shift
        steps.append(f"{a}*{y}{'0' * shift}={row}")
        rows.append(row)
    result = rows[0]
    for row in rows[1:]:
        steps.append(f"{result}+{row}={result + row}")
        result += row
    steps.append(f"So {a} * {b} = {result}.")
    return Solution(steps, str(result), touched)


MULTIPLICATION = Task(
    "multiplication", make_multiplication, solve_multiplication,
    misconception="believes zero times a digit is that digit (0*7=7)",
)
