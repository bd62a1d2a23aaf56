"""The engine: continuous batching over a KV cache, synchronous (`generate`) or on a background thread
(`submit` / `stream`) for the server.

Each step is one forward pass, either
  * prefill: admit waiting requests (FCFS, within max_running, max_cached_tokens and a prefill token
    budget), run their prompts as one right-padded batch, sample each one's first token; or
  * decode: feed every running sequence its last sampled token, sample the next one.
Finished and cancelled sequences retire between steps; the last running sequence moves into the freed
slot, so running sequences stay in slots 0..n-1. A request reserves prompt + max_tokens cache tokens when
admitted (capped by max_model_len), so the cache cap holds without ever preempting anyone.
"""
from __future__ import annotations

import asyncio
import itertools
import queue
import random
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable

import torch

from ..model import Transformer
from .constraint import submit_masks
from .detok import Detokenizer
from .gqa import eos_ids, runner_and_cache
from .progress import progress_bar
from .request import Completion, EngineError, PromptTooLong, QueueFull, Request, RequestHandle, StreamEvent
from .sampling import Sampler, SamplingParams
from .scoring import PromptScorer, top_logprobs
from .speculative import Drafter, SpeculativeStep

__all__ = ["Completion", "Engine", "EngineError", "PromptTooLong", "QueueFull", "RequestHandle", "StreamEvent"]


# most attention-score elements one prefill forward may hold (B x tokens x heads x L); longer prompts are prefilled in chunks
PREFILL_SCORE_BUDGET = 1 << 25  # 2**25 float32 scores = 128 MiB


