"""Running admitted requests on the engine and shaping the results as OpenAI responses: whole
(`chat_full`, `text_full`) or as server-sent events (`chat_stream`, `text_stream`).

A `Job` holds one request's sequences (n choices per prompt) and the capacity it was admitted with;
however the request ends — finished, failed, or its client gone — the capacity is given back and the
engine requests are cancelled.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from .. import __version__
from ..tokenizer import thinking_prefilled
from .errors import APIError
from .logprobs import TextLogprobBuilder, TokenText, chat_logprobs, prompt_logprobs
from .metrics import Metrics
from .protocol import (AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChatChunkChoice, ChatDelta,
                       CompletionTokensDetails, TextChoice, TextCompletion, TextLogprobs, Usage, new_id, now)
from .reasoning import ReasoningSplitter, partial_tag_len, reasoning_token_count
from .tools import call_start, parse_calls

log = logging.getLogger("r1lab.serve")
SYSTEM_FINGERPRINT = f"fp_r1lab_{__version__}"


@dataclass
class ServerState:
    """What every request handler shares: the engine, the admission count, the metrics."""

    engine: object
    tokenizer: object
    model_name: str
    api_key: str | None
    capacity: int  # sequences in flight before 429
    max_model_len: int
    metrics: Metrics = field(default_factory=Metrics)
    thinking_budget: int | None = None  # the serve flag: close every answer's thinking after this many tokens
    grammars: object = None  # constraint.Grammars, built on the first constrained request
    in_flight: int = 0
    created: int = field(default_factory=now)
    names: TokenText = field(init=False)

    def __post_init__(self) -> None:
        self.names = TokenText(self.tokenizer)


@dataclass
class Job:
    """One admitted request: the sequences to generate (prompt ids and sampling params per choice)."""

    state: "ServerState"
    prompts: list[list[int]]  # per choice
    params: list  # SamplingParams per choice
    prompt_tokens: int  # counted once per distinct prompt, as OpenAI does
    usage: list[int]  # [prompt, completion] tokens, shared with the request log line
    top_logprobs: int | None = None  # None: no log-probs; else alternatives per token
    prompt_logprobs: int | None = None  # vLLM's prompt_logprobs (None: not asked for)
    plan: object = None  # plan.ChatPlan of a chat request
    started: float = field(default_factory=time.perf_counter)
    released: bool = False

    def release(self) -> None:
        """Give back the admitted capacity; safe to call more than once."""
        if not self.released:
            self.released = True
            self.state.in_flight -= len(self.prompts)


def sse(data: str) -> bytes:
    """One server-sent event."""
    return f"data: {data}\n\n".encode()


@dataclass
class ChoiceResult:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    prompt_logprobs: list | None = None


async def _run(state: ServerState, job: Job) -> AsyncIterator[tuple[int, object]]:
    """(choice index, StreamEvent) from every choice's engine stream as they arrive, counted in the metrics.
    Closing this generator (client gone) cancels the engine requests."""
    first = True
    try:
        async for index, ev in _interleave(state.engine, job):
            if first and ev.token_ids:
                state.metrics.ttft.observe(time.perf_counter() - job.started)
                first = False
            state.metrics.generated_tokens += len(ev.token_ids)
            job.usage[1] += len(ev.token_ids)
            yield index, ev
    finally:
        job.release()


async def _interleave(engine, job: Job) -> AsyncIterator[tuple[int, object]]:
    if len(job.prompts) == 1:  # the common case, without a task and a queue in between
        stream = engine.stream(job.prompts[0], job.params[0])
        try:
            async for ev in stream:
                yield 0, ev
        finally:
            await stream.aclose()  # cancels the engine request if it is still running
        return
    # several choices: one task per engine stream, merged through a queue
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(index: int) -> None:
        stream = None
        try:
            stream = engine.stream(job.prompts[index], job.params[index])
            async for ev in stream:
                queue.put_nowait((index, ev))
        except Exception as e:  # noqa: BLE001 - re-raised below, in the request's task
            queue.put_nowait((index, e))
        finally:
            if stream is not None:
                await stream.aclose()
            queue.put_nowait((index, done))

    tasks = [asyncio.create_task(pump(i)) for i in range(len(job.prompts))]
    remaining = len(tasks)
    try:
        while remaining:
            index, ev = await queue.get()
            if ev is done:
                remaining -= 1
            elif isinstance(ev, Exception):
                raise ev
            else:
                yield index, ev
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _engine_error(e: Exception) -> APIError:
    from ..engine import PromptTooLong, QueueFull

    if isinstance(e, PromptTooLong):
        return APIError(400, str(e), param="messages", code="context_length_exceeded")
    if isinstance(e, QueueFull):
        return APIError(429, "The server is at capacity; retry shortly.", code="queue_full")
    log.exception("generation failed", exc_info=e)
    return APIError(500, f"generation failed: {type(e).__name__}")


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"  # "cancelled" is only ever seen by a client that left


async def _collect(state: ServerState, job: Job) -> list[ChoiceResult]:
    results = [ChoiceResult() for _ in job.prompts]
    try:
        async for index, ev in _run(state, job):
            r = results[index]
            r.token_ids += ev.token_ids
            r.text += ev.text
            r.logprobs += ev.logprobs or []
            r.top_logprobs += ev.top_logprobs or []
            if ev.prompt_logprobs is not None:
                r.prompt_logprobs = ev.prompt_logprobs
            if ev.finish_reason is not None:
                r.finish_reason = ev.finish_reason
    except APIError:
        raise
    except Exception as e:  # noqa: BLE001 - the engine's errors, mapped to status codes
        raise _engine_error(e) from e
    return results


def _usage(state: ServerState, job: Job, completion_tokens: int, reasoning_tokens: int | None) -> Usage:
    details = CompletionTokensDetails(reasoning_tokens=reasoning_tokens) if reasoning_tokens is not None else None
    return Usage(prompt_tokens=job.prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=job.prompt_tokens + completion_tokens, completion_tokens_details=details)


def _reasoning_tokens(state: ServerState, token_ids: list[int], job: Job | None = None) -> int:
    if job is not None and not _prefilled(state, job) and state.tokenizer.think_token_id not in token_ids:
        return 0  # the answer starts outside the thinking and never opens it
    return reasoning_token_count(token_ids, state.tokenizer.end_think_token_id, state.tokenizer.decode)


async def chat_full(state: ServerState, job: Job) -> ChatCompletion:
    results = await _collect(state, job)
    choices, reasoning_tokens = [], 0
    plan = job.plan
    for i, r in enumerate(results):
        splitter = ReasoningSplitter(_prefilled(state, job))
        splitter.feed(r.text)
        splitter.finish()
        content, calls = splitter.content, []
        if plan is not None and plan.parse_tools:
            content, calls = parse_calls(plan.fmt, content, plan.names)
        reasoning = splitter.reasoning or None
        message = AssistantMessage(content=content, reasoning=reasoning, reasoning_content=reasoning,
                                   tool_calls=[c.openai() for c in calls] or None)
        logprobs = None
        if job.top_logprobs is not None:
            logprobs = chat_logprobs(state.names, r.token_ids, r.logprobs, r.top_logprobs, job.top_logprobs)
        finish = "tool_calls" if calls and r.finish_reason != "length" else _finish(r.finish_reason)
        choices.append(ChatChoice(index=i, message=message, logprobs=logprobs, finish_reason=finish))
        reasoning_tokens += _reasoning_tokens(state, r.token_ids, job)
    usage = _usage(state, job, sum(len(r.token_ids) for r in results), reasoning_tokens)
    return ChatCompletion(id=new_id("chatcmpl"), created=now(), model=state.model_name,
                          system_fingerprint=SYSTEM_FINGERPRINT, choices=choices, usage=usage)


async def text_full(state: ServerState, job: Job, echo: list[str] | None) -> TextCompletion:
    results = await _collect(state, job)
    n = len(results) // (len(echo) if echo else 1)
    choices = []
    for i, r in enumerate(results):
        choices.append(TextChoice(index=i, text=(echo[i // n] if echo else "") + r.text, finish_reason=_finish(r.finish_reason)))
        _text_logprobs(state, job, choices[-1], r, TextLogprobBuilder(state.names, job.top_logprobs or 0), bool(echo),
                       job.prompts[i])
    usage = _usage(state, job, sum(len(r.token_ids) for r in results), None)
    return TextCompletion(id=new_id("cmpl"), created=now(), model=state.model_name,
                          system_fingerprint=SYSTEM_FINGERPRINT, choices=choices, usage=usage)


def _text_logprobs(state: ServerState, job: Job, choice: TextChoice, result: ChoiceResult, builder: TextLogprobBuilder,
                   echo: bool, prompt: list[int]) -> None:
    """Fill a completions choice's logprobs (the echoed prompt's first, when `result` holds the prompt's
    scores) and prompt_logprobs from what the engine returned."""
    scores = result.prompt_logprobs
    if job.top_logprobs is not None:
        out = builder.prompt(prompt, scores) if echo and scores is not None else TextLogprobs()
        choice.logprobs = builder.completion(result.token_ids, result.logprobs, result.top_logprobs, out)
    if job.prompt_logprobs is not None and scores is not None:
        choice.prompt_logprobs = prompt_logprobs(state.names, prompt, scores, job.prompt_logprobs)


async def with_disconnect_watch(request: Request, job: Job, work):
    """Await `work`, cancelling it if the client disconnects first (a non-streaming response is only
    sent at the end, so the server would otherwise generate for nobody)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return Response(status_code=499)
    finally:
        task.cancel()
        job.release()


