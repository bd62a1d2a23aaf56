"""The server against real HTTP on loopback: the official `openai` client, streaming, concurrency,
disconnects, back-pressure, auth, fuzzed bad input — plus the reasoning splitter and the terminal chat.

Most tests use a *scripted* model: a tiny DeepSeek-V3 whose blocks write nothing into the residual
stream and whose LM head maps each token of a fixed chain to the next, so after any prompt ending in
"\\n" (the chat template's "<think>\\n") it emits exactly "quick brown fox</think> Lazy dog!<EOS>". That
lets us check reasoning_content / content end to end. Batching equivalence uses a random model.
"""
from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import openai
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import r1lab
from conftest import chain_model, serve_in_background, tiny_config
from r1lab.engine import Engine
from r1lab.model import Transformer, save_checkpoint
from r1lab.serve import ReasoningSplitter, create_app, reasoning_token_count, split_reasoning
from r1lab.serve.cli import ServerThread

THINKING, ANSWER = "quick brown fox", "Lazy dog!"
USER = [{"role": "user", "content": "What is 4821 + 1379?"}]


# ---------------------------------------------------------------- models and servers

def scripted_model(tokenizer) -> Transformer:
    """A model that, after "\\n", writes THINKING, "</think>", " " + ANSWER, then EOS (see module docstring)."""
    last_prompt_token = tokenizer.apply_chat_template(USER, add_generation_prompt=True)[-1]
    chain = ([last_prompt_token] + tokenizer.encode(THINKING) + [tokenizer.end_think_token_id]
             + tokenizer.encode(" " + ANSWER) + [tokenizer.eos_token_id])
    return chain_model(tokenizer, chain)


def scripted_checkpoint(tokenizer, folder) -> str:
    save_checkpoint(scripted_model(tokenizer), tokenizer, folder)
    return str(folder)


@dataclass
class Served:
    url: str
    engine: Engine
    tokenizer: object
    name: str


@contextmanager
def serve(model, tokenizer, name: str, *, engine: Engine | None = None, engine_max_running: int = 8,
          max_model_len: int = 64, **app_kwargs):
    """A real uvicorn server on a free loopback port, in a background thread (on `engine` if given)."""
    own = engine is None
    if own:
        engine = Engine(model, tokenizer, max_running=engine_max_running, max_model_len=max_model_len)
        engine.start()
    try:
        with ServerThread(create_app(engine, tokenizer, name, **app_kwargs)) as server:
            yield Served(server.url, engine, tokenizer, name)
    finally:
        if own:
            engine.stop()


@pytest.fixture(scope="module")
def reasoner_dir(tokenizer, tmp_path_factory):
    return scripted_checkpoint(tokenizer, tmp_path_factory.mktemp("ckpt") / "reasoner")


@pytest.fixture(scope="module")
def server(reasoner_dir):
    model, tokenizer = r1lab.load(reasoner_dir)  # the path `r1lab serve` takes
    with serve(model, tokenizer, "reasoner") as s:
        yield s


@pytest.fixture(scope="module")
def long_server(server):
    """The scripted model with a long context, for requests that must still be running when we look."""
    with serve(scripted_model(server.tokenizer), server.tokenizer, "reasoner", engine_max_running=4, max_model_len=4096) as s:
        yield s


@pytest.fixture(scope="module")
def random_server(tokenizer):
    torch.manual_seed(1)
    model = Transformer(tiny_config(tokenizer.vocab_size)).eval()
    with serve(model, tokenizer, "random", engine_max_running=32) as s:
        yield s


def client(s: Served, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.url + "/v1", api_key=kw.pop("api_key", "none"), max_retries=0, **kw)


def wait_idle(engine: Engine, timeout: float = 5.0) -> float:
    """Seconds until the engine has nothing running or waiting (fails after `timeout`)."""
    start = time.monotonic()
    while engine.stats()["running"] or engine.stats()["waiting"]:
        assert time.monotonic() - start < timeout, f"engine still busy: {engine.stats()}"
        time.sleep(0.02)
    return time.monotonic() - start


# ---------------------------------------------------------------- the splitter

