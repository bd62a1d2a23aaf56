"""What every task generator shares: the row format, teacher noise and held-out splits.

A task is two plain functions:

    make(rng, **difficulty) -> Problem        draws one problem
    solve(data, slip=None, misconception=False) -> Solution
                                              the programmatic teacher's working

`stream` turns them into the endless iterator of rows that training and
evaluation read.  Each row is a dict:

    task, prompt, answer            the question and the gold answer (a string)
    reference_trace                 the teacher's full assistant response:
                                    "<think>\\n...steps...\\n</think>\\nThe answer is \\boxed{X}."
    trace_answer                    the X the trace boxes (differs from `answer` when the teacher erred,
                                    and for countdown, where it is an expression)
    affected                        noise changed this trace
    touched                         the task's misconception rule applies to this problem
    checked, caught                 (check > 0 only) the trace re-derives its answer after the first pass, and
                                    that check caught a wrong first answer ("wait", the slip, the fix);
                                    with miss > 0 that share of the checks after a wrong first answer
                                    overlook it ("It matches.", the wrong answer kept)
                                    with quick=True the first pass is its last step alone (the answer, no working)
    ...                             task-specific columns (countdown: numbers, target)
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from ..tokenizer import END_THINK, THINK_PREFIX

NOISE_KINDS = ("slip", "misconception")
# A task's check (Task.check) opens with CHECK_MARKER and says WAIT when it catches a wrong first answer;
# `review` reads both back from a response
CHECK_MARKER = "Check:"
WAIT = "wait"
SPLITS = ("train", "test", "all")


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str
    data: Any  # whatever the task's solver needs (operands, template values)
    key: str = ""  # identity for the train/test split; "" means the prompt
    columns: dict[str, Any] = field(default_factory=dict)  # extra row keys


@dataclass(frozen=True)
class Slip:
    """One realistic mistake: which slippable step goes wrong, and in which direction."""

    where: float  # in [0, 1): position among the task's slippable steps
    up: bool  # off by +1 (else -1) where both stay legal


@dataclass
class Solution:
    steps: list[str]  # reasoning lines inside <think>
    boxed: str  # what the final answer line boxes
    touched: bool = False  # the misconception rule applies somewhere in this problem


@dataclass(frozen=True)
class Task:
    name: str
    make: Callable[..., Problem]
    solve: Callable[..., Solution]
    misconception: str | None = None  # the wrong rule, in words; None: not defined for this task
    # check(data, first_pass, miss=False) -> Solution: the first pass (slips kept) followed by a verification
    # that re-derives the result and, on a mismatch, writes "wait", names the slip and fixes the answer, or
    # with miss=True overlooks it (arithmetic.check_addition); None: the task has no such check
    check: Callable[..., Solution] | None = None


def render_trace(steps: list[str], boxed: str) -> str:
    return THINK_PREFIX + "\n".join(steps) + f"\n{END_THINK}\nThe answer is \\boxed{{{boxed}}}."


def review(text: str) -> tuple[bool, bool]:
    """(checked, caught) of a response: its thinking has a check (CHECK_MARKER), and that check says WAIT
    (it found the first answer wrong). Whether the fix ended right is the accuracy reward's call."""
    thinking = text.split(END_THINK)[0]
    checked = CHECK_MARKER in thinking
    return checked, checked and WAIT in thinking.split(CHECK_MARKER, 1)[1]


def first_answer(text: str) -> str | None:
    """The answer a checking response committed to before its check: the last number of its thinking before
    CHECK_MARKER (the first pass's "So a + b = G." line); None without a check or a number before it."""
    thinking = text.split(END_THINK)[0]
    if CHECK_MARKER not in thinking:
        return None
    numbers = re.findall(r"\d+", thinking.split(CHECK_MARKER, 1)[0])
    return numbers[-1] if numbers else None


def nudge(value: int, up: bool, lo: int, hi: int) -> int:
    """value off by one, staying inside [lo, hi] (so the slipped step is still plausible)."""
    if (up and value < hi) or value <= lo:
        return value + 1
    return value - 1


def slip_index(slip: Slip, count: int) -> int:
    return min(int(slip.where * count), count - 1)


