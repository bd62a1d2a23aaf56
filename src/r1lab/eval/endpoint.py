"""Completions from any OpenAI-compatible server (r1lab serve, vLLM, SGLang, a hosted API) for `r1lab eval`.

    r1lab eval --endpoint http://127.0.0.1:8000/v1 --model r1 --tasks math500.jsonl

One chat completion per sample, `concurrency` at a time, each retried on connection errors, 429 and 5xx
(exponential back-off). The response text handed to the grader is rebuilt the way r1lab's own engine writes
it: "<think>\\n" + reasoning_content + "\\n</think>\\n" + content when the server splits the thinking out
(DeepSeek API, vLLM's reasoning parsers, r1lab), else the content as sent (with its <think> tags, if any).
A 400 saying the prompt is over the context length skips that problem; any other 4xx stops with its message.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from ..tokenizer import END_THINK, THINK_PREFIX
from .evaluate import Generate, Request, Sample


class EndpointError(ValueError):
    """The server refused a request for a reason retrying will not fix."""


def api_base(url: str) -> str:
    """'http://host:8000' or 'http://host:8000/v1/' -> 'http://host:8000/v1'."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def response_text(message: dict) -> str:
    """The full response as the grader reads it, from a chat completion's message."""
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning is None:
        return content
    return THINK_PREFIX + reasoning + "\n" + END_THINK + "\n" + content


def _too_long(response: httpx.Response) -> bool:
    text = response.text.lower()
    return response.status_code == 400 and ("context_length" in text or "context length" in text
                                             or "maximum context" in text or "too long" in text)


def endpoint_generator(url: str, model: str, api_key: str | None = None, concurrency: int = 8, retries: int = 4,
                       timeout_s: float = 600.0, backoff_s: float = 0.5) -> Generate:
    """A Generate (see r1lab.eval.evaluate) over a server's /chat/completions."""
    base = api_base(url)
    key = api_key or os.environ.get("OPENAI_API_KEY") or os.environ.get("R1LAB_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    def one(client: httpx.Client, request: Request) -> Sample | None:
        body = {"model": model, "messages": request.messages, "max_tokens": request.max_tokens,
                "temperature": request.temperature, "top_p": request.top_p}
        if request.seed is not None:
            body["seed"] = request.seed
        if request.thinking_budget is not None:  # r1lab's field and vLLM's
            body["thinking_budget"] = body["thinking_token_budget"] = request.thinking_budget
        for attempt in range(retries + 1):
            try:
                response = client.post(base + "/chat/completions", json=body, headers=headers)
            except httpx.TransportError as error:
                if attempt == retries:
                    raise EndpointError(f"{base}: {type(error).__name__}: {error} (after {retries} retries)") from None
            else:
                if response.status_code == 200:
                    choice = response.json()["choices"][0]
                    tokens = (response.json().get("usage") or {}).get("completion_tokens", 0)
                    return Sample(response_text(choice.get("message") or {}), int(tokens or 0), choice.get("finish_reason"))
                if _too_long(response):
                    return None
                if response.status_code != 429 and response.status_code < 500:
                    raise EndpointError(f"{base}/chat/completions: HTTP {response.status_code}: {response.text[:300]}")
                if attempt == retries:
                    raise EndpointError(f"{base}/chat/completions: HTTP {response.status_code} after {retries} retries: "
                                        f"{response.text[:300]}")
            time.sleep(backoff_s * 2 ** attempt)
        return None  # not reached

    def generate(requests: list[Request]) -> list[Sample | None]:
        with httpx.Client(timeout=timeout_s) as client, ThreadPoolExecutor(max(1, concurrency)) as pool:
            return list(pool.map(lambda r: one(client, r), requests))

    return generate
