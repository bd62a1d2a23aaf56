"""Load problem sets from local JSONL or Parquet files into rows {"prompt", "answer", ...}.

    for row in load_dataset("data/gsm8k_test.jsonl"):   # lazy: one record at a time
        row["prompt"], row["answer"]

Formats (detected from the first record's keys unless `format` names one):
    gsm8k   {"question", "answer": "...reasoning...\\n#### 1,234"}   -> answer "1234", solution = reasoning
    math    {"problem", "solution", "answer"?}  (MATH, MATH-500)     -> answer, else the solution's last \\boxed{}
    openr1  {"problem", "solution"/"answer", "messages"?} or {"messages": [...]} (Open-R1 chat)
            -> prompt = the first user message when there is no problem; answer, else the last
               \\boxed{} of the solution or of the last assistant message
    r1lab   {"prompt", "answer"} (rows written by r1lab itself, e.g. task samples)
Rows carry "solution" and "messages" when the record has them, and pass through the
columns rewards read (task, numbers, target, tests).  A malformed record raises
DatasetError naming the file and the line (JSONL) or row (Parquet).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any, Iterator

from r1lab.rewards.core import last_boxed  # the same extraction the accuracy reward uses

FORMATS = ("gsm8k", "math", "openr1", "r1lab")
PASSTHROUGH = ("task", "numbers", "target", "tests")


class DatasetError(ValueError):
    """A record that cannot be read; the message says where."""


def detect_format(record: dict[str, Any]) -> str:
    keys = set(record)
    if "question" in keys:
        return "gsm8k"
    if "problem" in keys:
        return "openr1" if keys & {"messages", "generations"} else "math"
    if "messages" in keys:
        return "openr1"
    if "prompt" in keys:
        return "r1lab"
    raise ValueError(f"cannot tell the format from keys {sorted(keys)}; expected one of {FORMATS}")


def _text(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"missing field {key!r}")
    return str(value)


def _gsm8k(record: dict[str, Any]) -> dict[str, Any]:
    solution, marker, final = _text(record, "answer").rpartition("####")
    if not marker:
        raise ValueError("gsm8k answer has no '#### <number>' line")
    answer = re.sub(r"[,\s$]", "", final)
    if not answer:
        raise ValueError("gsm8k answer is empty after '####'")
    return {"prompt": _text(record, "question"), "answer": answer, "solution": solution.strip()}


def _math(record: dict[str, Any]) -> dict[str, Any]:
    row = {"prompt": _text(record, "problem")}
    if record.get("solution") is not None:
        row["solution"] = str(record["solution"])
    answer = record.get("answer")
    if answer is None or str(answer).strip() == "":
        answer = last_boxed(row.get("solution", ""))
    if answer is None:
        raise ValueError("no 'answer' field and no \\boxed{} in 'solution'")
    row["answer"] = str(answer).strip()
    return row


def _openr1(record: dict[str, Any]) -> dict[str, Any]:
    messages = record.get("messages")
    if messages is not None:
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "content" in m for m in messages):
            raise ValueError("'messages' must be a list of {role, content} dicts")
        messages = [{"role": str(m.get("role", "")), "content": str(m["content"])} for m in messages]
    if record.get("problem") is not None:
        prompt = _text(record, "problem")
    else:
        users = [m["content"] for m in messages or [] if m["role"] == "user"]
        if not users:
            raise ValueError("no 'problem' field and no user message")
        prompt = users[0]
    row: dict[str, Any] = {"prompt": prompt}
    if record.get("solution") is not None:
        row["solution"] = str(record["solution"])
    answer = record.get("answer")
    replies = [m["content"] for m in messages or [] if m["role"] == "assistant"]
    for source in (row.get("solution"), replies[-1] if replies else None):
        if (answer is None or str(answer).strip() == "") and source:
            answer = last_boxed(source)
    if answer is None or str(answer).strip() == "":
        raise ValueError("no 'answer', and no \\boxed{} in the solution or the assistant's reply")
    row["answer"] = str(answer).strip()
    if messages is not None:
        row["messages"] = messages
    return row


def _r1lab(record: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": _text(record, "prompt"), "answer": _text(record, "answer").strip()}


NORMALIZERS = {"gsm8k": _gsm8k, "math": _math, "openr1": _openr1, "r1lab": _r1lab}


def _jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            where = f"{path}: line {number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetError(f"{where}: bad JSON ({error.msg} at column {error.colno})") from None


def _parquet_records(path: Path, batch_size: int = 1024) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:
        raise DatasetError(f"{path}: not a readable Parquet file ({error})") from None
    index = 0
    for batch in parquet.iter_batches(batch_size=batch_size):
        for record in batch.to_pylist():
            yield f"{path}: row {index}", record
            index += 1


def load_dataset(path: str | Path, format: str = "auto") -> Iterator[dict[str, Any]]:
    """Lazy iterator of normalized rows from a .jsonl/.json (one record per line) or .parquet file."""
    path = Path(path)
    if format != "auto" and format not in NORMALIZERS:
        raise ValueError(f"unknown dataset format {format!r}; valid: auto, {', '.join(FORMATS)}")
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    if path.suffix.lower() in (".parquet", ".pq"):
        records = _parquet_records(path)
    elif path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        records = _jsonl_records(path)
    else:
        raise DatasetError(f"{path}: unknown file type {path.suffix!r}; expected .jsonl or .parquet")
    return _normalize(records, format)


def _normalize(records: Iterator[tuple[str, Any]], format: str) -> Iterator[dict[str, Any]]:
    for where, record in records:
        if not isinstance(record, dict):
            raise DatasetError(f"{where}: expected a JSON object, got {type(record).__name__}")
        try:
            if format == "auto":
                format = detect_format(record)
            row = NORMALIZERS[format](record)
        except ValueError as error:
            raise DatasetError(f"{where}: {error} (format {format})") from None
        row.update({key: record[key] for key in PASSTHROUGH if record.get(key) is not None})
        yield row


DATASET_SUFFIXES = (".jsonl", ".json", ".ndjson", ".parquet", ".pq")


def dataset_stream(path: str | Path, seed: int) -> Iterator[dict[str, Any]]:
    """A dataset file's problems endlessly, each pass in a fresh seeded order, their task named after the
    file's stem: how `grpo.tasks=data/gsm8k_train.jsonl` trains on a dataset instead of a built-in task."""
    rows = [dict(row, task=row.get("task") or Path(path).stem) for row in load_dataset(path)]
    if not rows:
        raise DatasetError(f"{path}: no problems in this file")
    rng = random.Random(seed)
    while True:
        order = list(rows)
        rng.shuffle(order)
        yield from order
