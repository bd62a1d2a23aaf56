"""Template fidelity: r1lab renders a conversation through a checkpoint's own chat template to exactly the ids
transformers' `apply_chat_template` gives, for the real templates of Qwen2.5, Qwen3, Llama 3.1/3.2,
DeepSeek-R1-Distill and DeepSeek-V3 (tests/fixtures/chat_templates, see its README for where they come from):
with and without a system message, tools, assistant tool calls, tool results and thinking. Nothing is added
to the prompt unless a recipe asks (Open-R1's system prompt)."""
from __future__ import annotations

import json

import jinja2
import pytest
import transformers

from hf_tiny import REAL, make_tokenizer
from r1lab.chat_tokenizer import R1_SYSTEM_PROMPT, load_tokenizer, recipe_messages

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                   "required": ["city"]}}}]
ARGS = {"city": "Paris", "unit": "C"}


def conversations(family: str) -> dict[str, tuple[list[dict], list | None]]:
    # DeepSeek's templates concatenate the arguments as text; the others serialise a dict (tojson)
    args = json.dumps(ARGS) if family in ("r1distill_hub", "deepseekv3") else ARGS
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": args}}
    user = {"role": "user", "content": "What is the weather in Paris?"}
    calling = {"role": "assistant", "content": "", "tool_calls": [call]}
    result = {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'}
    chats = {
        "user": ([user], None),
        "system": ([{"role": "system", "content": "Be brief."}, user], None),
        "thinking": ([user, {"role": "assistant", "content": "<think>\nlook it up\n</think>\n\nSunny."},
                      {"role": "user", "content": "And tomorrow?"}], None),
        "tools": ([user], TOOLS),
        "tools_system": ([{"role": "system", "content": "Be brief."}, user], TOOLS),
        "tool_loop": ([user, calling, result], TOOLS),
        "tool_answer": ([user, calling, result, {"role": "assistant", "content": "It is 21 degrees."}], TOOLS),
        # content null beside the calls, as OpenAI clients send it: the key is dropped, as transformers drops it
        "tool_null_content": ([user, dict(calling, content=None), result], TOOLS),
    }
    if family == "qwen3":  # the thinking of a tool sub-turn is kept, given apart as reasoning_content
        chats["tool_reasoning"] = ([user, dict(calling, content="", reasoning_content="I need the weather."), result],
                                   TOOLS)
    return chats


@pytest.fixture(scope="module", params=list(REAL))
def pair(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    make_tokenizer(folder, request.param)
    return request.param, load_tokenizer(folder), transformers.AutoTokenizer.from_pretrained(folder)


def test_ids_equal_transformers_for_every_conversation(pair):
    family, ours, theirs = pair
    for name, (chat, tools) in conversations(family).items():
        for gen in (False, True):
            try:
                expected = theirs.apply_chat_template(chat, tools=tools, add_generation_prompt=gen, tokenize=True,
                                                      return_dict=False)
            except jinja2.TemplateError as e:  # DeepSeek's templates need content beside tool calls: so do we
                with pytest.raises(type(e)):
                    ours.apply_chat_template(chat, add_generation_prompt=gen, tools=tools)
                continue
            got = ours.apply_chat_template(chat, add_generation_prompt=gen, tools=tools)
            assert got == list(expected), (family, name, gen, ours.decode(got), theirs.decode(expected))
        if name == "tool_null_content":
            continue
        text = ours.apply_chat_template(chat, add_generation_prompt=True, tools=tools, tokenize=False)
        assert R1_SYSTEM_PROMPT not in text  # nothing of r1lab's own is added
        if tools and family not in ("r1distill_hub", "deepseekv3"):  # DeepSeek's templates do not render tools
            assert "get_weather" in text


def test_template_arguments_reach_the_template(pair):
    family, ours, theirs = pair
    if family != "qwen3":
        pytest.skip("enable_thinking is Qwen3's switch")
    chat = [{"role": "user", "content": "hi"}]
    off = ours.apply_chat_template(chat, add_generation_prompt=True, tokenize=False, enable_thinking=False)
    assert off.endswith("<think>\n\n</think>\n\n")
    assert ours.encode(off) == list(theirs.apply_chat_template(chat, add_generation_prompt=True, enable_thinking=False,
                                                              tokenize=True, return_dict=False))


def test_r1_system_prompt_only_where_the_recipe_asks(pair):
    family, ours, _ = pair
    chat = [{"role": "user", "content": "What is 2 + 3?"}]
    assert R1_SYSTEM_PROMPT not in ours.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    recipe = ours.apply_chat_template(recipe_messages(ours, chat), add_generation_prompt=True, tokenize=False)
    # only a template that never mentions <think> gets Open-R1's prompt, and never over the user's own system
    assert (R1_SYSTEM_PROMPT in recipe) == (family in ("qwen2_5", "llama3_1", "llama3_2"))
    system = [{"role": "system", "content": "Be brief."}, *chat]
    assert recipe_messages(ours, system) == system


@pytest.mark.parametrize("family, style, seed", [("qwen2", "qwen2_5", 1), ("qwen3", "qwen3", 0), ("llama", "llama3_2", 0)])
def test_generate_chat_prints_transformers_greedy_text(tmp_path, capsys, family, style, seed):
    """`r1lab generate --chat --temperature 0` on a folder with the real template prints what transformers'
    greedy generate writes for the same chat (the same prompt: no system prompt of r1lab's own)."""
    import torch

    from hf_tiny import make_model
    from r1lab.cli import main

    model = make_model(tmp_path, family, style, seed=seed)  # a seed whose greedy answer does not end at once
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    chat = [{"role": "user", "content": "What is 2 + 3?"}]
    ids = torch.tensor([theirs.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                             eos_token_id=model.generation_config.eos_token_id, pad_token_id=0)
    expected = theirs.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=False)
    for eos in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"):
        expected = expected.split(eos)[0]  # the engine stops at the EOS and does not print it
    assert main(["generate", str(tmp_path), "What is 2 + 3?", "--chat", "--temperature", "0", "--max-tokens", "12",
                 "--dtype", "float32"]) == 0
    assert expected and capsys.readouterr().out == expected + "\n"


@pytest.mark.parametrize("style", [None, "qwen2_5", "llama3_2", "deepseekv3"])
def test_sft_row_with_tool_calls_trains_the_call_in_the_family_format(tmp_path, tokenizer, style):
    """An SFT row whose answer calls a tool trains the model to write the call as its template writes calls (what the
    server's parser reads back); the tools and the tool results are in the prompt, which has no loss."""
    from r1lab.serve.tools import parse_calls, tool_format
    from r1lab.train.data import chat_example

    if style is not None:
        make_tokenizer(tmp_path, style)
        tokenizer = load_tokenizer(tmp_path)
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(ARGS)}}
    row = {"tools": TOOLS, "messages": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "SUNNY-PARIS"},
        {"role": "assistant", "content": "", "reasoning_content": "Now Rome.",
         "tool_calls": [dict(call, id="c2", function={"name": "get_weather", "arguments": {"city": "Rome"}})]}]}
    example = chat_example(row, tokenizer)
    prompt, completion = tokenizer.decode(example.prompt), tokenizer.decode(example.completion)
    assert "SUNNY-PARIS" in prompt and "SUNNY-PARIS" not in completion  # the tool result carries no loss
    assert ("The weather in a city." in prompt) == (style != "deepseekv3")  # DeepSeek-V3's template shows no tools
    answer = completion.split("</think>")[-1].replace(tokenizer.eos_token, "").strip()
    assert example.completion[-1] == tokenizer.eos_token_id
    assert "Now Rome." in completion  # the answer's own thinking is trained
    content, calls = parse_calls(tool_format(tokenizer), answer, {"get_weather"})
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Rome"})]


def test_another_template_for_a_checkpoint_whose_own_shows_no_tools(tmp_path):
    """serve --chat-template: DeepSeek-V3's own template ignores `tools`; a template that renders them takes over."""
    make_tokenizer(tmp_path, "deepseekv3")
    ours = load_tokenizer(tmp_path)
    chat = [{"role": "user", "content": "Weather?"}]
    assert "get_weather" not in ours.apply_chat_template(chat, add_generation_prompt=True, tokenize=False, tools=TOOLS)
    template = ("{{ bos_token }}{% if tools %}{{ 'Tools: ' + (tools | tojson) }}{% endif %}"
                "{% for m in messages %}{{ '<｜User｜>' + m['content'] }}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}")
    other = ours.with_template(template)
    text = other.apply_chat_template(chat, add_generation_prompt=True, tokenize=False, tools=TOOLS)
    assert text.startswith('<｜begin▁of▁sentence｜>Tools: [{"type": "function"') and "get_weather" in text
    assert other.response_prefix == "<think>\n" and ours.chat_template != other.chat_template
