"""Function calling and structured output on /v1/chat/completions, with the real `openai` client against a real
server on loopback: the tool-call parsers of every family on fixed text, the full tool loop (the model calls
a tool, the client runs it and sends the result, the model answers) streamed and not, for an r1lab model and
random-weight Qwen2 / Qwen3 / Llama models with their real chat templates, constrained decoding (a forced
call and a strict json_schema parse and validate over 50 samples at temperature 1), the thinking switch
and budget, and the 4xx answers to bad input."""
from __future__ import annotations

import json
import random
from typing import Literal

import httpx
import openai
import pytest
import torch

from conftest import tiny_config
from hf_tiny import make_model
from r1lab.engine.precision import load_for_serving
from r1lab.model import Transformer
from r1lab.serve.generation import CallHold
from r1lab.serve.plan import ChatPlan
from r1lab.serve.tools import parse_calls, tool_format
from test_serve import client, serve

pytest.importorskip("llguidance")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                    "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"], "additionalProperties": False}}}
TOOLS = [WEATHER, CLOCK]
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


def valid_call(name: str, arguments: str) -> bool:
    """Does a call parse and satisfy its tool's schema (these schemas: enums and short strings)?"""
    args = json.loads(arguments)
    if name == "get_weather":
        return (set(args) == {"city", "unit"} and isinstance(args["city"], str) and len(args["city"]) <= 12
                and args["unit"] in ("C", "F"))
    return name == "get_time" and args == {"zone": args.get("zone")} and args["zone"] in ("UTC", "CET")


def run_tool(name: str, arguments: str) -> str:
    args = json.loads(arguments)
    return json.dumps({"temperature": 21, "unit": args["unit"]} if name == "get_weather" else {"time": "12:00"})


# ---------------------------------------------------------------- parsing fixed text, every family

NAMES = {"get_weather", "get_time"}
ARGS = '{"city": "Paris", "unit": "C"}'


