"""Split a completion into the thinking (`reasoning_content`) and the answer (`content`), incrementally.

The chat template pre-fills "<think>\\n", so a completion starts inside the thinking: everything up to
"</think>" is reasoning, the rest (leading whitespace stripped) is the answer — the rule the DeepSeek
API and vLLM's deepseek_r1 parser follow. A completion that never closes the thinking is all reasoning.
A stray "<think>" the model repeats at the very start is dropped.

Streaming: text arrives in arbitrary pieces and a tag may be cut in two ("</th" + "ink>"), so the
splitter holds back a tail that could still become a tag and releases it once it cannot.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..tokenizer import END_THINK, THINK


@dataclass
class Delta:
    reasoning: str = ""
    content: str = ""

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content)


def partial_tag_len(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (a tag cut in two)."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningSplitter:
    """Feed completion text piece by piece; each `feed` returns the new reasoning and answer text.

    States: "start" (may still see a stray "<think>"), "thinking", "answer_start" (dropping the
    whitespace between "</think>" and the answer), "answer".
    """

    def __init__(self, prefilled: bool = True) -> None:
        # prefilled=False: the template does not open the thinking (Qwen3, Qwen2.5): a completion that does not
        # start with "<think>" is all answer
        self.prefilled = prefilled
        self.state = "start"
        self.pending = ""  # held back: could still be the start of a tag
        self.reasoning = ""
        self.content = ""

    @property
    def closed(self) -> bool:
        """True once "</think>" has been seen."""
        return self.state in ("answer_start", "answer")

    def feed(self, text: str) -> Delta:
        delta = Delta()
        buf = self.pending + text
        self.pending = ""
        if self.state == "start":
            stripped = buf.lstrip()
            if stripped.startswith(THINK):
                buf = stripped[len(THINK):]
                self.state = "thinking"
            elif THINK.startswith(stripped):  # empty, or a cut "<thi": wait for more
                self.pending = buf
                return delta
            else:
                self.state = "thinking" if self.prefilled else "answer"
        if self.state == "thinking":
            at = buf.find(END_THINK)
            if at < 0:
                keep = partial_tag_len(buf, END_THINK)
                delta.reasoning, self.pending = buf[:len(buf) - keep], buf[len(buf) - keep:]
                buf = ""
            else:
                delta.reasoning, buf = buf[:at], buf[at + len(END_THINK):]
                self.state = "answer_start"
        if self.state == "answer_start":
            buf = buf.lstrip()
            if buf:
                self.state = "answer"
        if self.state == "answer":
            delta.content = buf
        self.reasoning += delta.reasoning
        self.content += delta.content
        return delta

    def finish(self) -> Delta:
        """Release whatever was held back (the completion ended)."""
        delta = Delta()
        if self.pending and self.state in ("start", "thinking"):
            delta.reasoning = self.pending
            self.reasoning += delta.reasoning
        self.pending = ""
        return delta


def split_reasoning(text: str, prefilled: bool = True) -> tuple[str, str]:
    """(reasoning, answer) of a whole completion."""
    splitter = ReasoningSplitter(prefilled)
    splitter.feed(text)
    splitter.finish()
    return splitter.reasoning, splitter.content


def reasoning_token_count(token_ids: list[int], end_think_token_id: int, decode=None) -> int:
    """Completion tokens up to and including the one that closes the thinking (all of them if none does).

    The model normally emits "</think>" as its single special token; `decode` (ids -> text) covers the rare
    case of the tag spelled out in pieces."""
    if end_think_token_id in token_ids:
        return token_ids.index(end_think_token_id) + 1
    if decode is not None and END_THINK in decode(token_ids):
        lo, hi = 1, len(token_ids)  # smallest prefix whose text contains the tag
        while lo < hi:
            mid = (lo + hi) // 2
            if END_THINK in decode(token_ids[:mid]):
                hi = mid
            else:
                lo = mid + 1
        return lo
    return len(token_ids)
