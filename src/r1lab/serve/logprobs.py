"""Log-probs in the API's shapes: the chat endpoint's (`choice.logprobs.content`, one entry per token with
token, logprob, bytes and top_logprobs), the completions endpoint's (tokens, token_logprobs, top_logprobs,
text_offset; with `echo` the prompt's tokens come first), and vLLM's `prompt_logprobs`.

The numbers are the engine's: raw log_softmax of the logits at temperature 1, whatever temperature or
top-p the request sampled with (see r1lab.engine.SamplingParams for why). Every completion token has an
entry, the thinking, "</think>" and the stop token included, so there are `usage.completion_tokens` of
them: what a distillation trainer scoring or training on the same token ids needs.

A token's `bytes` are its own bytes (byte-level BPE tokens can hold part of a UTF-8 character); its
`token` string is those bytes decoded, or, when they are not valid UTF-8 alone, "bytes:\\xe4\\xb8" as the
OpenAI API writes them.
"""
from __future__ import annotations

import codecs
from functools import lru_cache

from .protocol import ChoiceLogprobs, PromptLogprob, TextLogprobs, TokenLogprob, TopLogprob

FLOOR = -9999.0  # JSON has no -inf: a log-prob below this is reported as this (as vLLM does)


@lru_cache(maxsize=1)
def _byte_of_char() -> dict[str, int]:
    """The inverse of GPT-2's byte-level alphabet: printable bytes stand for themselves, the others are
    shifted to code points from 256 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shift = {chr(b): b for b in printable}, 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shift)] = b
            shift += 1
    return table


class TokenText:
    """Each token id's bytes and display string (cached: a vocabulary is small)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend", None)
        self._piece = backend.id_to_token if backend is not None else getattr(tokenizer, "convert_ids_to_tokens", None)
        self._cache: dict[int, tuple[str, bytes]] = {}

    def __call__(self, token_id: int) -> tuple[str, bytes]:
        if token_id not in self._cache:
            self._cache[token_id] = self._name(token_id)
        return self._cache[token_id]

    def _name(self, token_id: int) -> tuple[str, bytes]:
        piece, table = self._piece(token_id) if self._piece is not None else None, _byte_of_char()
        if piece and all(ch in table for ch in piece):  # a byte-level BPE token
            raw = bytes(table[ch] for ch in piece)
        else:  # a special or added token, or another tokenizer family: its text
            raw = self.tokenizer.decode([token_id]).encode("utf-8", errors="replace")
        try:
            return raw.decode("utf-8"), raw
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), raw


def _floor(logprob: float) -> float:
    return logprob if logprob > FLOOR else FLOOR


def chat_logprobs(names: TokenText, token_ids: list[int], logprobs: list[float],
                  tops: list[list[tuple[int, float]]] | None, k: int) -> ChoiceLogprobs:
    """`choice.logprobs` of the chat endpoint: one entry per token, with the k most likely alternatives."""
    content = []
    for n, (token_id, logprob) in enumerate(zip(token_ids, logprobs)):
        text, raw = names(token_id)
        top = []
        for alt_id, alt_logprob in (tops[n][:k] if tops and k else []):
            alt_text, alt_raw = names(alt_id)
            top.append(TopLogprob(token=alt_text, logprob=_floor(alt_logprob), bytes=list(alt_raw)))
        content.append(TokenLogprob(token=text, logprob=_floor(logprob), bytes=list(raw), top_logprobs=top))
    return ChoiceLogprobs(content=content)


class TextLogprobBuilder:
    """The completions endpoint's `logprobs` of one choice, built piece by piece (whole or streamed):
    text_offset counts characters from the start of the choice's text, across pieces."""

    def __init__(self, names: TokenText, k: int):
        self.names, self.k = names, k
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.offset = 0

    def _entry(self, out: TextLogprobs, token_id: int, logprob: float | None, top: dict[str, float] | None) -> None:
        text, raw = self.names(token_id)
        out.tokens.append(text)
        out.token_logprobs.append(None if logprob is None else _floor(logprob))
        out.top_logprobs.append(top)
        out.text_offset.append(self.offset)
        self.offset += len(self.decoder.decode(raw))

    def _top(self, token_id: int, logprob: float, alternatives: list[tuple[int, float]]) -> dict[str, float]:
        """The k most likely tokens, and the chosen one (which the API always includes)."""
        top = {self.names(alt)[0]: _floor(value) for alt, value in alternatives[:self.k]}
        top.setdefault(self.names(token_id)[0], _floor(logprob))
        return top

    def prompt(self, prompt_ids: list[int], scores: list) -> TextLogprobs:
        """The echoed prompt's entries: the first token has no log-prob (nothing predicts it)."""
        out = TextLogprobs()
        for token_id, score in zip(prompt_ids, scores):
            if score is None:
                self._entry(out, token_id, None, None)
            else:
                self._entry(out, token_id, score.logprob, self._top(token_id, score.logprob, score.top))
        return out

    def completion(self, token_ids: list[int], logprobs: list[float], tops: list[list[tuple[int, float]]] | None,
                   out: TextLogprobs | None = None) -> TextLogprobs:
        out = out if out is not None else TextLogprobs()
        for n, (token_id, logprob) in enumerate(zip(token_ids, logprobs)):
            self._entry(out, token_id, logprob, self._top(token_id, logprob, tops[n] if tops else []))
        return out


def prompt_logprobs(names: TokenText, prompt_ids: list[int], scores: list, k: int) -> list[dict[str, PromptLogprob] | None]:
    """vLLM's `prompt_logprobs`: None for the first token, then {token id: {logprob, rank, decoded_token}}
    holding the prompt token itself and the k most likely tokens at its position."""
    out: list[dict[str, PromptLogprob] | None] = []
    for token_id, score in zip(prompt_ids, scores):
        if score is None:
            out.append(None)
            continue
        entry = {str(alt): PromptLogprob(logprob=_floor(value), rank=rank, decoded_token=names(alt)[0])
                 for rank, (alt, value) in enumerate(score.top[:k], start=1)}
        entry[str(token_id)] = PromptLogprob(logprob=_floor(score.logprob), rank=score.rank, decoded_token=names(token_id)[0])
        out.append(entry)
    return out
