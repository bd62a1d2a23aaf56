"""Format rewards: is the completion shaped "<think>reasoning</think>answer"?

Completions include the opening "<think>" (the trainer re-attaches the prefilled one).
"""

from __future__ import annotations

import re
from typing import Any

from .core import RewardFn, batch

_SHAPE = re.compile(r"\s*<think>.*?</think>(.*)", re.DOTALL)


def format_score(text: str, columns: dict[str, Any]) -> float:
    """1 for exactly one <think>...</think> block at the start, followed by a non-empty answer."""
    if text.count("<think>") != 1 or text.count("</think>") != 1:
        return 0.0
    match = _SHAPE.fullmatch(text)
    return 1.0 if match and match.group(1).strip() else 0.0


def tag_count_score(text: str, columns: dict[str, Any]) -> float:
    """Partial credit, 0.25 each: one <think>, one </think>, in that order, text after </think>."""
    opens, closes = text.count("<think>"), text.count("</think>")
    ordered = opens >= 1 and closes >= 1 and text.find("<think>") < text.rfind("</think>")
    answered = closes >= 1 and bool(text[text.rfind("</think>") + len("</think>"):].strip())
    return 0.25 * ((opens == 1) + (closes == 1) + ordered + answered)


def format_reward() -> RewardFn:
    return batch(format_score, 0.0, 1.0, "format")


def tag_count() -> RewardFn:
    return batch(tag_count_score, 0.0, 1.0, "tag_count")