class JobStream(StreamingResponse):
    """A streaming response that gives back its job's capacity however the stream ends — even when the
    client leaves before the body generator ever starts (then no `finally` inside it would run)."""

    def __init__(self, job: Job, body: AsyncIterator[bytes]):
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            self.job.release()


def _dump(model) -> bytes:
    return sse(model.model_dump_json(exclude_none=True))


def _prefilled(state: ServerState, job: Job) -> bool:
    return job.plan.prefilled if job.plan is not None else thinking_prefilled(state.tokenizer)


class CallHold:
    """Streams an answer's content until a tool call may be starting, then holds the rest back: at the end it is
    parsed into calls (sent as OpenAI streams them) or, garbled, released as content."""

    def __init__(self, plan) -> None:
        self.plan, self.start = plan, call_start(plan.fmt)
        self.sent, self.held = "", ""  # content already streamed; text held back
        self.holding = False

    def feed(self, text: str) -> str:
        """The content that can go out now."""
        buf = self.held + text
        if self.holding:
            self.held = buf
            return ""
        if self.plan.fmt == "llama3_json":  # a call is the whole answer: decide on its first character
            stripped = buf.lstrip()
            if not self.sent and (stripped.startswith("{") or stripped.startswith("<|python_tag|>") or not stripped):
                self.held, self.holding = buf, bool(stripped)
                return ""
            self.held = ""
            self.sent += buf
            return buf
        at = buf.find(self.start)
        if at >= 0:
            self.held, self.holding = buf[at:], True
            out = buf[:at]
        else:
            keep = partial_tag_len(buf, self.start)
            out, self.held = buf[:len(buf) - keep], buf[len(buf) - keep:]
        self.sent += out
        return out

    def finish(self) -> tuple[str, list]:
        """(content still to send, calls) at the end of the answer."""
        if not self.held:
            return "", []
        content, calls = parse_calls(self.plan.fmt, self.sent + self.held, self.plan.names)
        if not calls:
            return self.held, []
        return "", calls