def split_of(task: str, key: str, test_fraction: float) -> str:
    """Hash the problem, not its position in the stream, so a problem lands in one split only."""
    digest = hashlib.blake2b(f"{task}\0{key}".encode(), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "big") / 2**64 < test_fraction else "train"


def check_stream_args(task: Task, split: str, noise: float, noise_kind: str, test_fraction: float,
                      check: float = 0.0, miss: float = 0.0) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    if noise_kind not in NOISE_KINDS:
        raise ValueError(f"noise_kind must be one of {NOISE_KINDS}, got {noise_kind!r}")
    if noise_kind == "misconception" and noise > 0 and task.misconception is None:
        raise ValueError(f"task {task.name!r} has no misconception rule; use noise_kind='slip'")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if not 0.0 <= check <= 1.0:
        raise ValueError(f"check must be in [0, 1], got {check}")
    if not 0.0 <= miss <= 1.0:
        raise ValueError(f"miss must be in [0, 1], got {miss}")
    if check > 0 and task.check is None:
        raise ValueError(f"task {task.name!r} has no check step; check > 0 needs one (addition has)")


def stream(
    task: Task,
    *,
    seed: int,
    split: str,
    noise: float,
    noise_kind: str,
    test_fraction: float,
    difficulty: dict[str, Any],
    check: float = 0.0,
    quick: bool = False,
    miss: float = 0.0,
) -> Iterator[dict[str, Any]]:
    # Two generators: problems do not depend on the noise settings, and the teacher's
    # dice are rolled a fixed number of times per problem, so raising `noise` only
    # adds affected traces (the affected set at 0.3 is inside the one at 0.5).
    # A third decides which traces carry a check, so check > 0 keeps every problem and
    # every slip of the same stream at check = 0 and only appends verifications.
    problems = random.Random(f"{task.name}:{seed}")
    teacher = random.Random(f"{task.name}:{seed}:teacher")
    checker = random.Random(f"{task.name}:{seed}:check")
    misser = random.Random(f"{task.name}:{seed}:miss")  # its own dice: miss = 0 keeps the streams above as they were
    rejected = 0
    while True:
        problem = task.make(problems, **difficulty)
        if split != "all" and split_of(task.name, problem.key or problem.prompt, test_fraction) != split:
            rejected += 1
            if rejected > 10_000:
                raise ValueError(f"{task.name}: no {split} problems at this difficulty {difficulty}")
            continue
        rejected = 0
        roll, where, up = teacher.random(), teacher.random(), teacher.random() < 0.5
        clean = task.solve(problem.data)
        solution, affected = clean, False
        if roll < noise and noise_kind == "slip":
            solution, affected = task.solve(problem.data, slip=Slip(where, up)), True
        elif roll < noise and clean.touched:
            solution, affected = task.solve(problem.data, misconception=True), True
        if quick:  # the first pass states its (maybe slipped) answer without the working: its last step only
            solution = Solution(solution.steps[-1:], solution.boxed, solution.touched)
        extra = {}
        if check > 0:
            checked = checker.random() < check
            missed = misser.random() < miss
            if checked:
                first = solution.boxed
                solution = task.check(problem.data, solution, miss=missed)
                extra = {"checked": True, "caught": solution.boxed != first}
            else:
                extra = {"checked": False, "caught": False}
        yield {
            "task": task.name,
            "prompt": problem.prompt,
            "answer": problem.answer,
            "reference_trace": render_trace(solution.steps, solution.boxed),
            "trace_answer": solution.boxed,
            "affected": affected,
            "touched": clean.touched,
            **extra,
            **problem.columns,
        }


def random_number(rng: random.Random, digits: int) -> int:
    """A number with exactly `digits` digits (1..9 for one digit)."""
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def digit_range(digits: int, min_digits: int | None, name: str = "digits") -> tuple[int, int]:
    low = digits if min_digits is None else min_digits
    if not 1 <= low <= digits <= 30:
        raise ValueError(f"need 1 <= min_digits <= {name} <= 30, got min_digits={low}, {name}={digits}")
    return low, digits
