"""Evaluation: pass@1 over k samples, greedy accuracy, maj@k (cons@k) and response length on held-out problems,
each accuracy with its 95% interval (r1lab.eval.stats says how).

Problems come from a built-in task's test split (never seen in training) or from a local JSONL/Parquet
file (GSM8K, MATH-500, Open-R1 formats). Every completion is graded by the same accuracy reward GRPO
trains on, so a number here means the same thing everywhere. Completions come from a local engine or
from any OpenAI-compatible server (r1lab.eval.endpoint); a problem whose prompt does not fit the context
is skipped and counted, never an abort.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import tasks
from ..rewards import columns_of, get
from ..rewards.core import extract_answer
from ..rollout import chat_prompt, rollout
from ..tasks.common import first_answer, review
from ..tasks.datasets import load_dataset
from .stats import binary_interval, mean_interval, sample_interval, value_interval

# The R1 paper's evaluation set-up for reasoning models on benchmark files: sampling, and the math prompt
R1_MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
R1_SAMPLING = {"temperature": 0.6, "top_p": 0.95}
TASK_SAMPLING = {"temperature": 1.0, "top_p": 1.0}  # built-in tasks: what their models are trained and judged at
CI_METHOD = ("95% intervals: Wilson over problems for greedy and maj@k; pass@1 over problems: normal (CLT) over "
             "per-problem shares (Wilson when all equal); pass@1 over samples: the noise of re-drawing the k samples")


@dataclass
class Sample:
    """One completion: the full response text (thinking included), its length in tokens, why it stopped."""
    text: str
    tokens: int
    finish_reason: str | None


@dataclass
class Request:
    messages: list[dict]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    thinking_budget: int | None = None  # close the thinking after this many tokens (None: no budget)


# a generator turns requests into samples; None for a prompt that does not fit the context
Generate = Callable[[list[Request]], list[Sample | None]]


@dataclass
class TaskResult:
    task: str
    n: int  # problems evaluated (skipped ones not counted)
    k: int
    pass1: float | None  # mean accuracy over k samples at `temperature`
    greedy: float | None  # accuracy of the greedy completion
    maj: float | None  # accuracy of the majority answer over the k samples (cons@k)
    mean_length: float  # mean completion tokens over all samples
    truncated: float  # fraction of completions cut by max_tokens
    skipped: int = 0  # problems whose prompt does not fit the context
    pass1_ci: tuple[float, float] | None = None  # 95% interval over problems
    pass1_ci_samples: tuple[float, float] | None = None  # 95% interval over the k samples (same problems)
    greedy_ci: tuple[float, float] | None = None
    maj_ci: tuple[float, float] | None = None
    temperature: float | None = None
    top_p: float | None = None
    mean_length_ci: tuple[float, float] | None = None  # 95% interval over problems of the mean length (k samples)
    thinking_budget: int | None = None  # the thinking was closed after this many tokens
    # tasks with a check step (tasks.common.review), over the k samples: the share that checks (95% interval
    # over problems) and the share of those checks that caught a wrong first answer and ended right
    check_rate: float | None = None
    check_rate_ci: tuple[float, float] | None = None
    fix_rate: float | None = None
    # the same checks split by whether the answer written before the check (tasks.common.first_answer) was
    # right: the share that says "wait" anyway, and the share that says "wait" on a wrong first answer
    wait_right_guess: float | None = None
    wait_wrong_guess: float | None = None
    checks_right_guess: int | None = None  # how many checks had a right first answer (the first share's base)
    # each problem's share of right samples, in the order of the problems (None: skipped), so that two models
    # judged on the same problems can be compared problem by problem (stats.paired_difference)
    pass1_each: list[float | None] | None = None
    ci_method: str = CI_METHOD
    problems: list[dict] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "problems"}


def load_problems(spec: str, n: int, seed: int = 0, **knobs: Any) -> list[dict]:
    """`spec` is a built-in task name (test split) or a path to a .jsonl/.parquet dataset."""
    if is_task(spec):
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


def is_task(spec: str) -> bool:
    return spec in tasks.names()


def has_check(spec: str) -> bool:
    """A built-in task whose traces can verify their answer (its responses get check_rate, fix_rate)."""
    return is_task(spec) and tasks.TASKS[spec].check is not None


def _vote_key(text: str, correct: float) -> str:
    """What a majority vote counts: the extracted answer, normalised; all verified-correct answers of a
    problem count as one (countdown accepts many expressions for the same target)."""
    if correct:
        return "<correct>"
    answer, _ = extract_answer(text)
    return re.sub(r"\s+", "", answer or "")


def prompt_limit(engine) -> int:
    """Prompt tokens the engine takes, leaving room for one new token (as the server counts)."""
    return min(engine.max_model_len, engine.max_cached_tokens or engine.max_model_len) - 1


def engine_generator(engine, tokenizer) -> Generate:
    """Samples from a local engine through r1lab.rollout (one rollout per run of requests that share their
    sampling settings); a prompt over the engine's context gives None instead of an error."""

    def generate(requests: list[Request]) -> list[Sample | None]:
        problems = [{"prompt": r.messages[-1]["content"]} for r in requests]
        if any(len(r.messages) != 1 or r.messages[0]["role"] != "user" for r in requests):
            raise ValueError("the local engine evaluates one user turn per problem")
        fits = [i for i, p in enumerate(problems) if len(chat_prompt(tokenizer, p)) <= prompt_limit(engine)]
        samples: list[Sample | None] = [None] * len(requests)
        runs: dict[tuple, list[int]] = {}  # requests with the same settings (and seeds or not) sample together
        for i in fits:
            r = requests[i]
            runs.setdefault((r.max_tokens, r.temperature, r.top_p, r.seed is None, r.thinking_budget), []).append(i)
        for (max_tokens, temperature, top_p, unseeded, budget), rows in runs.items():
            out = rollout(engine, tokenizer, [problems[i] for i in rows], 1, max_tokens=max_tokens,
                          temperature=temperature, top_p=top_p, thinking_budget=budget,
                          seed_of=None if unseeded else (lambda index, _, rows=rows: requests[rows[index]].seed))
            for index, i in enumerate(rows):
                samples[i] = Sample(out.texts[index], out.lengths[index], out.finish_reasons[index])
        return samples

    return generate


