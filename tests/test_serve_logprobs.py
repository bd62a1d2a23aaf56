"""Log-probs: the engine's top alternatives and prompt scores, and the API's shapes read by the official
`openai` client from a real server on loopback (chat and completions, streamed and not, echo scoring with
max_tokens 0, vLLM's prompt_logprobs), each number checked against a direct forward pass of the model."""
from __future__ import annotations

import httpx
import pytest
import torch

import test_serve as ts
from conftest import tiny_config
from r1lab.engine import Engine, SamplingParams
from r1lab.engine import engine as engine_module
from r1lab.model import Transformer
from r1lab.serve.logprobs import TokenText

TOL = 1e-4


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(3)
    return Transformer(tiny_config(tokenizer.vocab_size)).eval()


@pytest.fixture(scope="module")
def server(model, tokenizer):
    with ts.serve(model, tokenizer, "random", engine_max_running=8, max_model_len=96) as s:
        yield s


def log_softmax(model, ids: list[int]) -> torch.Tensor:
    """(len(ids), V): the model's raw log-probs at every position of one sequence, by a plain forward pass."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).float(), -1)[0]


def scores_of(model, ids: list[int], start: int) -> torch.Tensor:
    """log p(ids[i] | ids[:i]) for i >= start, by a direct forward pass."""
    lp = log_softmax(model, ids)
    return lp[start - 1:-1].gather(1, torch.tensor(ids[start:])[:, None])[:, 0]


# ---------------------------------------------------------------- the engine

def test_engine_prompt_logprobs_and_top_alternatives(model, tokenizer, monkeypatch):
    prompt = tokenizer.encode("What is 4821 + 1379? Think first.")
    other = tokenizer.encode("Hello world")
    greedy = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    alone = Engine(model, tokenizer).generate([other], greedy)[0]
    # a tiny budget cuts the scored prefill into chunks of a few positions
    monkeypatch.setattr(engine_module, "PREFILL_SCORE_BUDGET", 3 * 2 * tokenizer.vocab_size)
    engine = Engine(model, tokenizer)
    scored, generated, beside = engine.generate([prompt, prompt, other], [
        SamplingParams(max_tokens=0, prompt_logprobs=5),
        SamplingParams(max_tokens=8, temperature=0.8, seed=1, ignore_eos=True, top_logprobs=3, prompt_logprobs=0),
        greedy])
    assert beside.token_ids == alone.token_ids  # a scored neighbour changes nobody's tokens
    assert scored.token_ids == [] and scored.finish_reason == "length" and scored.logprobs is None
    lp = log_softmax(model, prompt)
    assert scored.prompt_logprobs[0] is None and len(scored.prompt_logprobs) == len(prompt)
    for i, score in enumerate(scored.prompt_logprobs[1:], start=1):
        assert abs(score.logprob - lp[i - 1, prompt[i]].item()) < TOL
        assert score.rank == int((lp[i - 1] > lp[i - 1, prompt[i]]).sum()) + 1
        values, ids = lp[i - 1].topk(5)
        assert [t for t, _ in score.top] == ids.tolist()
        assert max(abs(v - w) for (_, v), w in zip(score.top, values.tolist())) < TOL
    # sampled at temperature 0.8, reported raw: the forward pass's log-softmax at temperature 1
    full = prompt + generated.token_ids
    assert (torch.tensor(generated.logprobs) - scores_of(model, full, len(prompt))).abs().max() < TOL
    assert all(s.top == [] for s in generated.prompt_logprobs[1:])
    lp = log_softmax(model, full)
    for n, top in enumerate(generated.top_logprobs):
        values, ids = lp[len(prompt) - 1 + n].topk(3)
        assert [t for t, _ in top] == ids.tolist()
    with pytest.raises(ValueError, match="top_logprobs"):
        SamplingParams(top_logprobs=-1)


def test_token_text_bytes_round_trip(tokenizer):
    names = TokenText(tokenizer)
    text = "Ünïcödé 中文 🙂 \\boxed{6200}</think>"
    ids = tokenizer.encode(text) + [tokenizer.eos_token_id]
    raw = b"".join(names(i)[1] for i in ids)
    assert raw.decode("utf-8") == tokenizer.decode(ids)
    partial = [i for i in ids if not _valid(names(i)[1])]
    assert partial, "the text should hold a character split over tokens"
    assert all(names(i)[0].startswith("bytes:\\x") for i in partial)


def _valid(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# ---------------------------------------------------------------- chat

def test_chat_logprobs_greedy_equal_the_models_log_softmax(server, model, tokenizer):
    c = ts.client(server)
    r = c.chat.completions.create(model="random", messages=ts.USER, temperature=0, max_tokens=12, logprobs=True,
                                  top_logprobs=4)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    prompt = tokenizer.apply_chat_template(ts.USER, add_generation_prompt=True)
    names = TokenText(tokenizer)
    # the bytes name the tokens; map them back to ids through the greedy choice (the top alternative)
    ids = []
    lp = None
    for n, entry in enumerate(content):
        lp = log_softmax(model, prompt + ids)[-1]
        best = int(lp.argmax())
        assert entry.bytes == list(names(best)[1]) and entry.token == names(best)[0]
        assert abs(entry.logprob - lp[best].item()) < TOL  # greedy: the chosen token's raw log-prob
        values, alternatives = lp.topk(4)
        assert [t.bytes for t in entry.top_logprobs] == [list(names(a)[1]) for a in alternatives.tolist()]
        assert max(abs(t.logprob - v) for t, v in zip(entry.top_logprobs, values.tolist())) < TOL
        ids.append(best)
    text = bytes(b for entry in content for b in entry.bytes).decode("utf-8", errors="replace")
    assert text == tokenizer.decode(ids)

    # streamed: the same tokens and numbers, spread over the chunks
    stream = c.chat.completions.create(model="random", messages=ts.USER, temperature=0, max_tokens=12, logprobs=True,
                                       top_logprobs=4, stream=True)
    streamed = [e for chunk in stream if chunk.choices and chunk.choices[0].logprobs
                for e in chunk.choices[0].logprobs.content]
    assert [(e.bytes, e.top_logprobs[0].bytes) for e in streamed] == [(e.bytes, e.top_logprobs[0].bytes) for e in content]
    assert max(abs(a.logprob - b.logprob) for a, b in zip(streamed, content)) < TOL

    # without logprobs: none; logprobs without top_logprobs: no alternatives
    assert c.chat.completions.create(model="random", messages=ts.USER, max_tokens=3).choices[0].logprobs is None
    plain = c.chat.completions.create(model="random", messages=ts.USER, max_tokens=3, logprobs=True).choices[0].logprobs
    assert len(plain.content) == 3 and all(e.top_logprobs == [] for e in plain.content)


def test_chat_logprobs_cover_thinking_answer_and_stop_token(tokenizer):
    """The scripted reasoner: every completion token has an entry, </think> and EOS included, and the
    entries' bytes spell the whole completion."""
    model = ts.scripted_model(tokenizer)
    with ts.serve(model, tokenizer, "reasoner") as s:
        r = ts.client(s).chat.completions.create(model="reasoner", messages=ts.USER, logprobs=True, top_logprobs=1)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    spelled = bytes(b for e in content for b in e.bytes).decode()
    assert spelled == f"{ts.THINKING}</think> {ts.ANSWER}{tokenizer.eos_token}"
    assert all(e.top_logprobs[0].token == e.token for e in content)  # the script is the most likely token
    assert all(-1e-3 < e.logprob <= 0 for e in content)  # logit 30 against 0: near-certain


