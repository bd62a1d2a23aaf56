"""Verifiable tasks: seeded problem generators with a programmatic teacher, and dataset loaders.

    from r1lab import tasks
    rows = tasks.get("addition")(seed=0, digits=3)           # endless iterator of row dicts
    next(rows)["prompt"]                                      # "What is 482 + 917?"
    tasks.sample("countdown", 5, seed=1, numbers=4)           # a list of 5 rows
    tasks.get("addition")(seed=0, split="test")               # held-out problems, disjoint from "train"

Every generator takes, besides its difficulty knobs (see `knobs(name)`):
    seed           problems and teacher noise are deterministic by seed
    split          "train" (default), "test" or "all": problems are split by a hash of the
                   problem itself, so one problem never lands in both (keep test_fraction equal)
    test_fraction  share of problems held out for "test" (default 0.1)
    noise          fraction of traces the teacher gets wrong (default 0)
    noise_kind     "slip" (one off-by-one mistake, followed consistently) or "misconception"
                   (one wrong rule applied wherever it applies; addition, subtraction,
                   multiplication and linear define one, countdown and word raise)
    check          share of traces that re-derive their answer after the first pass and fix a
                   slip they catch (default 0; addition defines a check, the others raise)
    quick          the first pass states its answer without the working (its last step only)
    miss           share of the checks after a wrong first answer that overlook it ("It matches.",
                   the wrong answer kept; default 0)
Rows are described in r1lab.tasks.common.
"""

from __future__ import annotations

import inspect
import itertools
import random
from typing import Any, Callable, Iterator

from .arithmetic import ADDITION, SUBTRACTION
from .common import Task, check_stream_args, stream
from .countdown import COUNTDOWN
from .linear import LINEAR
from .multiplication import MULTIPLICATION
from .word import WORD

TASKS: dict[str, Task] = {t.name: t for t in (ADDITION, SUBTRACTION, MULTIPLICATION, COUNTDOWN, LINEAR, WORD)}


def names() -> list[str]:
    return list(TASKS)


def _task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[name]


def knobs(name: str) -> dict[str, Any]:
    """The task's difficulty knobs and their defaults."""
    parameters = list(inspect.signature(_task(name).make).parameters.values())[1:]  # after rng
    return {p.name: p.default for p in parameters}


def get(name: str) -> Callable[..., Iterator[dict[str, Any]]]:
    """The generator for `name`: call it as gen(seed=0, split="train", noise=0.0, ..., **difficulty)."""
    task = _task(name)

    def generate(
        seed: int = 0,
        *,
        split: str = "train",
        noise: float = 0.0,
        noise_kind: str = "slip",
        test_fraction: float = 0.1,
        check: float = 0.0,
        quick: bool = False,
        miss: float = 0.0,
        **difficulty: Any,
    ) -> Iterator[dict[str, Any]]:
        valid = knobs(name)
        unknown = sorted(set(difficulty) - set(valid))
        if unknown:
            raise ValueError(f"unknown knob(s) {unknown} for task {name!r}; valid: {', '.join(valid) or 'none'}")
        check_stream_args(task, split, noise, noise_kind, test_fraction, check, miss)
        task.make(random.Random(0), **difficulty)  # bad knob values fail here, not at the first next()
        return stream(task, seed=seed, split=split, noise=noise, noise_kind=noise_kind,
                      test_fraction=test_fraction, difficulty=difficulty, check=check, quick=quick,
                      miss=miss)

    generate.__name__ = name
    generate.__doc__ = f"{name} rows; difficulty knobs: {knobs(name)}"
    return generate


def sample(name: str, n: int, seed: int = 0, **kwargs: Any) -> list[dict[str, Any]]:
    return list(itertools.islice(get(name)(seed=seed, **kwargs), n))


def format_samples(rows: list[dict[str, Any]]) -> str:
    """Rows as readable text: prompt, gold answer, the teacher's trace indented."""
    blocks = []
    for index, row in enumerate(rows):
        flags = [flag for flag in ("affected", "touched", "checked", "caught") if row.get(flag)]
        header = f"── {row.get('task', 'row')} #{index}" + (f" ({', '.join(flags)})" if flags else "") + " "
        trace = "\n".join("    " + line for line in row["reference_trace"].splitlines())
        blocks.append(f"{header:─<60}\nprompt: {row['prompt']}\nanswer: {row['answer']}\ntrace:\n{trace}")
    return "\n\n".join(blocks)


def _coerce(value: Any, default: Any) -> Any:
    """Command-line strings to the type of the knob's default ("5" -> 5, "true" -> True)."""
    if not isinstance(value, str) or isinstance(default, str):
        return value
    if isinstance(default, bool):
        return value.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    if default is None and value.lstrip("-").isdigit():
        return int(value)
    return value


def main_sample(name: str, n: int, seed: int, overrides: dict[str, Any]) -> None:
    """`r1lab tasks sample NAME -n 5 [key=value ...]`: print n rows readably."""
    defaults = {**knobs(name), "split": "train", "noise": 0.0, "noise_kind": "slip", "test_fraction": 0.1, "check": 0.0,
                "quick": False, "miss": 0.0}
    kwargs = {key: _coerce(value, defaults.get(key)) for key, value in overrides.items()}
    print(format_samples(sample(name, n, seed=seed, **kwargs)))


__all__ = ["names", "get", "knobs", "sample", "format_samples", "main_sample", "TASKS"]
