"""Constrained decoding: a request's logits masked to what a grammar allows, once its thinking is over.

The grammar engine is llguidance (Microsoft's Rust library behind Guidance, also a vLLM and llama.cpp
backend; `pip install r1lab[structured]`): it compiles JSON schemas and Lark grammars, computes a token
mask in well under a millisecond on one CPU core, and needs nothing but the tokenizer's tokenizer.json.

A `Constraint` walks through three phases, one token at a time:

* thinking: the model writes freely until it closes the thinking ("</think>"); a thinking budget closes it
  for the model after that many tokens (the mask then allows "</think>" alone). Templates that pre-fill
  "<think>\\n" (r1lab's, R1-Distill's) start here; the others start in `opening`.
* opening: the first token may open a thinking block ("<think>", where the model writes it itself, as
  Qwen3 does) or start the constrained answer.
* grammar: only the tokens the grammar allows; when it is complete, only the end of sequence.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

import numpy as np
import torch


class GrammarError(ValueError):
    """A grammar or schema the engine cannot compile."""


def _llguidance():
    try:
        import llguidance
    except ImportError as e:  # pragma: no cover - the extra is in the test install
        raise GrammarError("constrained decoding needs llguidance: pip install 'r1lab[structured]'") from e
    return llguidance


@dataclass
class Grammars:
    """Compiles grammars for one tokenizer (the llguidance tokenizer is built once: ~10 ms to 1 s)."""

    tokenizer: object
    vocab_size: int
    _ll: object = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def ll_tokenizer(self):
        with self._lock:
            if self._ll is None:
                llg = _llguidance()
                eos = sorted(getattr(self.tokenizer, "eos_token_ids", None) or [self.tokenizer.eos_token_id])
                self._ll = llg.LLTokenizer(self.tokenizer.backend.to_str(), n_vocab=self.vocab_size, eos_token=eos)
            return self._ll

    def token(self, text: str) -> str:
        """A Lark terminal for `text`: the token itself where the vocabulary has it as one token (llguidance
        treats added tokens as special: they match only as themselves), else the literal string."""
        tid = self.tokenizer.token_to_id(text)
        return f"<[{tid}]>" if tid is not None else json.dumps(text)

    @staticmethod
    def json_schema(schema: dict) -> str:
        """A Lark rule body matching one JSON value valid under `schema`, spaced as json.dumps spaces it (what
        chat templates show the model; and no run of whitespace a weak model could loop in)."""
        spacing = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
        return "%json " + json.dumps({**schema, "x-guidance": {**spacing, **schema.get("x-guidance", {})}})

    def compile(self, lark: str):
        """An llguidance grammar for a Lark text (checked now, so a bad schema is the caller's 400)."""
        llg = _llguidance()
        grammar = llg.LLMatcher.grammar_from_lark(lark)
        error = llg.LLMatcher.validate_grammar(grammar, self.ll_tokenizer())
        if error and not error.startswith("WARNING"):
            raise GrammarError(error)
        return grammar

    def constraint(self, grammar, *, thinking: bool, think_id: int | None, end_think_id: int | None,
                   budget: int | None = None) -> "Constraint":
        llg = _llguidance()
        matcher = llg.LLMatcher(self.ll_tokenizer(), grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        return Constraint(matcher, self.vocab_size, thinking=thinking, think_id=think_id, end_think_id=end_think_id,
                          budget=budget)


class Constraint:
    """One request's constraint (see the module docstring). `allowed()` is the mask for the next token (a bool
    tensor over the vocabulary, or None for no constraint); `advance(token)` moves on past the sampled token."""

    def __init__(self, matcher, vocab_size: int, *, thinking: bool, think_id: int | None, end_think_id: int | None,
                 budget: int | None = None):
        self.matcher, self.vocab_size = matcher, vocab_size
        self.think_id, self.end_think_id, self.budget = think_id, end_think_id, budget
        self.phase = "thinking" if thinking else ("opening" if think_id is not None else "grammar")
        self.thought = 0  # tokens of thinking so far

    def _grammar_mask(self) -> torch.Tensor:
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        return torch.from_numpy(bits[:self.vocab_size].astype(bool))

    def _only(self, token: int) -> torch.Tensor:
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        mask[token] = True
        return mask

    def allowed(self) -> torch.Tensor | None:
        if self.phase == "thinking":
            if self.budget is not None and self.thought >= self.budget and self.end_think_id is not None:
                return self._only(self.end_think_id)  # the budget is spent: close the thinking
            return None
        mask = self._grammar_mask()
        if self.phase == "opening" and self.think_id is not None:
            mask[self.think_id] = True
        return mask

    def advance(self, token: int) -> None:
        if self.phase == "thinking":
            self.thought += 1
            if token == self.end_think_id:
                self.phase = "grammar"
            return
        if self.phase == "opening":
            if token == self.think_id:
                self.phase = "thinking"
                return
            self.phase = "grammar"
        if not self.matcher.is_stopped():
            self.matcher.consume_token(token)

    @property
    def failed(self) -> str | None:
        return self.matcher.get_error() if self.matcher.is_error() else None


class ThinkingBudget(Constraint):
    """A thinking budget alone (no grammar): closes the thinking after `budget` tokens, then lets the model be."""

    def __init__(self, vocab_size: int, *, thinking: bool, think_id: int | None, end_think_id: int, budget: int):
        super().__init__(None, vocab_size, thinking=thinking, think_id=think_id, end_think_id=end_think_id,
                         budget=budget)
        self.phase = "thinking" if thinking else ("opening" if think_id is not None else "free")

    def allowed(self) -> torch.Tensor | None:
        return super().allowed() if self.phase == "thinking" else None

    def advance(self, token: int) -> None:
        if self.phase == "thinking":
            super().advance(token)
            if self.phase == "grammar":
                self.phase = "free"
        elif self.phase == "opening":
            self.phase = "thinking" if token == self.think_id else "free"

    @property
    def failed(self) -> str | None:
        return None


def apply_masks(logits: torch.Tensor, constraints: list[Constraint | None]) -> torch.Tensor:
    """logits (B, V) with each constrained row's disallowed tokens at -inf (a copy when any row is masked)."""
    masked = None
    for i, c in enumerate(constraints):
        if c is None:
            continue
        allowed = c.allowed()
        if allowed is None or not bool(allowed.any()):  # free, or a grammar in error: left unmasked, never NaN
            continue
        if masked is None:
            masked = logits.clone()
        row = masked[i]
        n = min(row.shape[0], allowed.shape[0])
        row[:n].masked_fill_(~allowed[:n].to(row.device), float("-inf"))
        row[n:] = float("-inf")
    return logits if masked is None else masked