# ---------------------------------------------------------------- completions: echo scoring

def test_echo_scores_a_given_continuation_like_a_forward_pass(server, model, tokenizer):
    c = ts.client(server)
    prompt = tokenizer.apply_chat_template(ts.USER, add_generation_prompt=True)
    continuation = tokenizer.encode("1+9=10, write 0 carry 1</think> The answer is \\boxed{6200}.")
    ids = prompt + continuation
    want = scores_of(model, ids, 1)
    r = c.completions.create(model="random", prompt=ids, max_tokens=0, echo=True, logprobs=2,
                             extra_body={"prompt_logprobs": 0})
    choice = r.choices[0]
    assert choice.text == tokenizer.decode(ids) and r.usage.completion_tokens == 0
    lp = choice.logprobs
    assert len(lp.tokens) == len(ids) and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert (torch.tensor(lp.token_logprobs[1:]) - want).abs().max() < TOL
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    assert all(2 <= len(top) <= 3 for top in lp.top_logprobs[1:])  # the top 2, and the chosen token
    # vLLM's prompt_logprobs: keyed by token id, with the rank
    prompt_lp = choice.model_extra["prompt_logprobs"]
    assert prompt_lp[0] is None and len(prompt_lp) == len(ids)
    got = torch.tensor([entry[str(t)]["logprob"] for entry, t in zip(prompt_lp[1:], ids[1:])])
    assert (got - want).abs().max() < TOL
    full = log_softmax(model, ids)
    assert all(entry[str(t)]["rank"] == int((full[i] > full[i, t]).sum()) + 1
               for i, (entry, t) in enumerate(zip(prompt_lp[1:], ids[1:])))

    # streamed: the same, in the first chunk
    chunks = list(c.completions.create(model="random", prompt=ids, max_tokens=0, echo=True, logprobs=2, stream=True))
    streamed = [v for ch in chunks if ch.choices and ch.choices[0].logprobs for v in ch.choices[0].logprobs.token_logprobs]
    assert streamed[0] is None and (torch.tensor(streamed[1:]) - want).abs().max() < TOL
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == tokenizer.decode(ids)


