"""Reward functions in TRL's convention, and a way to combine them.

    from r1lab import rewards
    accuracy = rewards.get("accuracy")
    accuracy(["<think>\\n1+1=2\\n</think>\\nThe answer is \\boxed{2}."], answer=["2"])   # [1.0]
    length = rewards.get("cosine_length", max_len=500)
    total = rewards.combine({"accuracy": 1.0, "format": 0.5})
    scores = total(completions, answer=answers)     # scores.total, scores.parts["format"]

Each reward is fn(completions, **columns) -> list[float]: completions are the assistant
text including the opening "<think>" (or TRL chat lists); columns are lists aligned with
them; unknown columns are ignored.  A reward never raises and always returns finite
floats in its range (fn.reward_range):

    accuracy       {0, 1}   final answer equals `answer` (math-verify; countdown: the expression)
    format         {0, 1}   one <think>...</think> block at the start, then a non-empty answer
    tag_count      [0, 1]   0.25 per: one <think>, one </think>, in order, text after
    cosine_length  [-1, 1]  accuracy scaled by length (short right best, long wrong least bad)
    repetition     [-1, 0]  repeated word 3-grams penalty (max_penalty, ngram_size)
    code           [0, 1]   fraction of `tests` (assert statements) passed, run in the sandbox
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from . import accuracy, code, length, tags
from .core import RewardFn

FACTORIES: dict[str, Callable[..., RewardFn]] = {
    "accuracy": accuracy.accuracy,
    "format": tags.format_reward,
    "tag_count": tags.tag_count,
    "cosine_length": length.cosine_length,
    "repetition": length.repetition,
    "code": code.code_reward,
}


COLUMNS = ("answer", "task", "numbers", "target", "tests")  # the problem fields rewards read


def columns_of(problems: list[dict], repeat: int = 1) -> dict[str, list]:
    """Reward columns for problems whose completions come `repeat` at a time, problem by problem."""
    return {key: [p.get(key) for p in problems for _ in range(repeat)]
            for key in COLUMNS if any(key in p for p in problems)}


def names() -> list[str]:
    return list(FACTORIES)


def get(name: str, **params: Any) -> RewardFn:
    """The reward `name`, built with its parameters (e.g. get("cosine_length", max_len=1000))."""
    if name not in FACTORIES:
        raise ValueError(f"unknown reward {name!r}; valid rewards: {', '.join(FACTORIES)}")
    fn = FACTORIES[name](**params)
    fn.__name__ = name  # TRL logs rewards under their function's name
    return fn


@dataclass
class Scores:
    total: list[float]  # weighted sum per completion
    parts: dict[str, list[float]]  # each reward's own values, for logging


def combine(weights: dict[str, float], params: dict[str, dict[str, Any]] | None = None) -> Callable[..., Scores]:
    """One function scoring with several rewards: total = sum(weight * reward)."""
    params = params or {}
    functions = {name: get(name, **params.get(name, {})) for name in weights}

    def score(completions: Any, **columns: Any) -> Scores:
        completions = list(completions)
        parts = {name: fn(completions, **columns) for name, fn in functions.items()}
        total = [sum(weights[name] * parts[name][i] for name in parts) for i in range(len(completions))]
        return Scores(total, parts)

    return score


__all__ = ["names", "get", "combine", "Scores", "FACTORIES"]