def _call_deltas(calls: list) -> list[ChatDelta]:
    """OpenAI's streamed shape: per call, id and name first (empty arguments), then the arguments in pieces."""
    deltas = []
    for index, call in enumerate(calls):
        deltas.append(ChatDelta(tool_calls=[{"index": index, "id": call.id, "type": "function",
                                             "function": {"name": call.name, "arguments": ""}}]))
        for at in range(0, len(call.arguments), 32):
            deltas.append(ChatDelta(tool_calls=[{"index": index, "function": {"arguments": call.arguments[at:at + 32]}}]))
    return deltas


async def chat_stream(state: ServerState, job: Job, include_usage: bool) -> AsyncIterator[bytes]:
    ident, created = new_id("chatcmpl"), now()
    head = dict(id=ident, created=created, model=state.model_name, system_fingerprint=SYSTEM_FINGERPRINT)
    splitters = [ReasoningSplitter(_prefilled(state, job)) for _ in job.prompts]
    holds = [CallHold(job.plan) if job.plan is not None and job.plan.parse_tools else None for _ in job.prompts]
    token_ids: list[list[int]] = [[] for _ in job.prompts]
    yield _dump(ChatCompletionChunk(**head, choices=[ChatChunkChoice(index=i, delta=ChatDelta(role="assistant", content=""))
                                                     for i in range(len(job.prompts))]))
    try:
        async for index, ev in _run(state, job):
            token_ids[index] += ev.token_ids
            delta = splitters[index].feed(ev.text)
            if ev.finish_reason is not None:
                tail = splitters[index].finish()
                delta.reasoning += tail.reasoning
            hold, calls = holds[index], []
            if hold is not None:
                delta.content = hold.feed(delta.content)
                if ev.finish_reason is not None:
                    rest, calls = hold.finish()
                    delta.content += rest
            logprobs = None
            if job.top_logprobs is not None and ev.token_ids:  # tokens whose text the splitter may still hold back
                logprobs = chat_logprobs(state.names, ev.token_ids, ev.logprobs or [], ev.top_logprobs, job.top_logprobs)
            if delta or logprobs is not None:
                reasoning = delta.reasoning or None
                yield _dump(ChatCompletionChunk(**head, choices=[ChatChunkChoice(
                    index=index, delta=ChatDelta(content=delta.content or None, reasoning=reasoning,
                                                 reasoning_content=reasoning), logprobs=logprobs)]))
            for call_delta in _call_deltas(calls):
                yield _dump(ChatCompletionChunk(**head, choices=[ChatChunkChoice(index=index, delta=call_delta)]))
            if ev.finish_reason is not None:
                finish = "tool_calls" if calls and ev.finish_reason != "length" else _finish(ev.finish_reason)
                yield _dump(ChatCompletionChunk(**head, choices=[ChatChunkChoice(
                    index=index, delta=ChatDelta(), finish_reason=finish)]))
    except Exception as e:  # noqa: BLE001 - headers are sent: report in-band, as OpenAI does
        yield sse(json.dumps((e if isinstance(e, APIError) else _engine_error(e)).body(), ensure_ascii=True))
    if include_usage:
        usage = _usage(state, job, sum(map(len, token_ids)), sum(_reasoning_tokens(state, t, job) for t in token_ids))
        yield _dump(ChatCompletionChunk(**head, choices=[], usage=usage))
    yield sse("[DONE]")


