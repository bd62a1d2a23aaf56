"""Length-shaped rewards: cosine length scaling and an n-gram repetition penalty."""

from __future__ import annotations

import math
from typing import Any

from .accuracy import score as accuracy_score
from .core import RewardFn, batch


def completion_length(text: str, columns: dict[str, Any]) -> int:
    """Tokens when the trainer passes them (TRL's `completion_ids`, or `completion_length`), else characters."""
    ids = columns.get("completion_ids")
    if ids is not None:
        return len(ids)
    if columns.get("completion_length") is not None:
        return int(columns["completion_length"])
    return len(text)


def cosine_length(
    min_value_wrong: float = -1.0,
    max_value_wrong: float = -0.5,
    min_value_correct: float = 0.5,
    max_value_correct: float = 1.0,
    max_len: int = 1000,
) -> RewardFn:
    """Open-R1's cosine scaling of accuracy by length (range [min_value_wrong, max_value_correct]).

    A correct answer earns max_value_correct at length 0 falling to min_value_correct at
    max_len; a wrong answer is penalised min_value_wrong at length 0 easing to
    max_value_wrong at max_len (thinking longer is less bad than a quick wrong guess).
    Lengths beyond max_len count as max_len.
    """
    if not (min_value_wrong <= max_value_wrong and min_value_correct <= max_value_correct and max_len > 0):
        raise ValueError("need min_value_wrong <= max_value_wrong, min_value_correct <= max_value_correct, max_len > 0")

    def score(text: str, columns: dict[str, Any]) -> float:
        progress = min(completion_length(text, columns) / max_len, 1.0)
        cosine = math.cos(progress * math.pi)  # 1 at length 0, -1 at max_len
        if accuracy_score(text, columns) >= 1.0:
            start, end = max_value_correct, min_value_correct
        else:
            start, end = min_value_wrong, max_value_wrong
        return end + 0.5 * (start - end) * (1.0 + cosine)

    low, high = min(min_value_wrong, min_value_correct), max(max_value_correct, max_value_wrong)
    return batch(score, low, high, "cosine_length")


def repetition(ngram_size: int = 3, max_penalty: float = -1.0) -> RewardFn:
    """Penalty for repeated word n-grams, in [max_penalty, 0]: 0 when all n-grams are distinct.

    penalty = max_penalty * (1 - distinct n-grams / all n-grams); texts shorter than one
    n-gram are not penalised.
    """
    if max_penalty > 0 or ngram_size < 1:
        raise ValueError(f"need max_penalty <= 0 and ngram_size >= 1, got {max_penalty}, {ngram_size}")

    def score(text: str, columns: dict[str, Any]) -> float:
        words = text.lower().split()
        if len(words) < ngram_size:
            return 0.0
        ngrams = list(zip(*(words[i:] for i in range(ngram_size))))
        return max_penalty * (1.0 - len(set(ngrams)) / len(ngrams))

    return batch(score, max_penalty, 0.0, "repetition")
