"""Accuracy: 1 when the completion's final answer equals the gold answer, else 0.

The answer is the last \\boxed{...} (nested braces allowed); without one, the text after
</think> (a completion still thinking has no answer).  Gold is a string: a plain number
("6200", "-3", "1,234") or LaTeX ("\\frac{1}{2}").

Speed and safety:
- plain numbers and simple fractions on both sides are compared exactly (Fractions)
  without math-verify;
- otherwise math-verify parses and verifies, behind caps: answers over MAX_ANSWER_CHARS,
  and power towers / huge exponents / huge factorials (which sympy would evaluate for
  minutes, unreachable by signals while in C) score 0 without being parsed;
- math-verify's own signal-based timeout is used only in the main thread (signals do not
  work elsewhere); in other threads it is disabled and the caps above are the guard.

Countdown rows (task == "countdown", or a `numbers` column) are judged by
r1lab.rewards.countdown on the boxed expression instead; the gold `answer` (or a `target`
column) is the target.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction
from functools import lru_cache
from typing import Any

from . import countdown
from .core import RewardFn, after_think, batch, extract_answer, last_boxed

MAX_ANSWER_CHARS = 400
MATH_VERIFY_TIMEOUT_S = 2
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?|-?\.\d+")
_FRACTIONS = (re.compile(r"(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}"), re.compile(r"(-?)(\d+)\s*/\s*(\d+)"))
_UNWRAP = [re.compile(p) for p in (r"^\\text\{(.*)\}$", r"^\$(.*)\$$", r"^\\\((.*)\\\)$", r"^[a-zA-Z]\s*=\s*(.*)$")]
# Exponents nested in exponents, long exponents, big factorials: sympy would take forever.
_DANGEROUS = re.compile(r"\^\s*\{[^}]*\^|\^\s*\{?\s*\(?\s*\d{5,}|\*\*\s*\(?\s*\d{5,}|\*\*[^*]*\*\*|\d{4,}\s*!")


def plain_number(text: str) -> Fraction | None:
    """'6,200', '$6200$', 'x = -3', '3.50', '\\frac{1}{2}', '1/2' -> exact value; anything else -> None."""
    text = text.strip().rstrip(".").strip()
    for pattern in _UNWRAP:
        match = pattern.match(text)
        if match:
            text = match.group(1).strip()
    text = text.replace("\\!", "").replace("{,}", ",").replace("\\$", "").replace("$", "").strip()
    if len(text) > 60:
        return None
    for pattern in _FRACTIONS:
        fraction = pattern.fullmatch(text)
        if fraction:
            sign, numerator, denominator = fraction.groups()
            return None if int(denominator) == 0 else Fraction(int(sign + numerator), int(denominator))
    if not _NUMBER.fullmatch(text):
        return None
    return Fraction(text.replace(",", ""))


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _timeout() -> int | None:
    return MATH_VERIFY_TIMEOUT_S if _in_main_thread() else None


@lru_cache(maxsize=4096)
def _parse_gold(gold: str, main_thread: bool) -> tuple:
    from math_verify import parse  # imported lazily: it pulls in sympy (slow to import)

    text = gold if ("\\boxed" in gold or "$" in gold) else "\\boxed{" + gold + "}"
    return tuple(parse(text, parsing_timeout=MATH_VERIFY_TIMEOUT_S if main_thread else None))


def math_equal(predicted: str, gold: str, boxed: bool = True) -> bool:
    """math-verify equivalence of a predicted answer and the gold, behind the caps above."""
    from math_verify import parse, verify

    if not predicted or len(predicted) > MAX_ANSWER_CHARS or _DANGEROUS.search(predicted):
        return False
    gold_parsed = list(_parse_gold(gold, _in_main_thread()))
    if not gold_parsed:  # gold math-verify cannot read: fall back to text equality
        return " ".join(predicted.split()) == " ".join(gold.split())
    text = "\\boxed{" + predicted + "}" if boxed else predicted
    predicted_parsed = parse(text, parsing_timeout=_timeout())
    return bool(predicted_parsed) and verify(gold_parsed, predicted_parsed, timeout_seconds=_timeout())


def answer_matches(answer: str | None, gold: Any, boxed: bool = True) -> bool:
    if answer is None or gold is None:
        return False
    gold = str(gold).strip()
    if not boxed:
        answer = answer[-MAX_ANSWER_CHARS:]  # free text: its end holds the answer
    gold_value = plain_number(gold)
    value = plain_number(answer)
    if not boxed and value is None and gold_value is not None:
        # Unboxed answer text ("The answer is 6200."): its last number is the answer.
        numbers = _NUMBER.findall(answer)
        value = Fraction(numbers[-1].replace(",", "")) if numbers else None
    if gold_value is not None and value is not None:
        return gold_value == value
    return math_equal(answer, gold, boxed)


def score(text: str, columns: dict[str, Any]) -> float:
    if columns.get("task") == "countdown" or columns.get("numbers") is not None:
        expression = last_boxed(text)
        if expression is None:
            tail = after_think(text)
            expression = tail.splitlines()[-1] if tail else ""
        target = columns.get("target", columns.get("answer"))
        return float(countdown.check(expression, columns["numbers"], target))
    answer, boxed = extract_answer(text)
    return float(answer_matches(answer, columns.get("answer"), boxed))


def accuracy() -> RewardFn:
    """accuracy(completions, answer=[...], task=[...]?, numbers=[...]?) -> 0.0 or 1.0 each."""
    return batch(score, 0.0, 1.0, "accuracy")
