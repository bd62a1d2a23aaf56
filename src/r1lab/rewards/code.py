"""Code reward: the fraction of a row's tests that the completion's Python code passes.

Formats:
- the completion holds its program in a fenced block, ```python ... ``` (the last one
  counts; a bare ``` block is accepted when there is no python one);
- the `tests` column holds, per row, a list of Python assert statements, e.g.
  ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"] (a JSON string of such a list is
  accepted too, as datasets often store them that way).

One sandboxed process per completion (r1lab.rewards.sandbox.run_python) runs the code,
then each test in turn, and reports each test's pass/fail on its own line tagged with a
random nonce; the code's own prints go to /dev/null.  A test that hangs or a program that
crashes ends the run: tests reported before count, the rest fail.  Completions run in
parallel on a thread pool (each thread waits on its own child process).

The sandbox protects the machine, not the score: code that deliberately digs the nonce
out of the harness could forge passes.  That is reward hacking to watch for in training
curves, not a safety problem.
"""

from __future__ import annotations

import json
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .core import RewardFn, completion_text, row
from .sandbox import run_python

_BLOCK = re.compile(r"```(python|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)

_HARNESS = r'''
def _r1lab_tests(payload):
    import json, os, sys
    data = json.loads(payload)
    report = os.fdopen(os.dup(1), "w")  # our own handle: the solution may replace sys.stdout
    sys.stdout = open(os.devnull, "w")
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        exec(compile(data["code"], "solution.py", "exec"), namespace)
    except BaseException:
        return
    for index, test in enumerate(data["tests"]):
        try:
            exec(compile(test, f"test_{index}.py", "exec"), namespace)
            passed = 1
        except BaseException:
            passed = 0
        report.write(f"{data['nonce']} {index} {passed}\n")
        report.flush()


_r1lab_tests(PAYLOAD)
'''


def extract_code(text: str) -> str | None:
    """The last ```python block (or the last bare ``` block), or None."""
    blocks = _BLOCK.findall(text)
    python = [body for language, body in blocks if language]
    chosen = python or [body for _, body in blocks]
    return chosen[-1] if chosen else None


def parse_tests(tests: Any) -> list[str]:
    if isinstance(tests, str):
        tests = json.loads(tests)
    if not isinstance(tests, (list, tuple)) or not all(isinstance(t, str) for t in tests):
        raise ValueError("tests must be a list of assert statements")
    return list(tests)


def run_tests(code: str, tests: list[str], *, timeout_s: float = 5, memory_mb: int = 256) -> float:
    """Fraction of `tests` that pass against `code`, run in the sandbox."""
    if not tests:
        return 0.0
    nonce = secrets.token_hex(16)
    payload = json.dumps({"nonce": nonce, "code": code, "tests": tests})
    result = run_python(_HARNESS.replace("PAYLOAD", repr(payload), 1), timeout_s=timeout_s, memory_mb=memory_mb)
    passed = set()
    for line in result.stdout.splitlines():
        parts = line.split(" ")
        if len(parts) == 3 and parts[0] == nonce and parts[2] == "1":
            passed.add(parts[1])
    return len(passed) / len(tests)


def code_reward(timeout_s: float = 5, memory_mb: int = 256, max_workers: int = 8) -> RewardFn:
    """code(completions, tests=[[assert, ...], ...]) -> fraction of tests passed, in [0, 1]."""

    def score(completion: Any, columns: dict[str, Any]) -> float:
        try:
            code = extract_code(completion_text(completion))
            if code is None:
                return 0.0
            value = run_tests(code, parse_tests(columns.get("tests")), timeout_s=timeout_s, memory_mb=memory_mb)
            return min(1.0, max(0.0, value))
        except Exception:
            return 0.0

    def code(completions: Any, **columns: Any) -> list[float]:
        try:
            completions = list(completions)
            rows = [row(columns, index, len(completions)) for index in range(len(completions))]
            if not completions:
                return []
            with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(completions)))) as pool:
                return list(pool.map(score, completions, rows))
        except Exception:
            return [0.0] * len(completions) if isinstance(completions, list) else []

    code.reward_range = (0.0, 1.0)
    return code
