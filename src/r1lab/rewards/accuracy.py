"""Accuracy: 1 when the completion's final answer equals the gold answer, else 0.

What counts as the answer (the same for GRPO, rejection sampling, distillation and `r1lab eval`, which all
call this reward):
- the answer part: the text after the last </think> (the whole text when there are no think tags); a
  completion whose <think> never closes has no answer (0), and an answer written only inside <think> does
  not count.  Fenced code blocks (```...```) are removed from it first: code is not a statement of the answer.
- with \\boxed{} in the answer part, the boxes are the answer (math-verify's boxed="all": several distinct
  boxes form a set, so boxing every candidate is not paid); a \\boxed left unclosed makes the answer
  malformed (0).  Numbers beside the boxes are not read (math-verify takes an unreadable box as text).
- without a box, the answer part is read the way lighteval / Open-R1 read an unboxed reply: math-verify's
  LaTeX extraction (boxed first, "final answer is $...$", $...$) then its expression extraction (anchored
  "answer is 42", else the last number).  So "The answer is $\\frac{1}{G}$" is 1/G, not G.

Gold is a string: a plain number ("6200", "-3", "1,234"), or LaTeX ("\\frac{1}{2}", "\\text{(C)}", "(1,2]",
"10,\\!080"); it is read as \\boxed{gold} by math-verify.

The verdict is math-verify's (parse with LatexExtractionConfig(boxed_match_priority=0) + ExprExtractionConfig,
then verify), with these shortcuts and guards, all covered by a differential test against plain math-verify:
- fast path: when the answer is in full a plain number or simple fraction (ASCII digits only) and so is the
  gold, the values are compared exactly as math-verify would (exact for integers and fractions, rounding to 6
  decimal places when a decimal is involved); anything undecided goes to math-verify;
- documented differences (a careful grader's verdict, where math-verify pays a hack): enumerations
  ("1, 2, \\ldots, 100") score 0 unless the gold is one; boxes in code blocks or inside <think> do not count;
  an unclosed box scores 0; numerals in a base are compared by value (math-verify drops the subscript and
  takes 52_9 for 52_8; see base_verdict);
- safety caps: a box over MAX_ANSWER_CHARS, and power towers / huge exponents / huge factorials (which sympy
  would evaluate for minutes, unreachable by signals while in C) score 0 without being parsed; an unboxed
  answer part over MAX_PART_CHARS is read from its last MAX_PART_CHARS characters (from a line start);
- math-verify always runs in a main thread, with its own signal-based timeouts (MATH_VERIFY_TIMEOUT_S per parse
  and per comparison): in the main thread, in this process; from any other thread (signals do not work there),
  in a child process (r1lab.rewards.bounded), which is also killed past CHILD_TIMEOUT_S (work in C, which
  signals cannot interrupt) and capped at CHILD_MEMORY_MB of address space; a killed call is wrong (0).

Countdown rows (task == "countdown", or a `numbers` column) are judged by r1lab.rewards.countdown on the
boxed expression instead (the last \\boxed{} anywhere, else the last line after </think>); the gold
`answer` (or a `target` column) is the target.
"""

from __future__ import annotations

import atexit
import os
import re
import threading
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Any

from . import countdown
from .bounded import BoundedWorker
from .core import RewardFn, after_think, answer_part, batch, boxed_all, last_boxed

