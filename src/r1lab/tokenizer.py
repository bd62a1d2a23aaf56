"""Byte-level BPE tokenizer (Hugging Face `tokenizers`) with digits split one per token and an R1-style
chat template whose assistant turn opens with "<think>\n".

Saved as tokenizer.json + tokenizer_config.json (with `chat_template`), so `transformers.AutoTokenizer`
loads it and its `apply_chat_template` gives the same ids as `Tokenizer.apply_chat_template` here.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK = "<think>"
END_THINK = "</think>"
THINK_PREFIX = THINK + "\n"  # the chat template pre-fills it: a response is THINK_PREFIX + the generated text
SPECIAL_TOKENS = [BOS, EOS, PAD, USER, ASSISTANT, THINK, END_THINK]  # ids 0..6, in this order

TOOL_CALL, END_TOOL_CALL = "<tool_call>", "</tool_call>"  # r1lab's tool format (plain text, as Hermes/Qwen write it)
TOOL_RESPONSE, END_TOOL_RESPONSE = "<tool_response>", "</tool_response>"
TOOLS_HEADER = ("# Tools\nYou may call these functions. To call one, answer with "
                '<tool_call>{"name": <function name>, "arguments": <arguments object>}</tool_call>, once per call.\n')

# Jinja form of `render_chat` below (the two must stay in step; a test compares them through transformers).
# Earlier assistant turns keep only their answer: thinking is not fed back, as in DeepSeek-R1, except the
# thinking (`reasoning_content`) of the assistant turns after the last user message: the sub-turns of one
# answer that calls tools keep it (DeepSeek's rule). Tools come first (after BOS), one JSON schema a line;
# a tool's result goes back as a user turn holding <tool_response>…</tool_response> (one per result).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% set ns = namespace(last_user=-1) %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}"
    "{% endfor %}"
    "{% if tools %}{{ '" + TOOLS_HEADER.replace("\n", "\\n") + "<tools>\\n' }}"
    "{% for tool in tools %}{{ tool | tojson }}{{ '\\n' }}{% endfor %}{{ '</tools>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% set content = message['content'] or '' %}"
    "{% if message['role'] == 'system' %}{{ content }}"
    "{% elif message['role'] == 'user' %}{{ '<｜User｜>' + content }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] | trim %}{% endif %}"
    "{% set reasoning = message.get('reasoning_content') or message.get('reasoning') %}"
    "{% if reasoning and loop.index0 > ns.last_user %}{% set content = '<think>\\n' + reasoning + '</think>' + content %}"
    "{% endif %}"
    "{{ '<｜Assistant｜>' + content }}"
    "{% for call in message.get('tool_calls') or [] %}"
    "{% set call = call['function'] if call.get('function') else call %}"
    "{{ '<tool_call>{\"name\": ' + (call['name'] | tojson) + ', \"arguments\": ' }}"
    "{{ call['arguments'] if call['arguments'] is string else (call['arguments'] | tojson) }}{{ '}</tool_call>' }}"
    "{% endfor %}"
    "{{ '<｜end▁of▁sentence｜>' }}"
    "{% elif message['role'] == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{ '<｜User｜>' }}{% endif %}"
    "{{ '<tool_response>' + content + '</tool_response>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)
# the template before tools: checkpoints saved with it still load as r1lab's tokenizer
CHAT_TEMPLATE_V1 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] | trim %}{% endif %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def render_tool_call(name: str, arguments) -> str:
    """One call in r1lab's tool format (arguments: a dict, or the JSON text of one)."""
    args = arguments if isinstance(arguments, str) else _json(arguments)
    return f'{TOOL_CALL}{{"name": {_json(name)}, "arguments": {args}}}{END_TOOL_CALL}'


def render_chat(messages: list[dict], add_generation_prompt: bool = True, tools: list[dict] | None = None) -> str:
    parts = [BOS]
    last_user = max([i for i, m in enumerate(messages) if m["role"] == "user"], default=-1)
    if tools:
        parts.append(TOOLS_HEADER + "<tools>\n" + "".join(_json(t) + "\n" for t in tools) + "</tools>\n")
    for i, m in enumerate(messages):
        role, content = m["role"], m.get("content") or ""
        if role == "system":
            parts.append(content)
        elif role == "user":
            parts.append(USER + content)
        elif role == "assistant":
            if END_THINK in content:
                content = content.split(END_THINK)[-1].strip()
            reasoning = m.get("reasoning_content") or m.get("reasoning")
            if reasoning and i > last_user:  # a tool sub-turn of the answer being written keeps its thinking
                content = THINK + "\n" + reasoning + END_THINK + content
            calls = [c.get("function") or c for c in m.get("tool_calls") or []]
            parts.append(ASSISTANT + content + "".join(render_tool_call(c["name"], c["arguments"]) for c in calls) + EOS)
        elif role == "tool":
            if i == 0 or messages[i - 1]["role"] != "tool":
                parts.append(USER)
            parts.append(TOOL_RESPONSE + content + END_TOOL_RESPONSE)
        else:
            raise ValueError(f"unknown chat role {role!r} (expected system, user, assistant or tool)")
    if add_generation_prompt:
        parts.append(ASSISTANT + THINK + "\n")
    return "".join(parts)