@pytest.mark.parametrize("fmt, text, content", [
    ("hermes", 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": ' + ARGS + '}\n</tool_call>', "Let me look."),
    ("hermes", '<tool_call>{"name": "get_weather", "arguments": ' + ARGS + '}</tool_call>', None),  # r1lab's spacing
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": ' + ARGS + '}', None),  # cut before the close
    ("llama3_json", '{"name": "get_weather", "parameters": ' + ARGS + '}', None),
    ("llama3_json", '<|python_tag|>{"name": "get_weather", "parameters": ' + ARGS + '}', None),
    ("deepseek_v3", "Sure.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
     + ARGS + "\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>", "Sure."),
])
def test_parsers_read_each_family_format(fmt, text, content):
    got, calls = parse_calls(fmt, text, NAMES)
    assert got == content
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", json.loads(ARGS))]
    assert calls[0].id.startswith("call_")


def test_parallel_calls_parse_in_order():
    two = ('<tool_call>\n{"name": "get_weather", "arguments": ' + ARGS + '}\n</tool_call>\n'
           '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>')
    assert [c.name for c in parse_calls("hermes", two, NAMES)[1]] == ["get_weather", "get_time"]
    llama = '{"name": "get_weather", "parameters": ' + ARGS + '}; {"name": "get_time", "parameters": {"zone": "UTC"}}'
    assert [c.name for c in parse_calls("llama3_json", llama, NAMES)[1]] == ["get_weather", "get_time"]


@pytest.mark.parametrize("fmt, text", [
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": </tool_call>'),  # bad JSON
    ("hermes", '<tool_call>{"name": "launch_rockets", "arguments": {}}</tool_call>'),  # not an offered tool
    ("hermes", "just prose, no call"),
    ("llama3_json", '{"name": "get_weather", "parameters": '),
    ("llama3_json", '{"not": "a call"}'),
    ("deepseek_v3", "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{oops\n```"),
])
def test_a_garbled_call_is_content(fmt, text):
    assert parse_calls(fmt, text, NAMES) == (text, [])


@pytest.mark.parametrize("fmt, text", [
    ("hermes", 'Looking.\n<tool_call>\n{"name": "get_weather", "arguments": ' + ARGS + '}\n</tool_call>'),
    ("hermes", "No call here, only <tool text and more."),
    ("llama3_json", '{"name": "get_weather", "parameters": ' + ARGS + '}'),
    ("llama3_json", "Plain answer {with braces}."),
])
def test_streaming_hold_matches_the_whole_parse(fmt, text):
    rng = random.Random(0)
    for _ in range(20):
        hold, sent = CallHold(ChatPlan(tools=TOOLS, tool_choice="auto", fmt=fmt)), ""
        cuts = sorted(rng.sample(range(len(text)), 5))
        for a, b in zip([0, *cuts], [*cuts, len(text)]):
            sent += hold.feed(text[a:b])
        rest, calls = hold.finish()
        content, expected = parse_calls(fmt, text, NAMES)
        assert [(c.name, c.arguments) for c in calls] == [(c.name, c.arguments) for c in expected]
        assert (sent + rest).strip() == (content or "").strip()


def test_the_format_is_read_off_the_template(tokenizer, tmp_path):
    from hf_tiny import make_tokenizer
    from r1lab.chat_tokenizer import load_tokenizer

    assert tool_format(tokenizer) == "hermes"  # r1lab's own
    for style, fmt in [("qwen2_5", "hermes"), ("qwen3", "hermes"), ("llama3_2", "llama3_json"), ("deepseekv3", "deepseek_v3")]:
        make_tokenizer(tmp_path / style, style)
        assert tool_format(load_tokenizer(tmp_path / style)) == fmt


# ---------------------------------------------------------------- servers: r1lab and random open models

FAMILIES = {"r1lab": None, "qwen2": "qwen2_5", "qwen3": "qwen3", "llama": "llama3_2"}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_server(request, tokenizer, tmp_path_factory):
    if request.param == "r1lab":
        torch.manual_seed(0)
        model, tok = Transformer(tiny_config(tokenizer.vocab_size)).eval(), tokenizer
    else:
        folder = tmp_path_factory.mktemp(request.param)
        make_model(folder, request.param, FAMILIES[request.param], max_position_embeddings=4096)
        model, tok = load_for_serving(folder, "float32")
    # Llama's template writes the tools out indented: ~1.4k tokens with this tiny vocabulary
    with serve(model, tok, request.param, engine_max_running=16, max_model_len=3072) as s:
        s.family = request.param
        yield s


def _thinking(s) -> dict:
    # r1lab's template opens the thinking and a random model never closes it: a budget closes it for the model
    return {"thinking_budget": 3}


@pytest.mark.parametrize("stream", [False, True])
def test_full_tool_loop(family_server, stream):
    c = client(family_server)
    kw = dict(model=family_server.name, tools=TOOLS, temperature=1.0, max_tokens=300, seed=1,
              extra_body=_thinking(family_server))
    # 1: the model must call a tool (a random model would not by itself: the call is forced by the grammar)
    if stream:
        chunks = list(c.chat.completions.create(messages=USER, tool_choice="required", stream=True, **kw))
        deltas = [ch.choices[0] for ch in chunks if ch.choices]
        calls: dict[int, dict] = {}
        for d in deltas:
            for tc in d.delta.tool_calls or []:
                if tc.index not in calls:  # the first delta of a call carries its id, type and name
                    assert tc.id and tc.type == "function" and tc.function.name and tc.function.arguments == ""
                    calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
                else:
                    assert tc.id is None and tc.function.name is None
                    calls[tc.index]["arguments"] += tc.function.arguments
        assert deltas[-1].finish_reason == "tool_calls"
        called = [(v["id"], v["name"], v["arguments"]) for _, v in sorted(calls.items())]
    else:
        r = c.chat.completions.create(messages=USER, tool_choice="required", **kw)
        assert r.choices[0].finish_reason == "tool_calls"
        called = [(t.id, t.function.name, t.function.arguments) for t in r.choices[0].message.tool_calls]
        assert r.choices[0].message.content is None
    assert called and all(valid_call(name, args) for _, name, args in called)
    # 2: the client runs the tools and sends the results; the model answers in text
    history = USER + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a in called]}]
    history += [{"role": "tool", "tool_call_id": i, "content": run_tool(n, a)} for i, n, a in called]
    kw["max_tokens"] = 8
    if stream:
        chunks = list(c.chat.completions.create(messages=history, tool_choice="none", stream=True, **kw))
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert not any(ch.choices[0].delta.tool_calls for ch in chunks if ch.choices)
    else:
        r = c.chat.completions.create(messages=history, tool_choice="none", **kw)
        assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.tool_calls is None
        assert isinstance(r.choices[0].message.content, str)


