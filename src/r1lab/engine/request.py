"""What callers hold: a request's parameters in flight, its handle, its stream events and its Completion."""
from __future__ import annotations

import queue
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from .detok import Detokenizer
from .sampling import SamplingParams
from .scoring import TokenScore


class PromptTooLong(ValueError):
    """The prompt does not fit max_model_len (or max_cached_tokens)."""


class QueueFull(RuntimeError):
    """submit() was called while max_waiting requests were already waiting."""


class EngineError(RuntimeError):
    """The engine's loop failed while this request was in it."""


@dataclass
class Completion:
    """One finished request. token_ids include the stop token that ended it (EOS or one of
    stop_token_ids), as vLLM's do, so a trainer learns to stop; text never contains that token, nor the
    stop string or anything after it. logprobs: one per token id; top_logprobs: each step's alternatives as
    (token id, log-prob); prompt_logprobs: None, then one TokenScore per later prompt token (see
    SamplingParams)."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_token_ids: list[int]
    logprobs: list[float] | None = None
    stop_reason: str | int | None = None  # the stop string or stop token id; None for EOS and "length"
    top_logprobs: list[list[tuple[int, float]]] | None = None
    prompt_logprobs: list[TokenScore | None] | None = None


@dataclass
class StreamEvent:
    """What one request gained since its last event. finish_reason is set on the last event only;
    prompt_logprobs on the first one."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    prompt_logprobs: list[TokenScore | None] | None = None


@dataclass(eq=False)
class Request:
    id: int
    prompt: list[int]
    params: SamplingParams
    max_total: int  # prompt + output may not exceed this (max_tokens, max_model_len, max_cached_tokens)
    stop_ids: frozenset[int]
    generator: random.Random | None  # the request's own random numbers, when seeded
    detok: Detokenizer | None  # only when streaming or matching stop strings
    sink: Callable[[StreamEvent], None] | None = None
    output: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    prompt_logprobs: list[TokenScore | None] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    error: BaseException | None = None
    cancelled: bool = False
    slot: int | None = None
    cached: int = 0  # tokens of this sequence in the KV cache
    draft_len: int | None = None  # speculative decoding: drafts it asks for next (None: the drafter's k)
    streamed: int = 0  # output tokens already sent to the sink
    prompt_sent: bool = False  # the first event (which carries prompt_logprobs) went out
    done: threading.Event = field(default_factory=threading.Event)

    def record(self, t: int, logprob: float | None, top: list[tuple[int, float]] | None, eos_token_ids) -> int:
        """Append one sampled token (and its log-probs), and finish if it is done; the tokens it added (0 or 1)."""
        if self.params.max_tokens == 0:  # scoring only (prompt_logprobs): the sampled token is dropped
            self.finish("length")
            return 0
        self.output.append(t)
        if self.logprobs is not None:
            self.logprobs.append(logprob)
        if self.top_logprobs is not None:
            self.top_logprobs.append(top[:self.params.top_logprobs])
        if t in self.stop_ids:
            self.finish("stop", None if t in eos_token_ids and t not in self.params.stop_token_ids else t)
        elif self.detok is not None and (stop := self.detok.add(t)) is not None:
            self.finish("stop", stop)
        elif len(self.output) >= self.params.max_tokens or len(self.prompt) + len(self.output) >= self.max_total:
            self.finish("length")
        return 1

    def finish(self, reason: str, stop_reason: str | int | None = None) -> None:
        self.finish_reason, self.stop_reason = reason, stop_reason
        if self.detok is not None and not isinstance(stop_reason, str):
            self.detok.flush()  # a stop string already cut the text; otherwise keep the last bytes

    def emit(self) -> None:
        """Send the sink what this request gained since its last event (nothing if nothing did)."""
        final = self.finish_reason is not None
        text = self.detok.take_stream(final) if self.detok is not None else ""
        new = self.output[self.streamed:]
        if not (text or new or final):
            return
        logprobs = self.logprobs[self.streamed:] if self.logprobs is not None else None
        top = self.top_logprobs[self.streamed:] if self.top_logprobs is not None else None
        first, self.streamed, self.prompt_sent = not self.prompt_sent, len(self.output), True
        self.sink(StreamEvent(text=text, token_ids=new, finish_reason=self.finish_reason, logprobs=logprobs,
                              top_logprobs=top, prompt_logprobs=self.prompt_logprobs if first else None))


class Driver(Protocol):
    """What a handle needs from the engine that runs its request (the Engine; this module does not import it)."""

    def _pump(self, request: Request) -> None: ...
    def _cancel(self, request: Request) -> None: ...
    def _completion(self, request: Request) -> Completion: ...


class RequestHandle:
    """A submitted request: iterate its events, cancel it, or wait for its Completion."""

    def __init__(self, engine: Driver, request: Request, events: "queue.Queue[StreamEvent] | None"):
        self._engine, self._request, self._events = engine, request, events

    @property
    def id(self) -> int:
        return self._request.id

    def events(self) -> Iterator[StreamEvent]:
        """Blocking iterator over StreamEvents, ending after the one with a finish_reason. Without a
        background loop (engine.start()), the caller's thread runs the engine steps itself."""
        if self._events is None:
            raise RuntimeError("this handle streams elsewhere (engine.stream)")
        while True:
            if self._engine._thread is None and self._events.empty():
                self._engine._pump(self._request)
                continue
            event = self._events.get()
            if event.finish_reason == "error":
                raise EngineError(str(self._request.error)) from self._request.error
            yield event
            if event.finish_reason is not None:
                return

    def cancel(self) -> None:
        """Stop generating for this request and free its slot (now, or right after the step in flight)."""
        self._engine._cancel(self._request)

    def result(self) -> Completion:
        """Wait for the request to finish and return its Completion."""
        if self._engine._thread is None:
            while not self._request.done.is_set():
                self._engine._pump(self._request)
        self._request.done.wait()
        if self._request.error is not None:
            raise EngineError(str(self._request.error)) from self._request.error
        return self._engine._completion(self._request)