def evaluate(engine, tokenizer, problems: list[dict], task: str, k: int = 8, temperature: float = 1.0,
             max_tokens: int = 256, greedy: bool = True, seed: int = 0, top_p: float = 1.0,
             instruction: str = "", thinking_budget: int | None = None) -> TaskResult:
    """Evaluate a local engine (see evaluate_with)."""
    return evaluate_with(engine_generator(engine, tokenizer), problems, task, k, temperature, max_tokens, greedy, seed,
                         top_p, instruction, thinking_budget)


def _messages(problem: dict, instruction: str) -> list[dict]:
    content = problem["prompt"] + ("\n" + instruction if instruction else "")
    return [{"role": "user", "content": content}]


def evaluate_with(generate: Generate, problems: list[dict], task: str, k: int = 8, temperature: float = 1.0,
                  max_tokens: int = 256, greedy: bool = True, seed: int = 0, top_p: float = 1.0,
                  instruction: str = "", thinking_budget: int | None = None) -> TaskResult:
    """pass@1 over k samples (seeds seed + 1000 * problem + sample), greedy accuracy and maj@k of `problems`,
    graded by the accuracy reward; `instruction` is appended to each prompt (e.g. R1_MATH_INSTRUCTION);
    thinking_budget: every completion's thinking is closed after that many tokens."""
    accuracy = get("accuracy")
    messages = [_messages(p, instruction) for p in problems]
    samples: list[list[Sample | None]] = [[] for _ in problems]
    greedy_samples: list[Sample | None] = [None] * len(problems)
    if k > 0:
        outs = generate([Request(m, max_tokens, temperature, top_p, seed + 1000 * i + j, thinking_budget)
                         for i, m in enumerate(messages) for j in range(k)])
        samples = [outs[i * k:(i + 1) * k] for i in range(len(problems))]
    if greedy:
        greedy_samples = generate([Request(m, max_tokens, 0.0, 1.0, None, thinking_budget) for m in messages])
    kept = [i for i in range(len(problems))
            if all(s is not None for s in samples[i]) and (not greedy or greedy_samples[i] is not None)]
    kept_problems = [problems[i] for i in kept]
    sample_scores: list[float] = []
    if k > 0:
        texts = [s.text for i in kept for s in samples[i]]
        sample_scores = accuracy(texts, **columns_of(kept_problems, k)) if texts else []
    greedy_scores: list[float] = []
    if greedy:
        texts = [greedy_samples[i].text for i in kept]
        greedy_scores = accuracy(texts, **columns_of(kept_problems, 1)) if texts else []
    measured = [s for i in kept for s in samples[i]] if k > 0 else [greedy_samples[i] for i in kept]
    rows: dict[int, dict] = {}  # by problem index, so the results keep the problems' order
    pass1, maj, greedy_acc, lengths, checks = [], [], [], [], []
    checking = has_check(task) and k > 0
    checked = fixed = 0
    waits = {True: [0, 0], False: [0, 0]}  # first answer right? -> [checks, of them saying "wait"]
    for index, i in enumerate(kept):
        p = problems[i]
        row = {"task": task, "prompt": p["prompt"], "answer": p.get("answer")}
        for key in ("touched", "affected"):
            if key in p:
                row[key] = p[key]
        if k > 0:
            mine = list(zip(samples[i], sample_scores[index * k:(index + 1) * k]))
            row["sample_correct"] = [score for _, score in mine]
            row["pass1"] = sum(row["sample_correct"]) / k
            votes = Counter(_vote_key(s.text, score) for s, score in mine)
            row["maj_correct"] = float(votes.most_common(1)[0][0] == "<correct>")
            row["samples"] = [s.text for s, _ in mine[:2]]  # a couple for reading, not all k
            row["sample_tokens"] = [s.tokens for s, _ in mine]
            pass1.append(row["pass1"])
            maj.append(row["maj_correct"])
            lengths.append(sum(row["sample_tokens"]) / k)
            if checking:
                reviews = [review(s.text) for s, _ in mine]
                row["sample_checked"] = [c for c, _ in reviews]
                # the responses whose check caught a wrong first answer and ended right, in sample order
                row["fixes"] = [s.text for (s, score), (_, caught) in zip(mine, reviews) if caught and score == 1.0]
                checks.append(sum(row["sample_checked"]) / k)
                checked += sum(row["sample_checked"])
                fixed += len(row["fixes"])
                row["sample_caught"] = [c for _, c in reviews]
                row["sample_first_right"] = [first_answer(s.text) == str(p.get("answer")) for s, _ in mine]
                for (did_check, caught), right in zip(reviews, row["sample_first_right"]):
                    if did_check:
                        waits[right][0] += 1
                        waits[right][1] += caught
        if greedy:
            row["greedy_correct"] = greedy_scores[index]
            row["greedy_completion"] = greedy_samples[i].text
            greedy_acc.append(greedy_scores[index])
        rows[i] = row
    for i in range(len(problems)):
        if i not in rows:
            rows[i] = {"task": task, "prompt": problems[i]["prompt"], "answer": problems[i].get("answer"),
                       "skipped": "the prompt does not fit the context"}

    def mean(xs):
        return sum(xs) / len(xs) if xs else None

    return TaskResult(task=task, n=len(kept), k=k, pass1=mean(pass1), greedy=mean(greedy_acc), maj=mean(maj),
                      thinking_budget=thinking_budget,
                      mean_length=mean([s.tokens for s in measured]) or 0.0,
                      truncated=mean([float(s.finish_reason == "length") for s in measured]) or 0.0,
                      skipped=len(problems) - len(kept), pass1_ci=mean_interval(pass1),
                      pass1_ci_samples=sample_interval(pass1, k),
                      greedy_ci=binary_interval(greedy_acc), maj_ci=binary_interval(maj),
                      temperature=temperature if k > 0 else None, top_p=top_p if k > 0 else None,
                      mean_length_ci=value_interval(lengths), check_rate=mean(checks) if checking else None,
                      check_rate_ci=mean_interval(checks) if checking else None,
                      fix_rate=fixed / checked if checking and checked else (0.0 if checking else None),
                      wait_right_guess=waits[True][1] / waits[True][0] if checking and waits[True][0] else None,
                      wait_wrong_guess=waits[False][1] / waits[False][0] if checking and waits[False][0] else None,
                      checks_right_guess=waits[True][0] if checking else None,
                      pass1_each=[rows[i].get("pass1") for i in range(len(problems))] if k > 0 else None,
                      problems=[rows[i] for i in range(len(problems))])


def write_results(results: list[TaskResult], path: str | Path) -> None:
    """Per-problem results, one JSON object per line (skipped problems say so)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in results:
            for row in r.problems:
                f.write(json.dumps(row) + "\n")