def test_named_tool_choice_calls_that_tool(family_server):
    r = client(family_server).chat.completions.create(
        model=family_server.name, messages=USER, tools=TOOLS, temperature=1.0, max_tokens=120, n=4,
        tool_choice={"type": "function", "function": {"name": "get_time"}}, extra_body=_thinking(family_server))
    for choice in r.choices:
        assert [t.function.name for t in choice.message.tool_calls] == ["get_time"]
        assert valid_call("get_time", choice.message.tool_calls[0].function.arguments)


def test_thinking_is_returned_under_both_names(family_server):
    if family_server.family != "r1lab":
        pytest.skip("the r1lab template opens the thinking; a random open model rarely does")
    r = client(family_server).chat.completions.create(model=family_server.name, messages=USER, max_tokens=10,
                                                      extra_body={"thinking_budget": 3})
    m = r.choices[0].message
    assert m.reasoning_content and m.model_extra["reasoning"] == m.reasoning_content


# ---------------------------------------------------------------- 50 samples at temperature 1 always valid

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}, "rain": {"type": "boolean"},
                                           "unit": {"enum": ["C", "F"]}},
          "required": ["city", "rain", "unit"], "additionalProperties": False}


def _valid(value) -> bool:
    return (isinstance(value, dict) and set(value) == {"city", "rain", "unit"} and isinstance(value["city"], str)
            and len(value["city"]) <= 10 and isinstance(value["rain"], bool) and value["unit"] in ("C", "F"))


@pytest.fixture(scope="module")
def qwen2_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen2_50")
    make_model(folder, "qwen2", "qwen2_5")
    model, tok = load_for_serving(folder, "float32")
    with serve(model, tok, "qwen2", engine_max_running=16, max_model_len=1024) as s:
        yield s


def test_fifty_samples_parse_and_validate(qwen2_server):
    c, kw = client(qwen2_server), dict(model="qwen2", messages=USER, temperature=1.0, max_tokens=80, n=10)
    free = c.chat.completions.create(**kw)  # unconstrained, the random model writes no valid JSON
    assert not any(_parses(ch.message.content) for ch in free.choices)
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True}}
    answers = [ch.message.content for _ in range(5) for ch in c.chat.completions.create(response_format=fmt, **kw).choices]
    assert len(answers) == 50 and all(_valid(json.loads(a)) for a in answers)
    calls = [ch.message.tool_calls for _ in range(5)  # one call per answer: each fits max_tokens
             for ch in c.chat.completions.create(tools=TOOLS, tool_choice="required", parallel_tool_calls=False, **kw).choices]
    assert len(calls) == 50 and all(tc and all(valid_call(t.function.name, t.function.arguments) for t in tc) for tc in calls)
    # any object: its strings are unbounded, so an answer may run out of tokens; every one that ends is an object
    objects = c.chat.completions.create(response_format={"type": "json_object"}, **dict(kw, max_tokens=200)).choices
    ended = [ch.message.content for ch in objects if ch.finish_reason == "stop"]
    assert ended and all(isinstance(json.loads(o), dict) for o in ended)


def _parses(text: str | None) -> bool:
    try:
        return _valid(json.loads(text or ""))
    except ValueError:
        return False


# ---------------------------------------------------------------- bad input: 4xx with OpenAI's error body