@pytest.mark.parametrize("text, reasoning, content", [
    ("abc\n</think>\n\nThe answer", "abc\n", "The answer"),
    ("never closed", "never closed", ""),
    ("<think>\nstray tag</think>x", "\nstray tag", "x"),
    ("</think>  answer only", "", "answer only"),
    ("a</think>b</think>c", "a", "b</think>c"),
    ("", "", ""),
    ("  \n", "  \n", ""),
    ("<thin", "<thin", ""),
    ("x</thi", "x</thi", ""),
    ("think <think> later", "think <think> later", ""),
])
def test_split_reasoning(text, reasoning, content):
    assert split_reasoning(text) == (reasoning, content)


def reference_split(text: str) -> tuple[str, str]:
    """The rule stated plainly, to check the incremental splitter against."""
    if text.lstrip().startswith("<think>"):
        text = text.lstrip()[len("<think>"):]
    if "</think>" not in text:
        return text, ""
    reasoning, _, content = text.partition("</think>")
    return reasoning, content.lstrip()


pieces = st.lists(st.sampled_from(["<", "/", "think", ">", "</think>", "<think>", "\n", " ", "a", "é", "🙂", "</th", "ink>"]),
                  max_size=14).map("".join)


@given(text=pieces, cuts=st.lists(st.integers(0, 60), max_size=8))
@settings(max_examples=400, deadline=None)
def test_splitter_is_chunking_invariant(text, cuts):
    splitter = ReasoningSplitter()
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    reasoning = content = ""
    for a, b in zip(bounds, bounds[1:]):
        delta = splitter.feed(text[a:b])
        reasoning, content = reasoning + delta.reasoning, content + delta.content
    reasoning += splitter.finish().reasoning
    assert (reasoning, content) == reference_split(text) == split_reasoning(text)


def test_reasoning_token_count(tokenizer):
    ids = tokenizer.encode("ab") + [tokenizer.end_think_token_id] + tokenizer.encode("cd")
    assert reasoning_token_count(ids, tokenizer.end_think_token_id) == len(tokenizer.encode("ab")) + 1
    assert reasoning_token_count(ids[:2], tokenizer.end_think_token_id) == 2  # never closed: all of it
    spelled = tokenizer.encode("ab</") + tokenizer.encode("think>") + tokenizer.encode("xyz")  # tag in pieces
    n = reasoning_token_count(spelled, -1, tokenizer.decode)
    assert "</think>" in tokenizer.decode(spelled[:n]) and "</think>" not in tokenizer.decode(spelled[:n - 1])


# ---------------------------------------------------------------- the OpenAI client, end to end

def expected_usage(tokenizer):
    prompt = len(tokenizer.apply_chat_template(USER, add_generation_prompt=True))
    reasoning = len(tokenizer.encode(THINKING)) + 1  # ... and the </think> token
    completion = reasoning + len(tokenizer.encode(" " + ANSWER)) + 1  # ... and EOS
    return prompt, completion, reasoning


def test_openai_client_non_streaming(server):
    r = client(server).chat.completions.create(model="reasoner", messages=USER, temperature=0.7, seed=1)
    choice = r.choices[0]
    assert choice.message.reasoning_content == THINKING
    assert choice.message.content == ANSWER
    assert choice.message.role == "assistant" and choice.finish_reason == "stop" and choice.index == 0
    prompt, completion, reasoning = expected_usage(server.tokenizer)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (prompt, completion, prompt + completion)
    assert r.usage.completion_tokens_details.reasoning_tokens == reasoning
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == "reasoner"
    assert r.system_fingerprint and abs(r.created - time.time()) < 60


def test_openai_client_streaming_with_usage(server):
    stream = client(server).chat.completions.create(model="reasoner", messages=USER, stream=True,
                                                    stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.id for c in chunks} == {chunks[0].id} and all(c.object == "chat.completion.chunk" for c in chunks)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    assert (reasoning, content) == (THINKING, ANSWER)
    # no answer text arrives before the thinking is complete
    first_content = next(i for i, d in enumerate(deltas) if d.content)
    assert not any(getattr(d, "reasoning_content", None) for d in deltas[first_content:])
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    prompt, completion, reasoning_tokens = expected_usage(server.tokenizer)
    assert usage_chunk.usage.completion_tokens == completion
    assert usage_chunk.usage.completion_tokens_details.reasoning_tokens == reasoning_tokens


