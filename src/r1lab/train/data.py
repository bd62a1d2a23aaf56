"""Training data: rows from the built-in tasks or local files, token streams packed into fixed-length
blocks (pretraining), and chat examples with assistant-only labels (SFT).

Everything here is a pure function of (seed, position): row i of a source, and hence the batch after a
given position, is the same however the run got there. Resuming needs only the position saved in the
checkpoint, and every rank can build the same global batch and take its own slice.
"""
from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import tasks
from ..chat_tokenizer import recipe_messages
from ..tokenizer import EOS, THINK_PREFIX, Tokenizer, max_token_chars, render_chat, response_prefix_of

IGNORE = -100


@dataclass
class DataConfig:
    """Where the training rows come from. Built-in tasks by default; `files` (JSONL / Parquet / txt) win."""

    files: list = field(default_factory=list)  # local data files; empty = the task mixture below
    tasks: str = "addition,subtraction,multiplication,countdown,linear,word"  # comma-separated task names
    weights: str = ""  # comma-separated sampling weights in the order of `tasks`; empty = equal
    noise: float = 0.0  # fraction of reference traces with a teacher mistake
    noise_kind: str = "slip"  # slip | misconception
    # share of traces that verify their answer after the first pass (tasks that define a check: addition;
    # the others in the mixture are left as they are). The speedrun's aha stages use it (tasks/common.py)
    check: float = 0.0
    quick: bool = False  # the first pass states its answer without the working (the check then works it out)
    # share of the checks after a wrong first answer that overlook it ("It matches.", the wrong answer boxed)
    check_miss: float = 0.0
    knobs: dict = field(default_factory=dict)  # per-task difficulty, e.g. {addition: {digits: 3}}
    # SFT: several examples per row with block-diagonal attention, instead of one padded row each. On a
    # 2-core CPU padding trains as fast on mixed-length tasks and 18% faster on one task (bench in the report)
    packing: bool = False


# ---------------------------------------------------------------- row sources