@pytest.mark.parametrize("body, param", [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "a": {"type": "strin"}}}}}], "tool_choice": "required"}, "tools"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "tools.0.function.parameters"),
    ({"messages": USER + [{"role": "tool", "tool_call_id": "call_x", "content": "21"}]}, "messages.1.tool_call_id"),
    ({"messages": USER + [{"role": "tool", "content": "21"}]}, "messages.1.tool_call_id"),
])
def test_bad_tool_input_is_a_400(qwen2_server, body, param):
    r = httpx.post(qwen2_server.url + "/v1/chat/completions", json={"messages": USER, "max_tokens": 4, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_openai_client_raises_bad_request_for_an_unknown_tool(qwen2_server):
    with pytest.raises(openai.BadRequestError):
        client(qwen2_server).chat.completions.create(model="qwen2", messages=USER, tools=TOOLS,
                                                     tool_choice={"type": "function", "function": {"name": "nope"}})


# ---------------------------------------------------------------- the thinking switch and budget

@pytest.fixture(scope="module")
def r1lab_server(tokenizer):
    torch.manual_seed(0)
    with serve(Transformer(tiny_config(tokenizer.vocab_size)).eval(), tokenizer, "r1", max_model_len=512,
               thinking_budget=7) as s:
        yield s


@pytest.mark.parametrize("budget, field", [(0, "thinking_budget"), (4, "thinking_budget"), (2, "thinking_token_budget"),
                                           (None, None)])
def test_thinking_budget_closes_the_thinking(r1lab_server, budget, field):
    extra = {} if budget is None else {field: budget}  # None: the server's --thinking-budget (7)
    r = client(r1lab_server).chat.completions.create(model="r1", messages=USER, max_tokens=20, temperature=1.0,
                                                     seed=3, extra_body=extra)
    # a random model never writes </think> by itself: the budget writes it after exactly that many tokens
    assert r.usage.completion_tokens_details.reasoning_tokens == (7 if budget is None else budget) + 1
    m = r.choices[0].message
    assert m.model_extra["reasoning"] == m.reasoning_content and m.content is not None


@pytest.mark.parametrize("switch", [{"reasoning_effort": "none"}, {"chat_template_kwargs": {"enable_thinking": False}},
                                    {"chat_template_kwargs": {"thinking": False}}])
def test_thinking_switched_off_for_a_template_that_opens_it(r1lab_server, switch):
    r = client(r1lab_server).chat.completions.create(model="r1", messages=USER, max_tokens=6, temperature=1.0,
                                                     seed=3, extra_body=switch)
    on = r1lab_server.tokenizer.apply_chat_template(USER, add_generation_prompt=True)
    off = r1lab_server.tokenizer.encode(r1lab_server.tokenizer.decode(on) + "</think>\n\n")
    assert r.usage.prompt_tokens == len(off)  # the thinking is closed in the prompt: the answer starts at once
    assert r.choices[0].message.reasoning_content is None and r.choices[0].message.content
    assert r.usage.completion_tokens_details.reasoning_tokens == 0


def test_enable_thinking_reaches_qwen3s_template(family_server):
    if family_server.family != "qwen3":
        pytest.skip("enable_thinking is Qwen3's template argument")
    tok = family_server.tokenizer
    for effort, enable in (("none", False), ("high", True)):
        r = client(family_server).chat.completions.create(model="qwen3", messages=USER, max_tokens=2,
                                                          extra_body={"reasoning_effort": effort})
        assert r.usage.prompt_tokens == len(tok.apply_chat_template(USER, add_generation_prompt=True,
                                                                    enable_thinking=enable))
    assert len(tok.apply_chat_template(USER, add_generation_prompt=True, enable_thinking=False)) > \
        len(tok.apply_chat_template(USER, add_generation_prompt=True))


# ---------------------------------------------------------------- the engine's constraint, step by step

def test_constraint_phases_and_batch_mask(tokenizer):
    from r1lab.engine.constraint import Grammars, batch_mask

    V = tokenizer.vocab_size
    g = Grammars(tokenizer, V)
    grammar = g.compile('start: "yes" | "no"\n')
    assert g.compile('start: "yes" | "no"\n') is grammar  # cached
    think, end = tokenizer.think_token_id, tokenizer.end_think_token_id
    budgeted = g.constraint(grammar, thinking=True, think_id=None, end_think_id=end, budget=2)
    opening = g.constraint(grammar, thinking=False, think_id=think, end_think_id=end)
    masks = batch_mask([budgeted, None, opening], V)
    assert masks[0].all() and masks[1].all()  # thinking freely; unconstrained
    first = {tokenizer.decode([t]) for t in masks[2].nonzero()[0].tolist()}
    assert "<think>" in first and all(t == "<think>" or "yes".startswith(t) or "no".startswith(t) for t in first)
    assert batch_mask([budgeted], V) is None  # nothing constrained this step
    for t in tokenizer.encode("a")[:1] * 2:  # two tokens of thinking
        budgeted.advance(t)
    only = batch_mask([budgeted], V)[0]
    assert only.nonzero()[0].tolist() == [end]  # the budget is spent: only </think>
    budgeted.advance(end)
    after = {tokenizer.decode([t]) for t in batch_mask([budgeted], V)[0].nonzero()[0].tolist()}
    assert after and all("yes".startswith(t) or "no".startswith(t) for t in after)
    for t in tokenizer.encode("yes"):
        budgeted.advance(t)
    assert batch_mask([budgeted], V)[0].nonzero()[0].tolist() == [tokenizer.eos_token_id]  # complete: only EOS
    assert budgeted.failed is None


# ---------------------------------------------------------------- an agent framework nobody here wrote

def test_openai_agents_sdk_drives_a_tool_call(qwen2_server):
    agents = pytest.importorskip("agents")
    import asyncio

    agents.set_tracing_disabled(True)
    seen = []

    @agents.function_tool
    def get_weather(unit: Literal["C", "F"]) -> str:
        """The weather in Paris."""
        seen.append(unit)
        return f"21 degrees {unit}"

    model = agents.OpenAIChatCompletionsModel(
        model="qwen2", openai_client=openai.AsyncOpenAI(base_url=qwen2_server.url + "/v1", api_key="none", max_retries=0))
    agent = agents.Agent(name="weather", instructions="Answer with the tool.", model=model, tools=[get_weather],
                         model_settings=agents.ModelSettings(tool_choice="required", max_tokens=60, temperature=1.0),
                         tool_use_behavior="stop_on_first_tool")
    result = asyncio.run(agents.Runner.run(agent, "What is the weather in Paris?"))
    assert seen and seen[0] in ("C", "F")  # the SDK parsed our tool call, validated it and ran the function
    assert result.final_output == f"21 degrees {seen[0]}"


# ---------------------------------------------------------------- r1lab chat --tools FILE.py

def test_chat_runs_the_tools_of_a_python_file(tmp_path, tokenizer):
    import argparse
    import io

    from rich.console import Console

    from r1lab.engine import Engine
    from r1lab.serve.chat import add_chat_arguments, chat_loop, load_tools, tool_schemas

    (tmp_path / "tools.py").write_text(
        "from typing import Literal\n\n\n"
        "def get_weather(unit: Literal['C', 'F']) -> str:\n"
        '    """The weather in Paris.\n\n    Args:\n        unit: C or F\n    """\n'
        "    return f'21 degrees {unit}'\n\n\n"
        "def _helper():\n    pass\n")
    tools = load_tools(tmp_path / "tools.py")
    assert list(tools) == ["get_weather"]
    assert tool_schemas(tools)[0]["function"]["parameters"]["properties"]["unit"]["enum"] == ["C", "F"]
    p = argparse.ArgumentParser()
    add_chat_arguments(p)
    args = p.parse_args(["unused", "--tools", str(tmp_path / "tools.py"), "--tool-choice", "required",
                         "--thinking-budget", "2", "--max-tokens", "150", "--seed", "0", "--temperature", "1"])
    torch.manual_seed(0)
    engine = Engine(Transformer(tiny_config(tokenizer.vocab_size)).eval(), tokenizer, max_running=1, max_model_len=1024)
    buf = io.StringIO()
    assert chat_loop(engine, tokenizer, args, io.StringIO("Weather?\n"), Console(file=buf, highlight=False)) == 0
    out = buf.getvalue()
    # the forced first reply called the tool; chat ran it and showed the call with its result
    assert "→ get_weather({\"unit\": \"C\"}) = 21 degrees C" in out or "→ get_weather({\"unit\": \"F\"}) = 21 degrees F" in out


def test_without_the_grammar_engine_a_constrained_request_is_a_clear_400(qwen2_server, monkeypatch):
    import sys

    from r1lab.engine.constraint import Grammars, GrammarError

    monkeypatch.setitem(sys.modules, "llguidance", None)  # as if `pip install r1lab` without the extra
    with pytest.raises(GrammarError, match="pip install"):
        Grammars(qwen2_server.tokenizer, 320).compile('start: "x"\n')
    r = httpx.post(qwen2_server.url + "/v1/chat/completions", json={
        "messages": USER, "max_tokens": 4,
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "integer"}}}})
    assert r.status_code == 400 and "pip install" in r.json()["error"]["message"]
    r = httpx.post(qwen2_server.url + "/v1/chat/completions", json={"messages": USER, "max_tokens": 2})
    assert r.status_code == 200  # everything else works without it
