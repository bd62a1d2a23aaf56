"""The OpenAI-compatible HTTP API over one `Engine`: /v1/chat/completions (the thinking streamed as
`reasoning` and `reasoning_content`, the answer as `content`, tool calls as `tool_calls`), /v1/completions,
/v1/models, /health, /metrics, and the chat page at / (its files under /static).

Every request shares the engine's continuous batch. Admission is bounded: at most
`max_running + max_waiting` sequences are in flight, beyond that a request gets 429 at once rather than
waiting without bound. A streaming client that goes away has its sequences cancelled, which frees their
batch slots. `max_tokens` larger than what is left of the context is clamped to it (finish_reason
"length" says so); a prompt that leaves no room at all is a 400 `context_length_exceeded`. A missing
max_tokens means "up to the end of the context". A temperature below 1e-5 means greedy.

Log-probs: the chat endpoint's `logprobs` / `top_logprobs` (0-20) and the completions endpoint's
`logprobs` (0-20), `echo` and vLLM's `prompt_logprobs`, streamed and not; `max_tokens: 0` with `echo`
(or `prompt_logprobs`) scores a prompt without generating, which is how a distillation trainer has a
teacher score a student's tokens. They are raw (log_softmax at temperature 1; see serve/logprobs.py).

Function calling (`tools`, `tool_choice`, `parallel_tool_calls`), structured output (`response_format`) and
the thinking switch and budget: see plan.py, tools.py and docs/api.md. Request fields we do not implement
are ignored, as extra fields are; vLLM's `top_k` and `ignore_eos` are accepted.
"""
from __future__ import annotations

import hmac
from importlib import resources

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..model.families import generation_defaults
from ..tokenizer import max_token_chars
from .errors import APIError, install_error_handlers
from .generation import Job, JobStream, ServerState, chat_full, chat_stream, text_full, text_stream, with_disconnect_watch
from .plan import chat_messages, plan_chat, render_prompt
from .metrics import MetricsMiddleware
from .protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList, SamplingFields
from .security import DEFAULT_MAX_BODY, SecurityMiddleware


def create_app(engine, tokenizer, model_name: str, api_key: str | None = None, max_waiting: int = 128,
               max_running: int | None = None, max_body_bytes: int = DEFAULT_MAX_BODY,
               thinking_budget: int | None = None) -> FastAPI:
    """The FastAPI app serving `engine` (already started: `engine.start()`) under the id `model_name`.

    max_running defaults to the engine's own; with max_waiting it bounds the sequences in flight.
    max_body_bytes, the Host check and the security headers: see security.py. thinking_budget: close every
    answer's thinking after that many tokens (a request's thinking_budget overrides it)."""
    running = max_running if max_running is not None else int(getattr(engine, "max_running", 64))
    state = ServerState(engine, tokenizer, model_name, api_key or None, running + max_waiting, int(engine.max_model_len))
    app = FastAPI(title="r1lab", version=__version__, description="OpenAI-compatible API for an r1lab checkpoint.")
    state.thinking_budget = thinking_budget
    app.state.server = state
    install_error_handlers(app)
    # a prompt longer than this many characters cannot fit the context: refused without tokenizing it
    max_chars = state.max_model_len * max_token_chars(tokenizer) + 256
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    app.add_middleware(SecurityMiddleware, api_key=state.api_key, max_body_bytes=max_body_bytes)

    def check_key(request: Request) -> None:
        if state.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), state.api_key.encode()):
            raise APIError(401, "Incorrect API key provided. Send it as 'Authorization: Bearer <key>'.",
                           code="invalid_api_key")

    v1 = [Depends(check_key)]

    # the page's scripts, styles and the vendored marked / DOMPurify / KaTeX (no CDN, no inline code)
    app.mount("/static", StaticFiles(packages=[("r1lab.serve", "static")]), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(_page(), headers={"Cache-Control": "no-cache"})

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": state.model_name, **_engine_stats(state)}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(state.metrics.render(_engine_stats(state)),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", dependencies=v1)
    def models() -> ModelList:
        return ModelList(data=[ModelCard(id=state.model_name, created=state.created, max_model_len=state.max_model_len)])

    @app.post("/v1/chat/completions", dependencies=v1)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        _check_model(state, body)
        messages = chat_messages(body)
        _check_chars(state, sum(len(m.get("content") or "") for m in messages), max_chars, "messages")
        plan = await run_in_threadpool(plan_chat, state, body, messages)  # compiling a new schema takes a while
        # tokenizing a long prompt takes a while: in a worker thread, so the event loop keeps serving others
        prompt = await run_in_threadpool(_encode, lambda: render_prompt(state.tokenizer, messages, plan))
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        if body.top_logprobs and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        job = _admit(state, request, [prompt], body, max_tokens, (body.top_logprobs or 0) if body.logprobs else None,
                     constraint=plan.constraint)
        job.plan = plan
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return JobStream(job, chat_stream(state, job, include_usage))
        return await with_disconnect_watch(request, job, chat_full(state, job))

    @app.post("/v1/completions", dependencies=v1)
    async def completions(body: CompletionRequest, request: Request):
        _check_model(state, body)
        if body.max_tokens == 0 and not body.echo and body.prompt_logprobs is None:
            raise APIError(400, "max_tokens: 0 generates nothing; it is only allowed with echo or prompt_logprobs "
                           "(to score the prompt)", param="max_tokens")
        if isinstance(body.prompt, str) or (body.prompt and isinstance(body.prompt[0], str)):
            for text in [body.prompt] if isinstance(body.prompt, str) else body.prompt:
                _check_chars(state, len(text), max_chars, "prompt")
        prompts = await run_in_threadpool(_completion_prompts, state, body.prompt)
        echo = await run_in_threadpool(lambda: [state.tokenizer.decode(p) for p in prompts]) if body.echo else None
        scored = [k for k in (body.logprobs if body.echo else None, body.prompt_logprobs) if k is not None]
        job = _admit(state, request, prompts, body, body.max_tokens, body.logprobs, body.prompt_logprobs,
                     max(scored) if scored else None)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return JobStream(job, text_stream(state, job, include_usage, echo))
        return await with_disconnect_watch(request, job, text_full(state, job, echo))

    return app


