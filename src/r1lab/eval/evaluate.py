"""Evaluation: pass@1 over k samples, greedy accuracy, maj@k and response length on held-out problems.

Problems come from a built-in task's test split (never seen in training) or from a local JSONL/Parquet
file (GSM8K, MATH-500, Open-R1 formats). Every completion is graded by the same accuracy reward GRPO
trains on, so a number here means the same thing everywhere.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import tasks
from ..rewards import get as get_reward
from ..rewards.core import extract_answer
from ..rollout import rollout
from ..tasks.datasets import load_dataset


@dataclass
class TaskResult:
    task: str
    n: int
    k: int
    pass1: float | None  # mean accuracy over k samples at `temperature`
    greedy: float | None  # accuracy of the greedy completion
    maj: float | None  # accuracy of the majority answer over the k samples
    mean_length: float  # mean completion tokens over all samples
    truncated: float  # fraction of completions cut by max_tokens
    problems: list[dict] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "problems"}


def load_problems(spec: str, n: int, seed: int = 0, **knobs: Any) -> list[dict]:
    """`spec` is a built-in task name (test split) or a path to a .jsonl/.parquet dataset."""
    if spec in tasks.names():
        return tasks.sample(spec, n, seed=seed, split="test", **knobs)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{spec!r} is neither a task ({', '.join(tasks.names())}) nor a dataset file")
    rows = []
    for row in load_dataset(path):
        rows.append(row)
        if len(rows) >= n:
            break
    return rows


def _vote_key(text: str, correct: float) -> str:
    """What a majority vote counts: the extracted answer, normalised; all verified-correct answers of a
    problem count as one (countdown accepts many expressions for the same target)."""
    if correct:
        return "<correct>"
    answer, _ = extract_answer(text)
    return re.sub(r"\s+", "", answer or "")


def evaluate(engine, tokenizer, problems: list[dict], task: str, k: int = 8, temperature: float = 1.0,
             max_tokens: int = 256, greedy: bool = True, seed: int = 0, top_p: float = 1.0) -> TaskResult:
    """Sample problem i's j-th completion with the seed `seed + 1000 * i + j` (k of them, for pass@1 and
    maj@k) and one greedy completion each; grade them all with the accuracy reward."""
    accuracy = get_reward("accuracy")
    results: dict[str, list] = {}
    lengths, truncated = [], []
    if k > 0:
        out = rollout(engine, tokenizer, problems, k, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                      seed_of=lambda i, j: seed + 1000 * i + j, scorer=accuracy)
        results["samples"] = list(zip(out.texts, out.scores))
        lengths += out.lengths
        truncated += out.truncated
    if greedy:
        out = rollout(engine, tokenizer, problems, 1, max_tokens=max_tokens, temperature=0.0, scorer=accuracy)
        results["greedy"] = list(zip(out.texts, out.scores))
        if k == 0:
            lengths += out.lengths
            truncated += out.truncated
    rows = []
    pass1, maj, greedy_acc = [], [], []
    for i, p in enumerate(problems):
        row = {"task": task, "prompt": p["prompt"], "answer": p.get("answer")}
        for key in ("touched", "affected"):
            if key in p:
                row[key] = p[key]
        if "samples" in results:
            mine = results["samples"][i * k:(i + 1) * k]
            row["sample_correct"] = [s for _, s in mine]
            row["pass1"] = sum(row["sample_correct"]) / k
            votes = Counter(_vote_key(t, s) for t, s in mine)
            row["maj_correct"] = float(votes.most_common(1)[0][0] == "<correct>")
            row["samples"] = [t for t, _ in mine[:2]]  # a couple for reading, not all k
            pass1.append(row["pass1"])
            maj.append(row["maj_correct"])
        if "greedy" in results:
            text, score = results["greedy"][i]
            row["greedy_correct"] = score
            row["greedy_completion"] = text
            greedy_acc.append(score)
        rows.append(row)

    def mean(xs):
        return sum(xs) / len(xs) if xs else None

    return TaskResult(task=task, n=len(problems), k=k, pass1=mean(pass1), greedy=mean(greedy_acc), maj=mean(maj),
                      mean_length=mean(lengths) or 0.0, truncated=mean([float(t) for t in truncated]) or 0.0,
                      problems=rows)


def write_results(results: list[TaskResult], path: str | Path) -> None:
    """Per-problem results, one JSON object per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in results:
            for row in r.problems:
                f.write(json.dumps(row) + "\n")