async def text_stream(state: ServerState, job: Job, include_usage: bool, echo: list[str] | None) -> AsyncIterator[bytes]:
    head = dict(id=new_id("cmpl"), created=now(), model=state.model_name, system_fingerprint=SYSTEM_FINGERPRINT)
    completion_tokens = 0
    n = len(job.prompts) // len(echo) if echo else 1
    builders = [TextLogprobBuilder(state.names, job.top_logprobs or 0) for _ in job.prompts]
    started = [False] * len(job.prompts)
    try:
        async for index, ev in _run(state, job):
            completion_tokens += len(ev.token_ids)
            first, started[index] = not started[index], True
            text = (echo[index // n] if echo and first else "") + ev.text
            wanted = (job.top_logprobs is not None and ev.token_ids) or (first and job.prompt_logprobs is not None)
            if text or ev.finish_reason is not None or wanted:
                finish = _finish(ev.finish_reason) if ev.finish_reason is not None else None
                choice = TextChoice(index=index, text=text, finish_reason=finish)
                result = ChoiceResult(token_ids=ev.token_ids, logprobs=ev.logprobs or [], top_logprobs=ev.top_logprobs or [],
                                      prompt_logprobs=ev.prompt_logprobs)
                _text_logprobs(state, job, choice, result, builders[index], bool(echo) and first, job.prompts[index])
                yield _dump(TextCompletion(**head, choices=[choice]))
    except Exception as e:  # noqa: BLE001
        yield sse(json.dumps((e if isinstance(e, APIError) else _engine_error(e)).body(), ensure_ascii=True))
    if include_usage:
        yield _dump(TextCompletion(**head, choices=[], usage=_usage(state, job, completion_tokens, None)))
    yield sse("[DONE]")