class BackendText:
    """Text <-> ids through a `tokenizers.Tokenizer` held in `self.backend` (shared by r1lab's Tokenizer and
    chat_tokenizer.ChatTokenizer)."""

    backend: HFTokenizer

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        if len(text) > 4096:  # the same ids; encode_batch releases the GIL, so a long text stalls no other thread
            return self.backend.encode_batch([text], add_special_tokens=False)[0].ids
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)


class Tokenizer(BackendText):
    """Thin wrapper over a `tokenizers.Tokenizer` with our special tokens and chat template."""

    def __init__(self, backend: HFTokenizer, model_max_length: int = 4096):
        self.backend = backend
        self.model_max_length = model_max_length
        ids = {t: backend.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer lacks r1lab's special tokens: {missing}")
        self.bos_token_id, self.eos_token_id, self.pad_token_id = ids[BOS], ids[EOS], ids[PAD]
        self.user_token_id, self.assistant_token_id = ids[USER], ids[ASSISTANT]
        self.think_token_id, self.end_think_token_id = ids[THINK], ids[END_THINK]
        self.special_ids = frozenset(ids.values())
        self.bos_token, self.eos_token, self.pad_token = BOS, EOS, PAD
        self.chat_template = CHAT_TEMPLATE

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False, tokenize: bool = True,
                            tools: list[dict] | None = None, **_template_kwargs):
        text = render_chat(messages, add_generation_prompt, tools)
        return self.encode(text) if tokenize else text

    # ---------------------------------------------------------------- files

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(folder / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "unk_token": None,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": self.model_max_length,
            "chat_template": CHAT_TEMPLATE,
        }
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
        (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "Tokenizer":
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"no tokenizer.json in {folder}")
        try:
            backend = HFTokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception on bad files
            raise ValueError(f"cannot read tokenizer file {path}: {e}") from e
        max_len = 4096
        cfg_path = folder / "tokenizer_config.json"
        if cfg_path.exists():
            max_len = int(json.loads(cfg_path.read_text()).get("model_max_length", max_len) or max_len)
        return cls(backend, model_max_length=min(max_len, 1 << 30))


def max_token_chars(tokenizer) -> int:
    """The most characters one token of `tokenizer` can stand for (its longest vocabulary entry; 16 when unknown):
    a text longer than n * max_token_chars cannot fit in n tokens."""
    backend = getattr(tokenizer, "backend", None) or getattr(tokenizer, "_tokenizer", None)
    vocab = backend.get_vocab() if backend is not None and hasattr(backend, "get_vocab") else {}
    return max([len(piece) for piece in vocab] + [16])


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE on `texts`. Every byte is in the base alphabet, so any text round-trips."""
    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        # one token per digit: numbers are then read and written digit by digit, as arithmetic needs
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    # <think> and </think> are ordinary text to a reader (as in DeepSeek-R1's tokenizer): a decode that
    # skips special tokens, as TRL's and vLLM's do, must keep them or the format reward can never fire
    spec = json.loads(backend.to_str())
    for token in spec["added_tokens"]:
        if token["content"] in (THINK, END_THINK):
            token["special"] = False
    return Tokenizer(HFTokenizer.from_str(json.dumps(spec)))


def response_prefix_of(tokenizer) -> str:
    """What the tokenizer's chat template pre-fills in the assistant turn: THINK_PREFIX for r1lab's template
    and R1-Distill's, "" where the model opens the thinking itself (Qwen3); a response is this + the
    generated text (chat_tokenizer.ChatTokenizer.response_prefix)."""
    return getattr(tokenizer, "response_prefix", THINK_PREFIX)


def thinking_prefilled(tokenizer) -> bool:
    """Does the chat template open the thinking itself (r1lab, R1-Distill), or does the model (Qwen3)?"""
    return THINK in response_prefix_of(tokenizer)
