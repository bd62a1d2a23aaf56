"""Incremental detokenization with stop strings.

Byte-level BPE can split one UTF-8 character over several tokens, so decoding a token alone may give
"\ufffd". We decode a short window of recent tokens (as TGI and vLLM do) and only accept new text once it
no longer ends in a replacement character. Text that could be the start of a stop string is held back
from the stream until it is known not to be one, so a stream never shows text the final answer lacks.
"""
from __future__ import annotations

REPLACEMENT = "\ufffd"


class Detokenizer:
    """Grows `text` as token ids arrive; finds stop strings; says how much text is safe to stream."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.max_stop = max((len(s) for s in stop), default=0)
        self.ids: list[int] = []
        self.prefix_offset = 0  # ids[prefix_offset:read_offset] is the context already turned into text
        self.read_offset = 0
        self.text = ""
        self.streamed = 0  # len of text already handed out by take_stream()

    def add(self, token_id: int) -> str | None:
        """Append one token; returns the stop string it completed, if any (text is then cut before it)."""
        self.ids.append(token_id)
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
        full = self.tokenizer.decode(self.ids[self.prefix_offset:])
        if len(full) <= len(prefix) or full.endswith(REPLACEMENT):
            return None  # an incomplete character: wait for its other bytes
        searched_from = max(0, len(self.text) - self.max_stop + 1)
        self.text += full[len(prefix):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self._find_stop(searched_from)

    def flush(self) -> None:
        """At the end of generation, keep whatever bytes are left (a dangling partial char becomes \ufffd)."""
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset:self.read_offset])
        full = self.tokenizer.decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix):
            self.text += full[len(prefix):]
        self.prefix_offset = self.read_offset = len(self.ids)

    def _find_stop(self, start: int) -> str | None:
        best = None
        for s in self.stop:
            i = self.text.find(s, start)
            if i != -1 and (best is None or i < best[0]):
                best = (i, s)
        if best is None:
            return None
        self.text = self.text[:best[0]]
        return best[1]

    def take_stream(self, final: bool = False) -> str:
        """The new text that is safe to show now: all of it at the end, otherwise all but a possible
        stop-string prefix at the tail."""
        end = len(self.text) if final else len(self.text) - self._held_back()
        if end <= self.streamed:
            return ""
        delta, self.streamed = self.text[self.streamed:end], end
        return delta

    def _held_back(self) -> int:
        """Length of the longest tail of text that is a proper prefix of some stop string."""
        text = self.text
        for n in range(min(self.max_stop - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0
