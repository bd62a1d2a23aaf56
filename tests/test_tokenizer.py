import pytest
from hypothesis import given, settings, strategies as st

from r1lab.tokenizer import ASSISTANT, THINK, Tokenizer, render_chat


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trips_any_unicode(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_digits_are_one_token_each(tokenizer):
    ids = tokenizer.encode("12345")
    assert len(ids) == 5
    assert [tokenizer.decode([i]) for i in ids] == list("12345")


def test_think_tags_survive_skipping_special_tokens(tmp_path, tokenizer):
    transformers = pytest.importorskip("transformers")
    ids = tokenizer.encode("<think>\n1+1=2\n</think>\nThe answer is 2.")
    assert tokenizer.think_token_id in ids and tokenizer.end_think_token_id in ids
    decoded = tokenizer.decode(ids + [tokenizer.eos_token_id], skip_special_tokens=True)
    assert decoded == "<think>\n1+1=2\n</think>\nThe answer is 2."
    tokenizer.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf.decode(ids, skip_special_tokens=True) == "<think>\n1+1=2\n</think>\nThe answer is 2."


def test_generation_prompt_opens_thinking(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text.endswith(ASSISTANT + THINK + "\n")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert ids[0] == tokenizer.bos_token_id and tokenizer.think_token_id in ids


CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "What is 12 + 30?"},
     {"role": "assistant", "content": "<think>\n2+0=2\n1+3=4\n</think>\n\nThe answer is \\boxed{42}."},
     {"role": "user", "content": "And 5 + 5? 🙂"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "no thinking here"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_transformers_chat_template_gives_our_ids(tmp_path, tokenizer, messages, add_generation_prompt):
    transformers = pytest.importorskip("transformers")
    tokenizer.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    theirs_text = hf.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    assert theirs_text == render_chat(messages, add_generation_prompt)
    theirs = hf.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    if isinstance(theirs, dict) or hasattr(theirs, "input_ids"):
        theirs = theirs["input_ids"]
    assert list(theirs) == ours
    assert hf.decode(ours) == tokenizer.decode(ours)
    # earlier thinking is not fed back
    if any("</think>" in m["content"] for m in messages):
        assert "2+0=2" not in theirs_text


def test_save_load_round_trip(tmp_path, tokenizer):
    tokenizer.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert again.encode("What is 4821 + 1379?") == tokenizer.encode("What is 4821 + 1379?")
    assert again.eos_token_id == tokenizer.eos_token_id


def test_missing_or_corrupt_tokenizer_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.load(tmp_path)


def test_tokenizer_command_reads_files_as_pretraining_does(tmp_path):
    """`r1lab tokenizer --text` and a pretraining run's own tokenizer see the same documents: a .txt file's
    paragraphs (not its lines), a JSONL row's text."""
    from r1lab.train.data import file_documents, pretrain_text, read_rows

    text = tmp_path / "a.txt"
    text.write_text("first line\nof one paragraph\n\nsecond paragraph\n")
    rows = tmp_path / "b.jsonl"
    rows.write_text('{"text": "a row"}\n')
    docs = list(file_documents([str(text), str(rows)]))
    assert docs == ["first line\nof one paragraph", "second paragraph", "a row"]
    assert docs == [pretrain_text(r) for p in (text, rows) for r in read_rows(p)]
    assert list(file_documents([str(text)], limit=1)) == ["first line\nof one paragraph"]


TOOLS = [{"type": "function", "function": {"name": "add", "description": "a + b",
                                           "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}]
TOOL_CHATS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "What is 2 + 2?"},
     {"role": "assistant", "content": None, "reasoning_content": "I should add.",
      "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}},
                     {"id": "c2", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]},
     {"role": "tool", "tool_call_id": "c1", "content": "4"}, {"role": "tool", "tool_call_id": "c2", "content": "1"}],
    [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "", "reasoning": "old thinking",
                                        "tool_calls": [{"function": {"name": "add", "arguments": {}}}]},
     {"role": "tool", "content": "0"}, {"role": "assistant", "content": "It is 0."}, {"role": "user", "content": "Next"}],
]


@pytest.mark.parametrize("messages", TOOL_CHATS)
def test_tool_format_through_transformers(tmp_path, tokenizer, messages):
    transformers = pytest.importorskip("transformers")
    tokenizer.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for gen in (True, False):
        theirs = hf.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=gen, tokenize=False)
        assert theirs == render_chat(messages, gen, TOOLS)
        assert hf.apply_chat_template(messages, tools=TOOLS, add_generation_prompt=gen, tokenize=True,
                                      return_dict=False) == tokenizer.apply_chat_template(messages, gen, tools=TOOLS)
    text = render_chat(messages, True, TOOLS)
    assert text.count('"name": "add"') == 1 + sum(len(m.get("tool_calls") or []) for m in messages)
    # thinking is kept for the tool sub-turns of the answer being written, dropped once a new user turn starts
    assert ("I should add." in text) == (messages[-1]["role"] == "tool")
    assert "old thinking" not in text


def test_checkpoint_saved_with_the_template_before_tools_still_loads_as_ours(tmp_path, tokenizer):
    import json

    from r1lab.chat_tokenizer import load_tokenizer
    from r1lab.tokenizer import CHAT_TEMPLATE_V1

    tokenizer.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(dict(config, chat_template=CHAT_TEMPLATE_V1)))
    assert isinstance(load_tokenizer(tmp_path), Tokenizer)