def test_raw_sse_framing(server):
    body = {"messages": USER, "stream": True, "max_tokens": 4}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])
    last = json.loads(events[-3][len("data: "):])
    assert last["choices"][0]["finish_reason"] == "length"  # no usage chunk without include_usage


def test_n_choices_and_seeds(server):
    c = client(server)
    r = c.chat.completions.create(model="reasoner", messages=USER, n=3, seed=5)
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    assert all((ch.message.reasoning_content, ch.message.content) == (THINKING, ANSWER) for ch in r.choices)
    assert r.usage.completion_tokens == 3 * expected_usage(server.tokenizer)[1]
    stream = c.chat.completions.create(model="reasoner", messages=USER, n=2, stream=True)
    texts = {0: "", 1: ""}
    finishes = {}
    for chunk in stream:
        for ch in chunk.choices:
            texts[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finishes[ch.index] = ch.finish_reason
    assert texts == {0: ANSWER, 1: ANSWER} and finishes == {0: "stop", 1: "stop"}


def test_seeded_choices_reproduce(random_server):
    """n choices with seed s are the requests with seeds s, s+1, ... (a random model: real sampling)."""
    c = client(random_server)
    many = c.completions.create(model="random", prompt="Hello", n=3, seed=11, max_tokens=12, temperature=1.0)
    singles = [c.completions.create(model="random", prompt="Hello", seed=11 + i, max_tokens=12, temperature=1.0)
               for i in range(3)]
    assert [ch.text for ch in many.choices] == [s.choices[0].text for s in singles]
    assert len({ch.text for ch in many.choices}) > 1


def test_thinking_cut_by_max_tokens(server):
    r = client(server).chat.completions.create(model="reasoner", messages=USER, max_tokens=3)
    choice = r.choices[0]
    assert choice.finish_reason == "length"
    assert not choice.message.content
    assert choice.message.reasoning_content == server.tokenizer.decode(server.tokenizer.encode(THINKING)[:3])
    assert r.usage.completion_tokens == 3 and r.usage.completion_tokens_details.reasoning_tokens == 3


def test_stop_strings_and_completions_endpoint(server):
    c = client(server)
    r = c.chat.completions.create(model="reasoner", messages=USER, stop=["dog"])
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("Lazy ", "stop")
    prompt_text = server.tokenizer.apply_chat_template(USER, add_generation_prompt=True, tokenize=False)
    r = c.completions.create(model="reasoner", prompt=prompt_text)
    assert r.choices[0].text == f"{THINKING}</think> {ANSWER}" and r.object == "text_completion"
    # token ids, a list of prompts, echo, and streaming
    ids = server.tokenizer.apply_chat_template(USER, add_generation_prompt=True)
    r = c.completions.create(model="reasoner", prompt=[ids, ids], max_tokens=2, echo=True)
    assert [ch.index for ch in r.choices] == [0, 1] and r.choices[1].text.startswith(prompt_text)
    text = "".join(ch.choices[0].text for ch in c.completions.create(model="reasoner", prompt=prompt_text, stream=True)
                   if ch.choices)
    assert text == f"{THINKING}</think> {ANSWER}"


def test_chat_split_equals_splitter_on_raw_completion(random_server):
    """Gibberish from a random model, sampled with a seed: the chat endpoint's split is the splitter
    applied to the raw completion of the same prompt ids with the same seed."""
    c = client(random_server)
    ids = random_server.tokenizer.apply_chat_template(USER, add_generation_prompt=True)
    for seed in range(3):
        raw = c.completions.create(model="random", prompt=ids, seed=seed, max_tokens=40).choices[0].text
        msg = c.chat.completions.create(model="random", messages=USER, seed=seed, max_tokens=40).choices[0].message
        reasoning, content = split_reasoning(raw)
        assert (msg.reasoning_content or "", msg.content or "") == (reasoning, content)


def test_history_thinking_is_not_fed_back(server):
    """An earlier answer with reasoning_content (or thinking inline) gives the same prompt as without."""
    base = USER + [{"role": "assistant", "content": ANSWER}, {"role": "user", "content": "And?"}]
    with_reasoning = USER + [{"role": "assistant", "content": ANSWER, "reasoning_content": "long thoughts"},
                             {"role": "user", "content": "And?"}]
    inline = USER + [{"role": "assistant", "content": f"<think>\nlong</think>\n\n{ANSWER}"}, {"role": "user", "content": "And?"}]
    usage = [client(server).chat.completions.create(model="reasoner", messages=m, max_tokens=1).usage.prompt_tokens
             for m in (base, with_reasoning, inline)]
    assert usage[0] == usage[1] == usage[2]


# ---------------------------------------------------------------- batching under load

def test_32_concurrent_streams_equal_sequential_greedy(random_server):
    prompts = [[{"role": "user", "content": f"Question {i}: what is {i} + {i * 7}?"}] for i in range(32)]
    c = client(random_server)
    sequential = []
    for m in prompts:
        msg = c.chat.completions.create(model="random", messages=m, temperature=0, max_tokens=16).choices[0].message
        sequential.append((msg.reasoning_content or "", msg.content or ""))

    async def one(aclient, messages):
        stream = await aclient.chat.completions.create(model="random", messages=messages, temperature=0,
                                                       max_tokens=16, stream=True)
        reasoning = content = ""
        async for chunk in stream:
            for ch in chunk.choices:
                reasoning += getattr(ch.delta, "reasoning_content", None) or ""
                content += ch.delta.content or ""
        return reasoning, content

    async def all_at_once():
        async with openai.AsyncOpenAI(base_url=random_server.url + "/v1", api_key="none", max_retries=0) as aclient:
            return await asyncio.gather(*(one(aclient, m) for m in prompts))

    peak = []
    watcher = threading.Thread(target=lambda: [peak.append(random_server.engine.stats()["running"]) or time.sleep(0.005)
                                               for _ in range(400)], daemon=True)
    watcher.start()
    concurrent = asyncio.run(all_at_once())
    assert concurrent == sequential
    watcher.join()
    assert max(peak) > 8, f"requests were not batched together (peak running {max(peak)})"


def test_disconnect_frees_the_slot(long_server):
    engine = long_server.engine
    wait_idle(engine)
    before = engine.stats()["generated_tokens"]
    body = {"messages": USER, "stream": True, "ignore_eos": True, "max_tokens": 4000}
    with httpx.Client(timeout=10) as http:
        with http.stream("POST", long_server.url + "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            while "reasoning_content" not in next(lines):  # generating now
                pass
            assert engine.stats()["running"] == 1
    seconds = wait_idle(engine)
    produced = engine.stats()["generated_tokens"] - before
    assert produced < 2000, f"the engine kept generating after the client left ({produced} tokens)"
    print(f"slot freed {seconds:.2f} s after the disconnect; {produced} of 4000 tokens generated")

    # a non-streaming request whose client gives up is cancelled too (the server polls for the disconnect)
    before = engine.stats()["generated_tokens"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(long_server.url + "/v1/chat/completions", json={**body, "stream": False}, timeout=0.5)
    seconds = wait_idle(engine)
    produced = engine.stats()["generated_tokens"] - before
    assert produced < 2000, f"the engine kept generating after the client left ({produced} tokens)"
    print(f"non-streaming: slot freed {seconds:.2f} s after the disconnect; {produced} of 4000 tokens generated")


def test_queue_full_gives_429(long_server):
    """Capacity 2 (max_running 1 + max_waiting 1) on a shared engine: a third request is turned away."""
    server = long_server
    with serve(None, server.tokenizer, "reasoner", engine=server.engine, max_running=1, max_waiting=1) as small:
        body = {"messages": USER, "stream": True, "ignore_eos": True, "max_tokens": 4000}
        with httpx.Client(timeout=10) as http:
            with http.stream("POST", small.url + "/v1/chat/completions", json=body) as a, \
                 http.stream("POST", small.url + "/v1/chat/completions", json=body) as b:
                assert a.status_code == b.status_code == 200
                a_lines, b_lines = a.iter_lines(), b.iter_lines()  # (a dropped line iterator closes its response)
                next(a_lines), next(b_lines)
                r = http.post(small.url + "/v1/chat/completions", json={"messages": USER})
                assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
                with pytest.raises(openai.RateLimitError):
                    client(small).chat.completions.create(model="reasoner", messages=USER)
        wait_idle(server.engine)
        assert httpx.post(small.url + "/v1/chat/completions", json={"messages": USER}).status_code == 200
    # the engine's own bound on waiting requests (QueueFull) is a 429 as well
    full = Engine(scripted_model(server.tokenizer), server.tokenizer, max_running=1, max_model_len=64, max_waiting=0)
    with serve(None, server.tokenizer, "reasoner", engine=full) as s:
        check_error(httpx.post(s.url + "/v1/chat/completions", json={"messages": USER}), 429)
        with httpx.stream("POST", s.url + "/v1/chat/completions", json={"messages": USER, "stream": True}) as r:
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert '"rate_limit_error"' in events[-2] and events[-1] == "data: [DONE]"  # in-band: headers were sent


def test_api_key(server):
    with serve(None, server.tokenizer, "reasoner", engine=server.engine, api_key="sekret") as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekret"}):
            r = httpx.post(s.url + "/v1/chat/completions", json={"messages": USER}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(s.url + "/v1/models").status_code == 401
        assert httpx.get(s.url + "/health").status_code == 200  # liveness stays open
        with pytest.raises(openai.AuthenticationError):
            client(s, api_key="wrong").models.list()
        r = client(s, api_key="sekret").chat.completions.create(model="reasoner", messages=USER)
        assert r.choices[0].message.content == ANSWER


def test_models_health_metrics_and_page(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["reasoner"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    client(server).chat.completions.create(model="reasoner", messages=USER, stream=True).close()
    metrics = httpx.get(server.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for name in ("r1lab_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}", "r1lab_generated_tokens_total",
                 "r1lab_prompt_tokens_total", "r1lab_request_latency_seconds_bucket", "r1lab_time_to_first_token_seconds_count",
                 "r1lab_queue_depth", "r1lab_running_requests"):
        assert name in text, name
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line and not line.startswith("#")}
    assert values["r1lab_generated_tokens_total"] > 0 and values["r1lab_time_to_first_token_seconds_count"] > 0
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    # the page is markup only: its scripts and styles are static files (a strict CSP needs no 'unsafe-inline')
    assert "<style" not in page.text and "style=" not in page.text and not re.search(r"<script(?![^>]*\bsrc=)", page.text)
    links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert links and all(link.startswith("static/") for link in links), links  # nothing from a CDN
    files = {link: httpx.get(server.url + "/" + link) for link in links}
    assert all(r.status_code == 200 and r.content for r in files.values()), {k: r.status_code for k, r in files.items()}
    own = page.text + files["static/chat.js"].text + files["static/markdown.js"].text
    for marker in ('id="messages"', 'id="input"', 'id="send"', 'id="stop"', 'id="new-chat"', 'id="temperature"',
                   'id="max-tokens"', 'id="api-key"', 'name="viewport"', "getReader", "AbortController", "DOMPurify", "katex"):
        assert marker in own, marker
    assert "innerHTML" not in own and "http://" not in own and "https://" not in own
    font = httpx.get(server.url + "/static/vendor/katex/fonts/KaTeX_Main-Regular.woff2")
    assert font.status_code == 200 and font.content[:4] == b"wOF2"


def test_package_data_ships_every_page_file():
    """pyproject's package-data globs cover every file the page loads (vendored libraries and fonts too),
    so an installed wheel serves the same page as this checkout."""
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["r1lab"]
    package = repo / "src" / "r1lab"
    shipped = {f for pattern in patterns for f in package.glob(pattern) if f.is_file()}
    needed = {f for f in (package / "serve" / "static").rglob("*") if f.is_file() and f.name != "README.md"}
    assert len(needed) > 25 and not needed - shipped, sorted(str(f) for f in needed - shipped)


# ---------------------------------------------------------------- bad input never gets a 5xx

def check_error(r: httpx.Response, status: int | None = None) -> dict:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if status is not None:
        assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
    assert set(err) == {"message", "type", "param", "code"}
    return err


@pytest.mark.parametrize("path, body, status, param", [
    ("/v1/chat/completions", {}, 400, "messages"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
    ("/v1/chat/completions", {"messages": [{"content": "x"}]}, 400, "messages.0.role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400, None),
    ("/v1/chat/completions", {"messages": USER, "max_tokens": -1}, 400, "max_tokens"),
    ("/v1/chat/completions", {"messages": USER, "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/chat/completions", {"messages": USER, "max_tokens": "10"}, 400, "max_tokens"),
    ("/v1/chat/completions", {"messages": USER, "max_completion_tokens": 2.5}, 400, "max_completion_tokens"),
    ("/v1/chat/completions", {"messages": USER, "temperature": 2.5}, 400, "temperature"),
    ("/v1/chat/completions", {"messages": USER, "temperature": -0.1}, 400, "temperature"),
    ("/v1/chat/completions", {"messages": USER, "temperature": "hot"}, 400, "temperature"),
    ("/v1/chat/completions", {"messages": USER, "top_p": 0}, 400, "top_p"),
    ("/v1/chat/completions", {"messages": USER, "n": 0}, 400, "n"),
    ("/v1/chat/completions", {"messages": USER, "n": 1000}, 400, "n"),
    ("/v1/chat/completions", {"messages": USER, "stream": "yes"}, 400, "stream"),
    ("/v1/chat/completions", {"messages": USER, "stop": 3}, 400, "stop"),
    ("/v1/chat/completions", {"messages": USER, "seed": 2**70}, 400, "seed"),
    ("/v1/chat/completions", {"messages": USER, "stream_options": {"include_usage": "yes"}}, 400, "stream_options.include_usage"),
    ("/v1/chat/completions", [1, 2, 3], 400, None),
    ("/v1/chat/completions", "just a string", 400, None),
    ("/v1/completions", {}, 400, "prompt"),
    ("/v1/completions", {"prompt": []}, 400, "prompt"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt"),
    ("/v1/completions", {"prompt": [10**6]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [-1]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [[1, 2], []]}, 400, "prompt"),
    ("/v1/completions", {"prompt": ["a", 1]}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "n": 17}, 400, "n"),
])
def test_bad_requests_are_400(server, path, body, status, param):
    err = check_error(httpx.post(server.url + path, json=body), status)
    if param is not None:
        assert err["param"] == param or (err["param"] or "").startswith(param), err


def test_other_errors(server):
    url = server.url
    check_error(httpx.post(url + "/v1/chat/completions", content=b'{"messages": [',
                           headers={"Content-Type": "application/json"}), 400)
    check_error(httpx.post(url + "/v1/chat/completions", content=b"not json at all"), 400)
    check_error(httpx.post(url + "/v1/chat/completions", content=b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
                           headers={"Content-Type": "application/json"}))
    err = check_error(httpx.post(url + "/v1/chat/completions", json={"model": "gpt-4o", "messages": USER}), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    check_error(httpx.post(url + "/v1/completions", json={"model": "nope", "prompt": "x"}), 404)
    check_error(httpx.get(url + "/v2/whatever"), 404)
    check_error(httpx.get(url + "/v1/chat/completions"), 405)
    huge = "lorem ipsum " * 5000
    err = check_error(httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": huge}]}), 400)
    assert err["code"] == "context_length_exceeded"
    check_error(httpx.post(url + "/v1/completions", json={"prompt": [5] * 1000}), 400)
    with pytest.raises(openai.NotFoundError):
        client(server).chat.completions.create(model="gpt-4o", messages=USER)
    with pytest.raises(openai.BadRequestError):
        client(server).chat.completions.create(model="reasoner", messages=USER, temperature=9)
    # max_tokens past the context is clamped to what is left of it
    r = httpx.post(url + "/v1/completions", json={"prompt": [5] * 60, "max_tokens": 10**9, "ignore_eos": True}).json()
    assert r["usage"]["completion_tokens"] == 64 - 60 and r["choices"][0]["finish_reason"] == "length"


json_leaf = (st.none() | st.booleans() | st.integers() | st.integers(-3, 300) | st.floats(allow_nan=True)
             | st.text(max_size=12) | st.sampled_from(["reasoner", "user", "assistant", "system", "text", ""]))
json_value = st.recursive(json_leaf,
                          lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                          max_leaves=10)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]) | json_value,
                                 "content": st.text(max_size=20) | json_value})
field_value = {
    "model": st.just("reasoner") | json_value, "messages": st.lists(message, max_size=3) | json_value,
    "prompt": st.text(max_size=20) | st.lists(st.integers(-2, 400), max_size=5) | json_value,
    "max_tokens": st.integers(-2, 8) | json_value, "max_completion_tokens": st.integers(-2, 8) | json_value,
    "temperature": st.floats(-1, 3) | json_value, "top_p": st.floats(-1, 2) | json_value,
    "n": st.integers(-1, 20) | json_value, "seed": st.integers() | json_value,
    "stop": st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=20) | json_value,
    "stream": st.booleans() | json_value, "stream_options": st.fixed_dictionaries({"include_usage": json_value}) | json_value,
    "top_k": st.integers(-5, 1000) | json_value, "ignore_eos": st.booleans() | json_value, "echo": st.booleans() | json_value,
    "logprobs": json_value, "top_logprobs": st.integers(-2, 25) | json_value, "prompt_logprobs": st.integers(-2, 25) | json_value,
    "unknown_field": json_value,
}
tool = st.fixed_dictionaries({"type": st.just("function") | json_value, "function": st.fixed_dictionaries(
    {"name": st.sampled_from(["f", "get_weather", "bad name", ""]) | json_value},
    optional={"parameters": st.just({"type": "object", "properties": {"a": {"enum": [1, 2]}}}) | json_value})})
call = st.fixed_dictionaries({"id": st.sampled_from(["c1", "c2"]) | json_value, "type": st.just("function"),
                              "function": st.fixed_dictionaries({"name": st.just("f") | json_value,
                                                                 "arguments": st.sampled_from(["{}", '{"a": 1}', "[", ""])})})
tool_fields = {  # function calling, structured output and the thinking switch
    "tools": st.lists(tool, max_size=2) | json_value,
    "tool_choice": st.sampled_from(["none", "auto", "required"]) | st.just({"type": "function", "function": {"name": "f"}})
    | json_value, "parallel_tool_calls": st.booleans() | json_value,
    "response_format": st.sampled_from([{"type": "json_object"}, {"type": "text"}, {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "boolean"}}}}},
        {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}]) | json_value,
    "chat_template_kwargs": st.dictionaries(st.text(max_size=8), json_value, max_size=2) | json_value,
    "reasoning_effort": st.sampled_from(["none", "low", "high"]) | json_value,
    "thinking_budget": st.integers(-1, 4) | json_value,
}
field_value.update(tool_fields)
tool_message = st.fixed_dictionaries({"role": st.just("tool"), "content": st.text(max_size=10),
                                      "tool_call_id": st.sampled_from(["c1", "c2", "zz"])})
calling_message = st.fixed_dictionaries({"role": st.just("assistant"), "content": st.none() | st.text(max_size=5),
                                         "tool_calls": st.lists(call, min_size=1, max_size=2)},
                                        optional={"reasoning": st.text(max_size=5), "reasoning_content": st.text(max_size=5)})
bodies = st.fixed_dictionaries({}, optional=field_value)
# valid requests with one field (maybe) replaced by anything: these reach generation, not just validation
valid_fields = {
    "model": st.just("reasoner"), "max_tokens": st.integers(1, 6), "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1),
    "n": st.integers(1, 3), "seed": st.integers(-(2**63), 2**63 - 1),
    "stop": st.text(max_size=3) | st.lists(st.text(max_size=3), max_size=3),
    "stream": st.booleans(), "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "top_k": st.integers(0, 1000), "ignore_eos": st.booleans(),
}
valid_chat = st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["user", "assistant", "system", "developer"]),
    "content": st.text(max_size=30)
    | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=10)}), max_size=2)})
    | calling_message | tool_message, min_size=1, max_size=4)},
    optional={**valid_fields, "logprobs": st.booleans(), "top_logprobs": st.integers(0, 20), **tool_fields})