MAX_ANSWER_CHARS = 400
MAX_PART_CHARS = 4000
MATH_VERIFY_TIMEOUT_S = 2
CHILD_TIMEOUT_S = 10
CHILD_MEMORY_MB = 2048
_NUMBER = re.compile(r"-?(?:[1-9]\d{0,2}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+", re.ASCII)
_FRACTIONS = (re.compile(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}", re.ASCII), re.compile(r"(-?)(\d+)\s*/\s*(\d+)", re.ASCII))
_FREE_NUMBER = re.compile(r"-?(?:[1-9]\d{0,2}(?:,\d{3})+|\d+)(?:\.\d+)?", re.ASCII)
_UNWRAP_DOLLARS = re.compile(r"\$([^$]*)\$")
# Exponents nested in exponents, long exponents, big factorials: sympy would take forever.
_DANGEROUS = re.compile(r"\^\s*\{[^}]*\^|\^\s*\{?\s*\(?\s*\d{5,}|\*\*\s*\(?\s*\d{5,}|\*\*[^*]*\*\*|\d{4,}\s*!")
# a numeral, with its base as a subscript or without: "52_8", "52_{8}", "52_{(8)}", "\text{52}_8", "A3_{16}", "52"
_NUMERAL = re.compile(r"(?:\\(?:text|mathrm)\s*\{\s*([0-9A-Za-z]+)\s*\}|([0-9A-Za-z]+))"
                      r"(?:\s*_\s*(?:(\d)|\{\s*\(?\s*(\d+)\s*\)?\s*\}))?", re.ASCII)
# "1, 2, \ldots, 100": a list with an ellipsis in it
_ENUMERATION = re.compile(r"\d\s*,\s*(?:\\[lcv]?dots|\\ldotp|\.\.\.|\u2026)\s*,?\s*\\?\$?\s*-?\d", re.ASCII)


@dataclass(frozen=True)
class Plain:
    value: Fraction
    decimal: bool  # written with a decimal point (math-verify then compares rounded to 6 places)
    digits: int


def plain_number(text: str, boxed: bool = True) -> Plain | None:
    """The exact value of a plain number or simple fraction written in full ('6,200', '$6200$', '3.50',
    '\\frac{1}{2}', '1/2'), in the forms math-verify reads the same way; anything else -> None.
    Outside a box only plain decimals count (math-verify's expression extraction skips '.5' or '10,\\!080'),
    and a trailing period is dropped (inside a box, math-verify reads '6200.' as text)."""
    text = text.strip()
    if not boxed:
        text = text.rstrip(".").strip()
    match = _UNWRAP_DOLLARS.fullmatch(text)
    if match:
        text = match.group(1).strip()
    if boxed:
        text = text.replace("\\!", "").replace("{,}", ",")
    if len(text) > 60:
        return None
    for pattern in _FRACTIONS if boxed else ():
        fraction = pattern.fullmatch(text)
        if fraction:
            sign, numerator, denominator = fraction.groups()
            if int(denominator) == 0:
                return None
            return Plain(Fraction(int(sign + numerator), int(denominator)), False, len(numerator) + len(denominator))
    if not (_NUMBER if boxed else _FREE_NUMBER).fullmatch(text):
        return None
    digits = sum(c.isdigit() for c in text)
    return Plain(Fraction(text.replace(",", "")), "." in text, digits)


def exact_verdict(answer: Plain, gold: Plain) -> bool | None:
    """math-verify's verdict on two plain values, or None where it is not certain without math-verify."""
    if answer.value == gold.value:
        return True
    if not (answer.decimal or gold.decimal):
        return False  # integers and fractions: math-verify compares them exactly
    if max(answer.digits, gold.digits) > 12:
        return None  # past float precision: leave it to math-verify
    return False if abs(answer.value - gold.value) >= Fraction(1, 10**5) else None


def numeral(text: str) -> tuple[str, int | None] | None:
    """(digits, base) of a numeral written with its base as a subscript ('52_8' -> ('52', 8)), (digits, None)
    of one without ('52'), None for anything else."""
    match = _NUMERAL.fullmatch(text.strip().strip("$").strip())
    if not match:
        return None
    base = match.group(3) or match.group(4)
    return match.group(1) or match.group(2), int(base) if base else None


def _value(digits: str, base: int) -> int | None:
    try:
        return int(digits, base) if 2 <= base <= 36 else None
    except ValueError:  # a digit the base does not have: 19_8
        return None


def base_verdict(answer: str, gold: str) -> bool | None:
    """Numerals in a base (math-verify drops a subscript, so it takes 52_9 for 52_8): equal when their values are
    (52_8 = 52_{8} = 42_{10} = 101010_2; 52_8 != 52_9).  A numeral written without a base is read in the other
    side's base, as graders of "express the answer in base 8" read a bare 52 (52_8 = 52; 52_8 != 42).  The answer may
    be several numerals (several boxes, math-verify's 'a,b'): each must be right, and hedging over bases against a
    bare gold is wrong.  None (not a question of bases) unless both sides are numerals and one has a base, and
    the gold's digits are digits of its base (x_2 is not a numeral)."""
    gold_numeral = numeral(gold)
    answers = [numeral(piece) for piece in answer.split(",")]
    if gold_numeral is None or None in answers:
        return None
    digits, base = gold_numeral
    bases = {b for _, b in answers if b is not None}
    if base is None:
        if not bases:
            return None
        if len(bases) > 1:
            return False
        base = bases.pop()
    value = _value(digits, base)
    if value is None:
        return None
    return all(_value(d, b or base) == value for d, b in answers)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _timeout() -> int | None:
    return MATH_VERIFY_TIMEOUT_S if _in_main_thread() else None


def gold_text(gold: str) -> str:
    """The gold as math-verify reads it: \\boxed{gold} (surrounding $ removed), unless it has a box already."""
    gold = gold.strip()
    if "\\boxed" in gold:
        return gold
    if len(gold) > 1 and gold.startswith("$") and gold.endswith("$") and not gold.endswith("\\$"):
        gold = gold.strip("$").strip()
    return "\\boxed{" + gold + "}"


@lru_cache(maxsize=4096)
def _parse_gold(gold: str, main_thread: bool) -> tuple:
    from math_verify import parse  # imported lazily: it pulls in sympy (slow to import)

    return tuple(parse(gold_text(gold), parsing_timeout=MATH_VERIFY_TIMEOUT_S if main_thread else None))


@lru_cache(maxsize=1)
def prediction_config() -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


def math_verify_equal(text: str, gold: str) -> bool:
    """Plain math-verify on a prediction text (boxes or free text) against the gold, behind the caps."""
    from math_verify import parse, verify

    if not text or _DANGEROUS.search(text):
        return False
    gold_parsed = list(_parse_gold(gold, _in_main_thread()))
    if not gold_parsed:  # gold math-verify cannot read: fall back to text equality
        return " ".join(text.split()) == " ".join(gold.split())
    predicted = parse(text, extraction_config=prediction_config(), parsing_timeout=_timeout())
    if not predicted:
        return False
    if isinstance(predicted[-1], str) and isinstance(gold_parsed[-1], str):  # the text math-verify extracted
        verdict = base_verdict(predicted[-1], gold_parsed[-1])
        if verdict is not None:
            return verdict
    return verify(gold_parsed, predicted, timeout_seconds=_timeout())


_child: tuple[int, BoundedWorker] | None = None  # (the process it serves, the worker)
_child_lock = threading.Lock()


def bounded_math_verify_equal(text: str, gold: str) -> bool:
    """math_verify_equal in the main thread here, else in a child process bounded in time and memory (wrong when
    the child is killed)."""
    global _child
    if _in_main_thread() or not text or _DANGEROUS.search(text):  # (the caps need no child)
        return math_verify_equal(text, gold)
    with _child_lock:
        if _child is None or _child[0] != os.getpid():  # (a forked process needs a child of its own)
            _child = os.getpid(), BoundedWorker(f"{__name__}:math_verify_equal", CHILD_TIMEOUT_S, CHILD_MEMORY_MB,
                                                warmup=("\\boxed{1}", "1"))
            atexit.register(_child[1].close)
    verdict, _ = _child[1].call(text, gold)
    return bool(verdict)


def _tail(part: str) -> str:
    """An over-long unboxed answer part: its last MAX_PART_CHARS characters, from a line start."""
    if len(part) <= MAX_PART_CHARS:
        return part
    window = part[-MAX_PART_CHARS:]
    newline = window.find("\n")
    return window[newline + 1:] if newline >= 0 else ""


def grade(text: str, gold: Any) -> bool:
    """Whether the completion `text` answers `gold` (see the module docstring for the rules)."""
    if gold is None:
        return False
    gold = str(gold).strip()
    part = answer_part(text)
    if not part or not gold:
        return False
    boxes, broken = boxed_all(part)
    if broken:
        return False
    if boxes:
        if any(len(box) > MAX_ANSWER_CHARS for box in boxes):
            return False
        # math-verify reads the boxes of the answer part first (boxed_match_priority=0), and an unreadable box
        # as text rather than the numbers beside it; a very long part is cut down to its boxes
        candidates = boxes
        prediction = part if len(part) <= MAX_PART_CHARS else " ".join("\\boxed{" + box + "}" for box in boxes)
    else:
        prediction = _tail(part)
        candidates = [prediction]
    if any(_ENUMERATION.search(c) for c in candidates) and not _ENUMERATION.search(gold):
        return False
    if len(set(candidates)) == 1:
        gold_value, value = plain_number(gold), plain_number(candidates[0], boxed=bool(boxes))
        if gold_value is not None and value is not None:
            verdict = exact_verdict(value, gold_value)
            if verdict is not None:
                return verdict
    return bounded_math_verify_equal(prediction, gold)


def score(text: str, columns: dict[str, Any]) -> float:
    if columns.get("task") == "countdown" or columns.get("numbers") is not None:
        expression = last_boxed(text)
        if expression is None:
            tail = after_think(text)
            expression = tail.splitlines()[-1] if tail else ""
        target = columns.get("target", columns.get("answer"))
        return float(countdown.check(expression, columns["numbers"], target))
    return float(grade(text, columns.get("answer")))


def accuracy() -> RewardFn:
    """accuracy(completions, answer=[...], task=[...]?, numbers=[...]?) -> 0.0 or 1.0 each."""
    return batch(score, 0.0, 1.0, "accuracy")
