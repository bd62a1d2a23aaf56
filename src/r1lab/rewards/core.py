"""Shared plumbing for reward functions: completion text, answer extraction, the batch wrapper.

Rewards follow TRL's convention: fn(completions, **columns) -> list[float], where each
column (answer, task, numbers, tests, ...) is a list aligned with the completions.  A
column that is not a list is broadcast to every completion; unknown columns are ignored.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

RewardFn = Callable[..., list[float]]
ItemFn = Callable[[str, dict[str, Any]], float]


def completion_text(completion: Any) -> str:
    """A completion as text: a string, or TRL's chat form [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    if isinstance(completion, (list, tuple)):
        messages = [m for m in completion if isinstance(m, dict)]
        replies = [m for m in messages if m.get("role", "assistant") == "assistant"] or messages
        return str(replies[-1].get("content") or "") if replies else ""
    return "" if completion is None else str(completion)


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (nested braces allowed), or None."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\boxed {"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None  # unclosed: the model stopped mid-answer


def after_think(text: str) -> str | None:
    """The answer part: text after the last </think>, or None while the model is still thinking."""
    end = text.rfind("</think>")
    return None if end < 0 else text[end + len("</think>"):].strip()


_FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)  # fenced code, closed or running to the end


def answer_part(text: str) -> str | None:
    """What a grader reads as the reply: the text after the last </think> (the whole text when there are no
    think tags; None while a <think> is still open), with fenced code blocks removed (code is not a statement
    of the answer: a \\boxed{} written in a code block does not count)."""
    tail = after_think(text)
    if tail is None:
        if "<think>" in text:
            return None
        tail = text
    return _FENCE.sub(" ", tail).strip()


def boxed_all(text: str) -> tuple[list[str], bool]:
    """(contents of every outermost closed \\boxed{...}, in order; whether a \\boxed is left unclosed)."""
    contents, broken, end = [], False, 0
    for match in re.finditer(r"\\boxed\s*\{", text):
        if match.start() < end:  # a box inside a box: the outer one is the answer
            continue
        depth = 1
        for j in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                contents.append(text[match.end():j])
                end = j
                break
        else:
            broken = True
            end = len(text)
    return contents, broken


def extract_answer(text: str) -> tuple[str | None, bool]:
    """(answer text, whether it came from \\boxed{}) under the grading rules: the boxes of the answer part
    (several distinct ones joined by ", "), else the whole answer part; (None, False) without an answer."""
    part = answer_part(text)
    if not part:
        return None, False
    boxes, broken = boxed_all(part)
    if boxes:
        return ", ".join(dict.fromkeys(box.strip() for box in boxes)), True
    return (None, False) if broken else (part, False)


def batch(item: ItemFn, low: float, high: float, name: str) -> RewardFn:
    """Lift a per-completion scorer to a TRL reward that never raises and stays in [low, high]."""

    def reward(completions: Any, **columns: Any) -> list[float]:
        try:
            completions = list(completions)
        except Exception:
            return []
        scores = []
        for index, completion in enumerate(completions):
            try:
                value = float(item(completion_text(completion), row(columns, index, len(completions))))
            except BaseException as error:  # math-verify's TimeoutException is a BaseException
                if isinstance(error, (KeyboardInterrupt, SystemExit)):
                    raise
                value = low
            scores.append(min(high, max(low, value)) if math.isfinite(value) else low)
        return scores

    reward.__name__ = reward.__qualname__ = name
    reward.reward_range = (low, high)
    return reward


def row(columns: dict[str, Any], index: int, count: int) -> dict[str, Any]:
    """The column values for one completion."""
    values = {}
    for key, column in columns.items():
        if isinstance(column, (list, tuple)) and len(column) == count:
            values[key] = column[index]
        elif not isinstance(column, (list, tuple)):
            values[key] = column
    return values
