"""Data files are checked in full before a training command writes anything: a bad line is an error naming
the file and line (bad JSON, a line that is not an object, bytes that are not UTF-8, a row without the
fields the command needs), not a traceback when training reaches that row, hours in."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .data import jsonl_rows, pretrain_text, read_rows, read_utf8, split_chat


def _rows_with_place(path: Path) -> Iterator[tuple[str, dict]]:
    if path.suffix not in (".jsonl", ".json"):
        for i, row in enumerate(read_rows(path), 1):
            yield f"{path}: row {i}", row
        return
    for n, row in jsonl_rows(path, read_utf8(path)):
        yield f"{path}:{n}", row


def _check_chat(row: dict) -> None:
    messages, response = split_chat(row)
    if not isinstance(messages, list):
        raise ValueError("the prompt must be a string or a list of messages")
    for m in [*messages, *(row.get("messages") or [])[-1:]]:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content", ""), str):
            raise ValueError(f"a message must be an object with string `role` and `content`, got {str(m)[:80]}")


def _check_text(row: dict) -> None:
    if not isinstance(pretrain_text(row), str):
        raise ValueError("the row has no text")


def check_data_files(paths: list[str], kind: str) -> None:
    """Every row of every file must be usable as `kind` ("text": pretraining documents, "chat": SFT examples)."""
    check = _check_chat if kind == "chat" else _check_text
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"data file not found: {path}")
        count = 0
        for where, row in _rows_with_place(path):
            try:
                check(row)
            except (ValueError, TypeError, AttributeError, KeyError) as e:
                raise ValueError(f"{where}: {e}") from None
            count += 1
        if not count:
            raise ValueError(f"{path}: no rows")