valid_completion = st.fixed_dictionaries({"prompt": st.text(min_size=1, max_size=30)
                                          | st.lists(st.integers(0, 319), min_size=1, max_size=8)
                                          | st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=3)},
                                         optional={**valid_fields, "echo": st.booleans(), "max_tokens": st.integers(0, 6),
                                                   "logprobs": st.integers(0, 20), "prompt_logprobs": st.integers(0, 20)})
mutation = st.dictionaries(st.sampled_from(sorted(field_value)), json_value, max_size=1)
headers = st.fixed_dictionaries({}, optional={
    "Content-Type": st.sampled_from(["application/json"] * 6 + ["text/plain", "application/x-www-form-urlencoded", "",
                                                                   "multipart/form-data", "application/json; charset=latin-1"]),
    "Authorization": st.sampled_from(["Bearer x", "Basic abc", "", "Bearer"]),
    "Accept": st.sampled_from(["text/event-stream", "*/*", "application/xml"]),
})
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
requests_ = st.one_of(
    st.tuples(st.just(CHAT), st.tuples(valid_chat, mutation).map(lambda t: json.dumps({**t[0], **t[1]}).encode())),
    st.tuples(st.just(COMPLETIONS), st.tuples(valid_completion, mutation).map(lambda t: json.dumps({**t[0], **t[1]}).encode())),
    st.tuples(st.sampled_from([CHAT, COMPLETIONS]), (bodies | json_value).map(lambda b: json.dumps(b).encode())),
    st.tuples(st.sampled_from([CHAT, COMPLETIONS]), st.binary(max_size=40)),
)