class Engine(SpeculativeStep):
    """Generation for a live r1lab Transformer (see the module docstring for the scheduling policy).

    max_running: sequences decoded together (cache slots). max_cached_tokens: cap on the KV-cache tokens reserved by
    running requests (None = max_running x max_model_len). max_model_len: prompt + output limit (default: the model's
    max_position_embeddings). device: moves the model there (default: where it is); do not move the model afterwards.
    max_waiting: bound of submit()'s queue (QueueFull beyond). max_prefill_tokens: prompt tokens admitted in one prefill.
    drafter: speculative decoding (see speculative.py): each decode step verifies the drafter's proposals, up to
    drafter.k per sequence, in one forward; steps where a running request has a constraint decode plainly.

    The engine reads the model's parameters live and never changes them or its train/eval mode, so a trainer can
    generate, step its optimizer and generate again with the new weights.
    """

    def __init__(self, model: Transformer, tokenizer, *, max_running: int = 64, max_cached_tokens: int | None = None,
                 max_model_len: int | None = None, device=None, max_waiting: int = 4096,
                 max_prefill_tokens: int = 8192, drafter: Drafter | None = None):
        if device is not None:
            model.to(device)
        self.model, self.tokenizer = model, tokenizer
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.max_running, self.max_cached_tokens = max_running, max_cached_tokens
        self.max_model_len = max_model_len or model.config.max_position_embeddings
        self.max_waiting, self.max_prefill_tokens = max_waiting, max_prefill_tokens
        self.eos_token_id, self.eos_token_ids = eos_ids(model, tokenizer)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer is not None else 0
        # on CPU the KV cache and attention stay float32 under bf16 weights: CPU bf16 batched matmuls copy the cache's
        # strided views at every step (bf16 SDPA is slower still); elsewhere the cache takes the weights' dtype
        cache_dtype = torch.float32 if self.device.type == "cpu" else self.dtype
        spare = self._attach_drafter(drafter, max_running)  # cache positions a verification may write past the end
        self.runner, self.cache = runner_and_cache(model, max_running, self.max_model_len + spare, cache_dtype,
                                                   self.device)
        self._ids = itertools.count()
        self._start_lock = threading.Lock()
        self._lock = threading.Lock()  # held for a whole step; guards everything below
        self._incoming: deque[Request] = deque()  # filled by submit() from any thread
        self._cancels: deque[Request] = deque()  # cancelled while a step was running
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []  # index = cache slot
        self._reserved = 0  # cache tokens promised to running requests
        self._sampler: Sampler | None = None  # for the current running set
        self._steps = self._generated = 0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()

    # ---------------------------------------------------------------- public API

    def generate(self, prompts: list[str] | list[list[int]], params: SamplingParams | list[SamplingParams] | None = None,
                 progress: bool = False) -> list[Completion]:
        """Generate for every prompt (text is encoded as is: apply the chat template first) and return the
        Completions in prompt order. Runs the batching loop in this thread until all are done (or waits
        for the background loop if it is running)."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            raise TypeError("generate() takes a list of prompts (strings or lists of token ids)")
        params = params or SamplingParams()
        plist = params if isinstance(params, list) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(plist)} SamplingParams")
        requests = [self._request(self._encode(p), sp, sink=None) for p, sp in zip(prompts, plist)]
        self._incoming.extend(requests)
        self._wake.set()
        with progress_bar(progress, len(requests)) as advance:
            if self._thread is None:
                with self._lock:
                    for r in requests:
                        while not r.done.is_set():
                            self._step_or_fail()
                        advance()
            else:
                for r in requests:
                    r.done.wait()
                    advance()
        for r in requests:
            if r.error is not None:
                raise EngineError(str(r.error)) from r.error
        return [self._completion(r) for r in requests]

    def refresh(self) -> None:
        """Re-derive the absorbed MLA weights from the model's parameters. Generation also does this by
        itself when it sees a parameter changed in place (optimizer step, load_state_dict); call it after
        changing weights through `.data` or by other means the version counters miss."""
        with self._lock:
            self.runner.refresh()

    def submit(self, prompt_token_ids: list[int], params: SamplingParams | None = None, *,
               _sink: Callable[[StreamEvent], None] | None = None) -> RequestHandle:
        """Queue a request (thread-safe, does not wait). Raises PromptTooLong, or QueueFull when
        max_waiting requests are already waiting."""
        if len(self._incoming) + len(self._waiting) >= self.max_waiting:
            raise QueueFull(f"{self.max_waiting} requests are already waiting")
        events: queue.Queue[StreamEvent] | None = None
        if _sink is None:
            events = queue.Queue()
            _sink = events.put
        request = self._request(list(prompt_token_ids), params or SamplingParams(), sink=_sink)
        self._incoming.append(request)
        self._wake.set()
        return RequestHandle(self, request, events)

    async def stream(self, prompt_token_ids: list[int], params: SamplingParams | None = None) -> AsyncIterator[StreamEvent]:
        """Async iterator of a request's StreamEvents (starts the background loop if needed). Closing the
        iterator early, or cancelling the task that iterates it, cancels the request."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[StreamEvent] = asyncio.Queue()

        def sink(event: StreamEvent) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop is closed: nobody is listening any more
                pass

        handle = self.submit(prompt_token_ids, params, _sink=sink)
        self.start()
        try:
            while True:
                event = await events.get()
                if event.finish_reason == "error":
                    raise EngineError(str(handle._request.error)) from handle._request.error
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            handle.cancel()  # no-op once finished

    def start(self) -> None:
        """Run the scheduler loop on a background thread (idempotent)."""
        with self._start_lock:
            if self._thread is not None:
                return
            self._stopping.clear()
            self._thread = threading.Thread(target=self._loop, name="r1lab-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the background loop; requests still in flight are cancelled."""
        with self._start_lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        self._wake.set()
        thread.join()
        with self._lock:
            for r in self._take_queued() + list(self._running):
                self._cancel_now(r)

    def stats(self) -> dict:
        return {
            "running": len(self._running),
            "waiting": len(self._waiting) + len(self._incoming),
            "cached_tokens": sum(r.cached for r in self._running),
            "reserved_tokens": self._reserved,
            "steps": self._steps,
            "generated_tokens": self._generated,
            "max_running": self.max_running,
            "max_cached_tokens": self.max_cached_tokens,
            "kv_bytes_per_token": self.cache.bytes_per_token,
            "kv_allocated_bytes": self.cache.allocated_bytes,
            **self._spec_stats(),
        }

    # ---------------------------------------------------------------- requests

    def _encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this engine has no tokenizer: pass token ids")
            return self.tokenizer.encode(prompt)
        return list(prompt)

    def _request(self, prompt: list[int], params: SamplingParams, sink) -> Request:
        limit = min(self.max_model_len, self.max_cached_tokens or self.max_model_len)
        if not prompt:
            raise ValueError("empty prompt: give at least one token")
        if len(prompt) > limit:
            raise PromptTooLong(f"prompt has {len(prompt)} tokens, more than the {limit} this engine allows "
                                f"(max_model_len {self.max_model_len}, max_cached_tokens {self.max_cached_tokens})")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos and self.eos_token_id is not None:
            stop_ids |= self.eos_token_ids
        generator = None
        if params.seed is not None and not params.greedy:
            generator = random.Random(params.seed)
        detok = Detokenizer(self.tokenizer, params.stop) if self.tokenizer is not None and (params.stop or sink) else None
        return Request(id=next(self._ids), prompt=prompt, params=params,
                       max_total=min(limit, len(prompt) + params.max_tokens), stop_ids=frozenset(stop_ids),
                       generator=generator, detok=detok, sink=sink, logprobs=[] if params.logprobs else None,
                       top_logprobs=[] if params.top_logprobs else None)

    def _completion(self, r: Request) -> Completion:
        if r.detok is not None:
            text = r.detok.text
        elif self.tokenizer is not None:
            ids = r.output[:-1] if r.output and r.finish_reason == "stop" and r.output[-1] in r.stop_ids else r.output
            text = self.tokenizer.decode(ids)
        else:
            text = ""
        return Completion(text=text, token_ids=list(r.output), finish_reason=r.finish_reason or "cancelled",
                          prompt_token_ids=r.prompt, logprobs=list(r.logprobs) if r.logprobs is not None else None,
                          stop_reason=r.stop_reason, top_logprobs=r.top_logprobs, prompt_logprobs=r.prompt_logprobs)

    # ---------------------------------------------------------------- the loop

    def _loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                worked = self._step_or_fail(reraise=False)
            if not worked:
                self._wake.wait(0.05)
                self._wake.clear()

    def _pump(self, request: Request) -> None:
        """One step in the caller's thread (no background loop)."""
        with self._lock:
            if not self._step_or_fail() and not request.done.is_set():
                raise EngineError("the engine is idle but the request is not finished")

    def _step_or_fail(self, reraise: bool = True) -> bool:
        """A step; if it raises, every request in flight fails (instead of hanging), then the error goes to
        the caller (not to the background loop, which carries on)."""
        try:
            return self._step()
        except Exception as e:
            running, queued = list(self._running), self._take_queued()
            for r in running + queued:
                if r.finish_reason is None:
                    r.error = e
                    r.finish("error")
                if r.sink is not None:
                    r.emit()
            self._retire(running)
            for r in queued:
                r.done.set()
            if reraise:
                raise
            return False

    def _step(self) -> bool:
        """One forward pass (prefill or decode). Returns False when there was nothing to do."""
        self._drain()
        batch = self._admit()
        if batch:
            # new work starts with the model's current weights (an optimizer step may have changed them in
            # place since the last batch); checking before every decode step would cost more than it buys
            self.runner.maybe_refresh()
            self._prefill(batch)
        elif self._running:
            self._decode_sampler()
            if self.drafter is not None and not self._sampler.constrained:
                self._speculate()
            else:
                self._decode()
        else:
            return False
        self._steps += 1
        return True

    def _take_queued(self) -> list[Request]:
        """Empty the incoming and waiting queues (submit() may append concurrently: popleft, not iterate)."""
        taken = []
        while self._incoming:
            taken.append(self._incoming.popleft())
        taken += self._waiting
        self._waiting.clear()
        return taken

    def _drain(self) -> None:
        while self._incoming:
            r = self._incoming.popleft()
            if r.cancelled:
                self._cancel_now(r)
            else:
                self._waiting.append(r)
        while self._cancels:
            self._cancel_now(self._cancels.popleft())

    def _admit(self) -> list[Request]:
        batch: list[Request] = []
        tokens = 0
        while self._waiting and len(self._running) < self.max_running:
            r = self._waiting[0]
            if self.max_cached_tokens is not None and self._reserved + r.max_total > self.max_cached_tokens:
                break  # first come, first served: nobody overtakes a request that does not fit yet
            if batch and tokens + len(r.prompt) > self.max_prefill_tokens:
                break
            self._waiting.popleft()
            r.slot = len(self._running)
            self._running.append(r)
            self._reserved += r.max_total
            batch.append(r)
            tokens += len(r.prompt)
        if batch:
            self._sampler = None
        return batch

    def _prefill(self, batch: list[Request]) -> None:
        """Run the prompts as one right-padded batch, in chunks along the prompt when the attention scores
        (B x chunk x heads x L) would exceed PREFILL_SCORE_BUDGET elements, and sample each first token."""
        B, lengths = len(batch), [len(r.prompt) for r in batch]
        T = max(lengths)
        slot0 = batch[0].slot
        self.cache.ensure(slot0 + B, T)
        ids = torch.tensor([r.prompt + [self.pad_token_id] * (T - len(r.prompt)) for r in batch], device=self.device)
        last = torch.tensor(lengths, device=self.device) - 1  # position whose logits sample the first token
        chunk = max(1, min(T, PREFILL_SCORE_BUDGET // (B * self.model.config.num_attention_heads * T)))
        if (scorer := PromptScorer.of(batch, ids)) is not None:  # every position's logits: (B, chunk, V), in budget
            chunk = max(1, min(chunk, PREFILL_SCORE_BUDGET // (B * self.model.config.vocab_size)))
        logits = None
        for c in range(0, T, chunk):
            part = ids[:, c:c + chunk]
            at = (last - c).clamp(0, part.shape[1] - 1)
            out = self.runner.forward(part, torch.full((B,), c, device=self.device), slot0, at, self.cache,
                                      c + part.shape[1], all_positions=scorer is not None)
            if scorer is not None:
                scorer.add(out, c)
                out = out[torch.arange(B, device=self.device), at]
            # keep the rows whose last prompt token fell in this chunk
            logits = out if logits is None else torch.where(((last >= c) & (last < c + chunk))[:, None], out, logits)
        for r in batch:
            r.cached = len(r.prompt)
        sampler = Sampler([r.params for r in batch], [r.generator for r in batch], logits.shape[-1], self.device)
        self._process(batch, sampler, logits)

    def _decode_sampler(self) -> Sampler:
        if self._sampler is None:
            self._sampler = Sampler([r.params for r in self._running], [r.generator for r in self._running],
                                    self.model.config.vocab_size, self.device)
        return self._sampler

    def _decode(self) -> None:
        running = self._running
        self._decode_sampler()
        positions = [r.cached for r in running]
        kv_len = max(positions) + 1
        self.cache.ensure(len(running), kv_len)
        ids = torch.tensor([[r.output[-1]] for r in running], device=self.device)
        start = torch.tensor(positions, device=self.device)
        masks = submit_masks(self._sampler.constraints, self.model.config.vocab_size, self.device)  # during the forward
        logits = self.runner.forward(ids, start, 0, None, self.cache, kv_len)
        for r in running:
            r.cached += 1
        self._process(running, self._sampler, logits, masks)

    def _process(self, requests: list[Request], sampler: Sampler, logits: torch.Tensor, masks=None) -> None:
        """Sample each request's new token, record it, decide whether it is done, stream it, retire the finished."""
        tokens, logprobs = sampler(logits, masks)
        top = top_logprobs(logits, sampler.top_logprobs) if sampler.top_logprobs else None
        token_list, logprob_list = tokens.tolist(), logprobs.tolist() if logprobs is not None else None
        finished = []
        for i, r in enumerate(requests):
            if r.cancelled:  # cancelled from another thread during this step
                continue
            self._generated += r.record(token_list[i], logprob_list[i] if logprob_list else None, top[i] if top else None,
                                        self.eos_token_ids)
            if r.sink is not None:
                r.emit()
            if r.finish_reason is not None:
                finished.append(r)
        self._retire(finished)

    def _retire(self, finished: list[Request]) -> None:
        """Free the slots of finished requests, moving the last running sequence into each hole."""
        for r in sorted(finished, key=lambda r: r.slot, reverse=True):
            last = self._running.pop()
            if last is not r:
                self.cache.move(last.slot, r.slot, last.cached)
                last.slot = r.slot
                self._running[r.slot] = last
            self._reserved -= r.max_total
            r.slot = None
            r.done.set()
        if finished:
            self._sampler = None

    # ---------------------------------------------------------------- cancellation

    def _cancel(self, r: Request) -> None:
        if r.done.is_set() or r.cancelled:
            return
        r.cancelled = True
        if self._lock.acquire(blocking=False):  # no step in flight: free the slot right now
            try:
                self._cancel_now(r)
            finally:
                self._lock.release()
        else:  # a step is running: the loop frees it before the next one
            self._cancels.append(r)
            self._wake.set()

    def _cancel_now(self, r: Request) -> None:
        """Finish r as cancelled and take it out of whichever queue holds it (lock held)."""
        if r.done.is_set():
            return
        r.cancelled = True
        if r.finish_reason is None:
            r.finish("cancelled")
        if r.sink is not None:
            r.emit()
        if r.slot is not None:
            self._retire([r])
            return
        if r in self._waiting:
            self._waiting.remove(r)
        r.done.set()