def _page() -> str:
    return resources.files("r1lab.serve").joinpath("static/index.html").read_text(encoding="utf-8")


# ---------------------------------------------------------------- request checks

def _engine_stats(state: ServerState) -> dict:
    try:
        return dict(state.engine.stats())
    except Exception:  # noqa: BLE001 - metrics must never take the server down
        return {}


def _check_model(state: ServerState, body: SamplingFields) -> None:
    if body.model is not None and body.model != state.model_name:
        raise APIError(404, f"The model '{body.model}' does not exist; this server serves '{state.model_name}'.",
                       param="model", code="model_not_found")


def _check_chars(state: ServerState, chars: int, max_chars: int, param: str) -> None:
    if chars > max_chars:
        raise APIError(400, f"This model's maximum context length is {state.max_model_len} tokens; the prompt has "
                       f"{chars} characters, more than that many tokens can hold.", param=param,
                       code="context_length_exceeded")


def _encode(fn) -> list[int]:
    try:
        return list(fn())
    except (ValueError, TypeError, UnicodeError) as e:
        raise APIError(400, f"cannot tokenize the prompt: {e}", param="messages") from e
    except Exception as e:  # noqa: BLE001 - the Rust tokenizer raises plain Exception on unencodable text
        raise APIError(400, f"cannot tokenize the prompt: {e}") from e


def _completion_prompts(state: ServerState, prompt) -> list[list[int]]:
    if isinstance(prompt, str):
        texts = [prompt]
    elif isinstance(prompt[0], str):
        texts = prompt
    else:
        id_lists = [prompt] if isinstance(prompt[0], int) else prompt
        vocab = state.tokenizer.vocab_size
        for ids in id_lists:
            if any(i >= vocab for i in ids):
                raise APIError(400, f"token ids must be below the vocabulary size {vocab}", param="prompt")
        return [list(ids) for ids in id_lists]
    prompts = [_encode(lambda t=t: state.tokenizer.encode(t)) for t in texts]
    if any(not p for p in prompts):
        raise APIError(400, "the prompt is empty", param="prompt")
    return prompts


def _admit(state: ServerState, request: Request, prompts: list[list[int]], body: SamplingFields, max_tokens: int | None,
           top_logprobs: int | None = None, prompt_logprobs: int | None = None, scored: int | None = None,
           constraint=None) -> Job:
    """Check the prompts fit, build one SamplingParams per choice, and take capacity (given back by `Job.release`).
    top_logprobs: None for no log-probs; prompt_logprobs: what the response shows as vLLM's prompt_logprobs;
    scored: the alternatives the engine computes per prompt token (None: the prompt is not scored);
    constraint: a function making each choice's constraint (None: unconstrained)."""
    from ..engine import SamplingParams

    for p in prompts:
        if len(p) > state.max_model_len or (len(p) == state.max_model_len and max_tokens != 0):
            room = ", which leaves no room to generate." if len(p) == state.max_model_len else "."
            raise APIError(400, f"This model's maximum context length is {state.max_model_len} tokens; the prompt has "
                           f"{len(p)} tokens{room}", param="messages",
                           code="context_length_exceeded")
    # sampling knobs the request leaves out come from the checkpoint's generation_config.json (open models)
    told = body.model_fields_set
    defaults = generation_defaults(getattr(state.engine, "model", None))  # test doubles may have no model
    temperature = body.temperature if "temperature" in told else defaults.get("temperature", body.temperature)
    top_p = body.top_p if "top_p" in told else defaults.get("top_p", body.top_p)
    # a temperature this close to 0 would overflow logits / T: it means greedy (as vLLM treats it)
    temperature = 0.0 if temperature < 1e-5 else temperature
    seqs, params = [], []
    for p in prompts:
        room = state.max_model_len - len(p)
        for i in range(body.n):
            seed = None if body.seed is None else (body.seed + i) % (2**63)
            params.append(SamplingParams(max_tokens=room if max_tokens is None else min(max_tokens, room),
                                         temperature=temperature, top_p=top_p, top_k=body.top_k, seed=seed,
                                         stop=body.stop_list(), ignore_eos=body.ignore_eos, logprobs=top_logprobs is not None,
                                         top_logprobs=top_logprobs or 0, prompt_logprobs=scored,
                                         constraint=constraint() if constraint is not None else None))
            seqs.append(p)
    if state.in_flight + len(seqs) > state.capacity:
        raise APIError(429, f"The server is at capacity ({state.capacity} sequences in flight); retry shortly.",
                       code="queue_full")
    state.in_flight += len(seqs)
    prompt_tokens = sum(len(p) for p in prompts)
    state.metrics.prompt_tokens += prompt_tokens
    request.state.usage = usage = [prompt_tokens, 0]
    return Job(state, seqs, params, prompt_tokens, usage, top_logprobs=top_logprobs, prompt_logprobs=prompt_logprobs)