def fuzz_one(url: str, path: str, content: bytes, hdrs: dict) -> int:
    with httpx.Client(timeout=30) as http:
        r = http.post(url + path, content=content, headers=hdrs)
    assert r.status_code < 500, (r.status_code, r.text[:300], content[:300])
    if r.status_code >= 400:
        check_error(r)
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.endswith("data: [DONE]\n\n") and '"error"' not in r.text
    else:
        assert r.json()["choices"]
    return r.status_code


@given(request=requests_, hdrs=headers)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_fuzz_never_5xx(server, request, hdrs):
    fuzz_one(server.url, *request, hdrs)


@pytest.mark.slow
@given(request=requests_, hdrs=headers)
@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_never_5xx_long(server, request, hdrs):
    fuzz_one(server.url, *request, hdrs)


# ---------------------------------------------------------------- command lines

def test_serve_command(reasoner_dir, tmp_path):
    proc, url = serve_in_background([reasoner_dir, "--model-name", "r1"], {**os.environ, "R1LAB_API_KEY": "k"})
    try:
        oa = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        assert [m.id for m in oa.models.list().data] == ["r1"]
        assert oa.chat.completions.create(model="r1", messages=USER).choices[0].message.content == ANSWER
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert "POST /v1/chat/completions 200" in out, out  # one log line per request