class TaskMixture:
    """Row i of an endless, seeded mixture of built-in tasks (split "train" unless told otherwise).

    Rows come in chunks; chunk c is generated from its own seed, so any row is reachable without
    replaying the rows before it."""

    chunk_size = 256

    def __init__(self, cfg: DataConfig, seed: int, split: str = "train"):
        self.names = [n.strip() for n in cfg.tasks.split(",") if n.strip()]
        if not self.names:
            raise ValueError("data.tasks is empty: name at least one task")
        unknown = [n for n in self.names if n not in tasks.names()]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown} in data.tasks; valid tasks: {', '.join(tasks.names())}")
        weights = [float(w) for w in cfg.weights.split(",")] if cfg.weights.strip() else [1.0] * len(self.names)
        if len(weights) != len(self.names) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"data.weights needs {len(self.names)} non-negative numbers (one per task), got {cfg.weights!r}")
        unknown = sorted(set(cfg.knobs) - set(self.names))
        if unknown:
            raise ValueError(f"data.knobs names task(s) {unknown} that are not in data.tasks")
        self.weights, self.seed, self.split, self.cfg = weights, seed, split, cfg
        self.checks = {n for n in self.names if tasks.TASKS[n].check is not None} if cfg.check else set()
        if cfg.check and not self.checks:
            raise ValueError(f"data.check={cfg.check} but no task in data.tasks ({cfg.tasks}) defines a check step; "
                             "addition does")
        # fail now on bad knobs or noise settings, not at the first batch
        for name in self.names:
            self._generator(name, 0)
        self._chunk = lru_cache(maxsize=4)(self._make_chunk)

    def _generator(self, name: str, seed: int):
        # quick holds with or without checks: the aha control (quick, no check) must not get the full working
        check = {"check": self.cfg.check, "miss": self.cfg.check_miss} if name in self.checks else {}
        return tasks.get(name)(seed=seed, split=self.split, noise=self.cfg.noise, noise_kind=self.cfg.noise_kind,
                               quick=self.cfg.quick, **check, **self.cfg.knobs.get(name, {}))

    def _make_chunk(self, c: int) -> list[dict]:
        rng = random.Random(f"mixture:{self.seed}:{c}")
        picks = rng.choices(range(len(self.names)), weights=self.weights, k=self.chunk_size)
        streams = {i: self._generator(self.names[i], self.seed * 1_000_003 + c) for i in set(picks)}
        return [next(streams[i]) for i in picks]

    def __getitem__(self, i: int) -> dict:
        return self._chunk(i // self.chunk_size)[i % self.chunk_size]


class FileRows:
    """Rows of local files, reshuffled every epoch; row i is a pure function of (seed, i)."""

    def __init__(self, paths: list[str], seed: int):
        self.rows = [row for p in paths for row in read_rows(p)]
        if not self.rows:
            raise ValueError(f"no rows in {', '.join(map(str, paths))}")
        self.seed = seed
        self._order = lru_cache(maxsize=2)(lambda epoch: np.random.default_rng([seed, epoch]).permutation(len(self.rows)))

    def __getitem__(self, i: int) -> dict:
        epoch, j = divmod(i, len(self.rows))
        return self.rows[self._order(epoch)[j]]


def read_rows(path: str | Path) -> list[dict]:
    """JSONL rows, Parquet rows, or the paragraphs (blank-line separated) of a text file as {"text": ...}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = read_utf8(path)
    if path.suffix in (".jsonl", ".json"):
        return [row for _, row in jsonl_rows(path, text)]
    return [{"text": p.strip()} for p in re.split(r"\n\s*\n", text) if p.strip()]


def jsonl_rows(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line of `text` (read from `path`); a line that is not a JSON
    object is an error naming path:line."""
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{n}: not a JSON object: {e}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object ({{...}}), got {type(row).__name__}")
            yield n, row


def read_utf8(path: Path) -> str:
    """The file's text; undecodable bytes are an error naming the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def make_source(cfg: DataConfig, seed: int):
    return FileRows(cfg.files, seed) if cfg.files else TaskMixture(cfg, seed)


# ---------------------------------------------------------------- rows -> text / chat examples

def split_chat(row: dict) -> tuple[list[dict], str]:
    """A row as (prompt messages, the assistant's full response "<think>\\n...</think>\\n...")."""
    if isinstance(row.get("messages"), list):
        messages = row["messages"]
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError("a `messages` row must end with an assistant message")
        final = messages[-1]
        response = str(final.get("content") or "")
        reasoning = final.get("reasoning_content") or final.get("reasoning")
        if reasoning and "</think>" not in response:  # the thinking given apart, as the OpenAI-style APIs return it
            response = f"<think>\n{reasoning}\n</think>\n\n{response}"
        return messages[:-1], response
    prompt = next((row[k] for k in ("prompt", "question", "problem", "instruction") if row.get(k) is not None), None)
    response = next((row[k] for k in ("reference_trace", "completion", "response", "solution", "answer")
                     if row.get(k) is not None), None)
    if prompt is None or response is None:
        raise ValueError(f"cannot read a chat example from a row with keys {sorted(row)}: expected `messages`, "
                         "or `prompt` + `completion` (or question/answer style keys)")
    # TRL's conversational form: prompt and completion are message lists
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
    if isinstance(response, list):
        response = response[-1].get("content", "") if response else ""
    return messages, str(response)


def completion_text(response: str, prefix: str = THINK_PREFIX) -> str:
    """The part of the assistant response after what the chat template pre-fills (`prefix`, "<think>\\n" for
    R1-style templates; "" where the model opens the thinking itself, as Qwen3 does); a response without
    any thinking gets an empty thought, so the model still learns to close the block."""
    if prefix != THINK_PREFIX:
        text = response if "</think>" in response else "<think>\n</think>\n" + response
        text = text if text.startswith("<think>") else "<think>\n" + text
        return text[len(prefix):] if text.startswith(prefix) else text
    if response.startswith(THINK_PREFIX):
        return response[len(THINK_PREFIX):]
    if response.startswith("<think>"):
        return response[len("<think>"):]
    return response if "</think>" in response else "</think>\n" + response


def pretrain_text(row: dict) -> str:
    """A document for next-token training: raw text, or a chat example rendered in full."""
    if isinstance(row.get("text"), str):
        return row["text"]
    messages, response = split_chat(row)
    return render_chat(messages, add_generation_prompt=True) + completion_text(response) + EOS


@dataclass
class Example:
    prompt: list[int]  # chat template up to and including "<｜Assistant｜><think>\n"
    completion: list[int]  # the rest of the assistant turn, ending with EOS: the only tokens with a loss

    def __len__(self) -> int:
        return len(self.prompt) + len(self.completion)

    def ids_and_labels(self, max_len: int) -> tuple[list[int], list[int]]:
        ids = (self.prompt + self.completion)[:max_len]
        labels = ([IGNORE] * len(self.prompt) + self.completion)[:max_len]
        return ids, labels


def chat_example(row: dict, tokenizer, max_chars: int | None = None) -> Example:
    """The row tokenized; max_chars: texts longer than that are cut first (what a block of seq_len tokens can
    hold at most), so a 10 MB answer costs no more than a short one."""
    messages, response = split_chat(row)
    final = row["messages"][-1] if isinstance(row.get("messages"), list) else {}
    if final.get("tool_calls"):  # the answer calls tools: they are written as the template's format writes them
        from ..serve.tools import render_calls, tool_format

        response += render_calls(tool_format(tokenizer), final["tool_calls"], isinstance(tokenizer, Tokenizer))
    if max_chars is not None:
        response = response[:max_chars]
        messages = [dict(m, content=m["content"][:max_chars]) if isinstance(m.get("content"), str) else m
                    for m in messages]
    # prompt and completion are tokenized apart, exactly as the engine sees them when it generates
    # a row's tools go to the template; tool results are in the prompt, so they carry no loss
    tools = {"tools": row["tools"]} if row.get("tools") else {}
    prompt = tokenizer.apply_chat_template(recipe_messages(tokenizer, messages), add_generation_prompt=True, **tools)
    completion = completion_text(response, response_prefix_of(tokenizer))
    return Example(prompt, tokenizer.encode(completion) + [tokenizer.eos_token_id])


# ---------------------------------------------------------------- batches

@dataclass
class Batch:
    """input_ids, labels (B, T) aligned (the model shifts); optional per-token positions (B, T) and a
    bool attention mask (B, 1, T, T), True = may attend, for packed rows."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor | None = None
    attn_mask: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # more per-row tensors for a custom loss (GRPO)

    @property
    def n_targets(self) -> int:
        """How many tokens this batch is trained to predict (what the loss averages over)."""
        return int((self.labels[:, 1:] != IGNORE).sum())

    def rows(self, start: int, stop: int) -> "Batch":
        pick = lambda t: None if t is None else t[start:stop]  # noqa: E731
        return Batch(self.input_ids[start:stop], self.labels[start:stop], pick(self.position_ids), pick(self.attn_mask),
                     {k: v[start:stop] for k, v in self.extra.items()})

    def to(self, device) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.input_ids), move(self.labels), move(self.position_ids), move(self.attn_mask),
                     {k: move(v) for k, v in self.extra.items()})


class PackedStream:
    """Pretraining batches: documents (BOS ... EOS) concatenated and cut into seq_len blocks, attention
    across document boundaries allowed, as in GPT pretraining. Position: (document, token offset)."""

    def __init__(self, source, tokenizer, seq_len: int, batch_size: int, text_fn: Callable[[dict], str] = pretrain_text):
        self.source, self.tokenizer, self.seq_len, self.batch_size, self.text_fn = source, tokenizer, seq_len, batch_size, text_fn
        self.doc, self.offset = 0, 0
        self._docs: dict[int, list[int]] = {}

    chunk_size = 256  # documents tokenized together (at most; fewer when they are long)
    chunk_chars = 1 << 20  # ... and at most about this many characters of text per call

    def _tokenize_from(self, i: int) -> None:
        """Tokenize documents i, i+1, ... up to the end of their chunk of `chunk_size`, or until `chunk_chars`
        characters: a file of one huge document is tokenized once per pass, not `chunk_size` times."""
        tok = self.tokenizer
        texts: list[str] = []
        end, chars = (i // self.chunk_size + 1) * self.chunk_size, 0
        while i + len(texts) < end and (not texts or chars < self.chunk_chars):
            texts.append(self.text_fn(self.source[i + len(texts)]))
            chars += len(texts[-1])
        # a long document is tokenized in slices cut before a space (the same tokens; bounded tokenizer memory)
        pieces = [(k, piece) for k, text in enumerate(texts) for piece in text_slices(text)]
        ids: list[list[int]] = [[] for _ in texts]
        for (k, _), piece_ids in zip(pieces, tok.encode_batch([piece for _, piece in pieces])):
            ids[k] += piece_ids
        # chat documents already open with BOS and close with EOS; plain text gets them here
        self._docs = {i + k: x if x[:1] == [tok.bos_token_id] else [tok.bos_token_id] + x + [tok.eos_token_id]
                      for k, x in enumerate(ids)}

    def _document(self, i: int) -> list[int]:
        if i not in self._docs:
            self._tokenize_from(i)
        return self._docs[i]

    def next_batch(self) -> Batch:
        blocks = []
        for _ in range(self.batch_size):
            block: list[int] = []
            while len(block) < self.seq_len:
                doc = self._document(self.doc)
                take = doc[self.offset:self.offset + self.seq_len - len(block)]
                block += take
                self.offset += len(take)
                if self.offset >= len(doc):
                    self.doc, self.offset = self.doc + 1, 0
            blocks.append(block)
        ids = torch.tensor(blocks)
        return Batch(ids, ids.clone())

    def state_dict(self) -> dict[str, Any]:
        return {"doc": self.doc, "offset": self.offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.doc, self.offset = int(state["doc"]), int(state["offset"])


def text_slices(text: str, size: int = 1 << 16) -> list[str]:
    """`text` in pieces of at most about `size` characters, each cut just before a space (where the
    tokenizer's pre-tokenizer splits anyway), so tokenizing the pieces gives the tokens of the whole."""
    if len(text) <= size:
        return [text]
    pieces, start = [], 0
    while len(text) - start > size:
        cut = text.rfind(" ", start + size // 2, start + size)
        cut = cut if cut > start else start + size
        pieces.append(text[start:cut])
        start = cut
    return [*pieces, text[start:]]


class ChatStream:
    """SFT batches of chat examples, loss on the completion only. Position: the next example's index.

    packing=True: examples are laid end to end in seq_len rows, each attending only to itself
    (block-diagonal causal mask, positions restarting at 0); packing=False: one example per row, padded
    to the longest in the batch. Examples longer than seq_len are truncated."""

    def __init__(self, source, tokenizer, seq_len: int, batch_size: int, packing: bool = True):
        self.source, self.tokenizer, self.seq_len, self.batch_size, self.packing = source, tokenizer, seq_len, batch_size, packing
        self.index = 0
        limit = seq_len * max_token_chars(tokenizer) + 64  # text past this cannot reach the seq_len tokens kept
        self._example = lru_cache(maxsize=4096)(lambda i: chat_example(self.source[i], tokenizer, limit))

    def next_batch(self) -> Batch:
        rows: list[list[Example]] = []
        if self.packing:
            row: list[Example] = []
            while True:
                ex = self._example(self.index)
                if row and sum(map(len, row)) + len(ex) > self.seq_len:
                    rows.append(row)
                    row = []
                    if len(rows) == self.batch_size:
                        break  # this example opens the next batch
                row.append(ex)
                self.index += 1
        else:
            for _ in range(self.batch_size):
                rows.append([self._example(self.index)])
                self.index += 1
        batch = collate(rows, self.seq_len, self.tokenizer.pad_token_id, masked=self.packing)
        if batch.n_targets == 0:  # every prompt fills seq_len: the run would train on nothing (loss 0) without a word
            shortest = min(len(ex.prompt) for row in rows for ex in row)
            raise ValueError(f"no completion token of this SFT batch fits in seq_len={self.seq_len}: its shortest "
                             f"prompt (chat template included) is {shortest} tokens; raise seq_len")
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"])


def collate(rows: list[list[Example]], seq_len: int, pad_id: int, masked: bool) -> Batch:
    """Lay each row's examples end to end and pad. masked: build the block-diagonal mask and per-example
    positions (packed rows); otherwise rows are padded to the longest one and use the plain causal mask."""
    width = seq_len if masked else min(seq_len, max(len(r[0]) for r in rows))
    B = len(rows)
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    labels = torch.full((B, width), IGNORE, dtype=torch.long)
    positions = torch.zeros((B, width), dtype=torch.long)
    segment = torch.zeros((B, width), dtype=torch.long)  # 0 = padding, k = the k-th example of the row
    for b, row in enumerate(rows):
        at = 0
        for k, ex in enumerate(row, start=1):
            x, y = ex.ids_and_labels(width - at)
            n = len(x)
            ids[b, at:at + n], labels[b, at:at + n] = torch.tensor(x), torch.tensor(y)
            positions[b, at:at + n], segment[b, at:at + n] = torch.arange(n), k
            at += n
    if not masked:
        return Batch(ids, labels)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    # padding shares segment 0 and attends causally among itself, so no row of the mask is empty
    mask = (segment[:, :, None] == segment[:, None, :]) & causal
    return Batch(ids, labels, positions, mask[:, None])


# ---------------------------------------------------------------- from config

def make_stream(kind: str, source, tokenizer, train, data: DataConfig):
    """The training stream of a stage: `packed` documents (pretraining) or `chat` examples (SFT)."""
    if kind == "packed":
        return PackedStream(source, tokenizer, train.seq_len, train.batch_size)
    if kind == "chat":
        return ChatStream(source, tokenizer, train.seq_len, train.batch_size, packing=data.packing)
    raise ValueError(f"unknown stream kind {kind!r} (packed or chat)")


# ---------------------------------------------------------------- texts for a tokenizer

def builtin_corpus(per_task: int = 300, seed: int = 0):
    """Texts from every built-in task (prompt and reference trace in chat form), for tokenizer training."""
    for name in tasks.names():
        for row in tasks.sample(name, per_task, seed=seed):
            yield render_chat([{"role": "user", "content": row["prompt"]}]) + row["reference_trace"]


def file_documents(paths: list[str], limit: int = 20_000):
    """The documents pretraining would see in these files (read_rows: JSONL/Parquet rows, the paragraphs
    of a .txt file; each as pretrain_text renders it), in file order, at most `limit`."""
    count = 0
    for path in paths:
        for row in read_rows(path):
            if count >= limit:
                return
            count += 1
            yield pretrain_text(row)


def tokenizer_texts(data: DataConfig, source) -> Any:
    """What a fresh tokenizer trains on: the run's file documents (in the source's seeded order), or every
    built-in task whatever this run's mixture is (so later stages' tasks tokenize well)."""
    if data.files:
        return (pretrain_text(source[i]) for i in range(min(20_000, len(source.rows))))
    return builtin_corpus()