def test_sampled_logprobs_equal_a_teachers_echo_score(server, model, tokenizer):
    """What a distillation trainer does: sample with temperature, then score the same tokens through echo.
    Raw log-probs make the two agree (and equal the forward pass) whatever the sampling temperature."""
    c = ts.client(server)
    prompt = tokenizer.encode("Solve for x: 3x + 7 = 22.")
    for temperature in (0.6, 1.3):
        sampled = c.completions.create(model="random", prompt=prompt, max_tokens=10, temperature=temperature, top_p=0.9,
                                       seed=4, logprobs=0, extra_body={"ignore_eos": True})
        lp = sampled.choices[0].logprobs
        # the tokens' ids, from their bytes: score them through echo as token ids
        names, by_bytes = TokenText(tokenizer), {}
        for i in range(tokenizer.vocab_size):
            by_bytes.setdefault(bytes(names(i)[1]), i)
        continuation = [by_bytes[bytes(_bytes_of(t))] for t in lp.tokens]
        assert tokenizer.decode(continuation) == sampled.choices[0].text
        scored = c.completions.create(model="random", prompt=prompt + continuation, max_tokens=0, echo=True, logprobs=0)
        echo = scored.choices[0].logprobs.token_logprobs[len(prompt):]
        assert max(abs(a - b) for a, b in zip(lp.token_logprobs, echo)) < TOL
        assert (torch.tensor(lp.token_logprobs) - scores_of(model, prompt + continuation, len(prompt))).abs().max() < TOL


def _bytes_of(token: str) -> bytes:
    if token.startswith("bytes:"):
        return bytes(int(h, 16) for h in token[len("bytes:"):].split("\\x")[1:])
    return token.encode()


def test_streamed_completion_logprobs_equal_non_streamed(server):
    c = ts.client(server)
    kw = dict(model="random", prompt=["Hello", "What is 1 + 1?"], max_tokens=6, temperature=0, logprobs=3, echo=True)
    whole = c.completions.create(**kw)
    parts = {0: [], 1: []}
    for chunk in c.completions.create(**kw, stream=True):
        for ch in chunk.choices:
            if ch.logprobs:
                parts[ch.index] += list(zip(ch.logprobs.tokens, ch.logprobs.token_logprobs, ch.logprobs.text_offset))
    for ch in whole.choices:
        want = list(zip(ch.logprobs.tokens, ch.logprobs.token_logprobs, ch.logprobs.text_offset))
        assert [(t, o) for t, _, o in parts[ch.index]] == [(t, o) for t, _, o in want]
        assert max(abs(a - b) for (_, a, _), (_, b, _) in zip(parts[ch.index][1:], want[1:])) < TOL


# ---------------------------------------------------------------- bad requests

@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", {"messages": ts.USER, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": ts.USER, "logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": ts.USER, "top_logprobs": 3}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": ts.USER, "logprobs": "yes"}, "logprobs"),
    ("/v1/chat/completions", {"messages": ts.USER, "logprobs": 1}, "logprobs"),
    ("/v1/chat/completions", {"messages": ts.USER, "logprobs": True, "top_logprobs": 2.5}, "top_logprobs"),
    ("/v1/completions", {"prompt": "x", "logprobs": 21}, "logprobs"),
    ("/v1/completions", {"prompt": "x", "logprobs": True}, "logprobs"),
    ("/v1/completions", {"prompt": "x", "logprobs": "5"}, "logprobs"),
    ("/v1/completions", {"prompt": "x", "prompt_logprobs": -1}, "prompt_logprobs"),
    ("/v1/completions", {"prompt": "x", "prompt_logprobs": 21}, "prompt_logprobs"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -1, "echo": True}, "max_tokens"),
])
def test_bad_logprob_requests_are_400(server, path, body, param):
    err = ts.check_error(httpx.post(server.url + path, json=body), 400)
    assert err["param"] == param and err["type"] == "invalid_request_error", err


def test_scoring_a_prompt_that_fills_the_context(server, tokenizer):
    """max_tokens 0 needs no room to generate: a prompt of exactly max_model_len tokens can be scored."""
    ids = [tokenizer.encode("a")[0]] * 96
    r = httpx.post(server.url + "/v1/completions", json={"prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0})
    assert r.status_code == 200 and len(r.json()["choices"][0]["logprobs"]["tokens"]) == 96
    err = ts.check_error(httpx.post(server.url + "/v1/completions", json={"prompt": ids, "max_tokens": 1}), 400)
    assert err["code"] == "context_length_exceeded"