def test_chat_command_piped(reasoner_dir):
    stdin = "What is 1 + 1?\n/temperature 0\n/temperature abc\nAgain?\n/reset\n/exit\nnever read\n"
    out = subprocess.run([sys.executable, "-m", "r1lab.cli", "chat", reasoner_dir], input=stdin, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(THINKING) == 2 and out.stdout.count(ANSWER) == 2, out.stdout
    assert "(temperature = 0.0)" in out.stdout and "needs a number" in out.stdout and "new conversation" in out.stdout
    assert "never read" not in out.stdout and "\x1b[" not in out.stdout  # no colour codes when piped


def test_chat_thinking_is_dimmed(reasoner_dir):
    import argparse

    from rich.console import Console

    from r1lab.serve.chat import add_chat_arguments, chat_loop

    p = argparse.ArgumentParser()
    add_chat_arguments(p)
    args = p.parse_args([reasoner_dir])
    model, tokenizer = r1lab.load(reasoner_dir)
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, color_system="standard", highlight=False, soft_wrap=True)
    assert chat_loop(Engine(model, tokenizer), tokenizer, args, io.StringIO("hi\n"), console) == 0
    out = buf.getvalue()
    dimmed = "".join(re.findall(r"\x1b\[2m(.*?)\x1b\[0m", out, flags=re.S))
    assert THINKING in dimmed and ANSWER not in dimmed
    assert ANSWER in re.sub(r"\x1b\[[0-9;]*m", "", out)
