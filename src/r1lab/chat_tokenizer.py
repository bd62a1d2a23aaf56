"""Any Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) with the checkpoint's own Jinja chat
template, rendered in a sandbox as transformers renders it, so the ids match `apply_chat_template`.

Where the reasoning starts differs by template, and `response_prefix` says it: the text the generation
prompt pre-fills inside the assistant turn. R1-Distill templates end with "<think>\\n" (the model continues
the thinking: prefix "<think>\\n"); Qwen3 opens a plain assistant turn and the model writes "<think>"
itself (prefix ""). Trainers, eval and rewards see `response_prefix + completion`, the whole response,
either way.

`apply_chat_template` renders exactly what transformers renders for the same messages, tools and template
arguments: nothing is added. Open-R1's system prompt (which asks a template that never mentions <think>,
Qwen2.5-Instruct's, for the <think>…</think><answer>…</answer> format) is a training recipe's choice: the
recipes ask for it through `recipe_messages`.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from tokenizers import Tokenizer as Backend

from .tokenizer import CHAT_TEMPLATE, CHAT_TEMPLATE_V1, END_THINK, THINK, BackendText, Tokenizer

# Open-R1's SYSTEM_PROMPT (open-r1/src/open_r1/configs.py), which its GRPO recipes use for Qwen2.5-Instruct
R1_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>"
)


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def compile_template(source: str):
    """The template compiled as transformers does: an immutable sandbox, trim_blocks/lstrip_blocks, loop
    controls, `tojson` without ASCII escaping, raise_exception and strftime_now."""
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):  # {% generation %}…{% endgeneration %} marks assistant text; render as is
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def template_messages(messages: list[dict]) -> list[dict]:
    """The messages as transformers hands them to a template: keys whose value is None dropped (templates test
    whether a key is there: `content: null` beside tool calls must read as no content), and an assistant's
    thinking, under any of its names, also as `reasoning_content` and `thinking`."""
    out = []
    for m in messages:
        m = {k: v for k, v in m.items() if v is not None}
        reasoning = next((m[k] for k in REASONING_FIELDS if m.get(k) is not None), None)
        out.append(m if reasoning is None else {"thinking": reasoning, **m, "reasoning_content": reasoning})
    return out


class ChatTokenizer(BackendText):
    """r1lab's tokenizer interface (encode, decode, apply_chat_template, save, the special ids) over a
    checkpoint's own tokenizer files."""

    def __init__(self, backend: Backend, config: dict, generation: dict | None = None, chat_template: str | None = None):
        self.backend, self.config = backend, dict(config)
        template = chat_template or config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": …}, …]
            template = next((t["template"] for t in template if t.get("name") == "default"), template[0]["template"])
        self.chat_template = template or None  # a base model may have none: chat commands then say so
        self._template = compile_template(template) if template else None
        self.specials = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        self.bos_token, self.eos_token = self.specials["bos_token"], self.specials["eos_token"]
        self.pad_token = self.specials["pad_token"] or self.eos_token
        self.bos_token_id = self._id(self.bos_token)
        self.eos_token_id = self._id(self.eos_token)
        if self.eos_token_id is None:
            raise ValueError(f"tokenizer_config.json's eos_token {self.eos_token!r} is not in tokenizer.json")
        self.pad_token_id = self._id(self.pad_token)
        eos = (generation or {}).get("eos_token_id")
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self.eos_token_ids = frozenset([self.eos_token_id, *eos])  # Qwen's chat models stop on two
        self.think_token_id, self.end_think_token_id = self._id(THINK), self._id(END_THINK)
        self.model_max_length = min(int(config.get("model_max_length") or 4096), 1 << 30)
        self.clean_up_spaces = bool(config.get("clean_up_tokenization_spaces"))
        self.system_prompt = None if THINK in (template or "") or END_THINK in (template or "") else R1_SYSTEM_PROMPT
        self.response_prefix = self._response_prefix() if template else ""

    def with_template(self, template: str) -> "ChatTokenizer":
        """This tokenizer with another chat template (serve --chat-template: e.g. a template that shows the model
        its tools where the checkpoint's own does not)."""
        other = copy.copy(self)
        other.chat_template, other._template = template, compile_template(template)
        other.system_prompt = None if THINK in template or END_THINK in template else R1_SYSTEM_PROMPT
        other.response_prefix = other._response_prefix()
        return other

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    def _response_prefix(self) -> str:
        probe = [{"role": "user", "content": "1+1"}]
        bare, opened = self.render(probe, False), self.render(probe, True)
        suffix = opened[len(bare):] if opened.startswith(bare) else opened
        return suffix[suffix.index(THINK):] if THINK in suffix else ""

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        text = self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.clean_up_spaces:  # transformers' clean_up_tokenization
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(a, b)
        return text

    def render(self, messages: list[dict], add_generation_prompt: bool = False, **kwargs) -> str:
        """The template's text for `messages` (as transformers' apply_chat_template(tokenize=False))."""
        if self._template is None:
            raise ValueError("this tokenizer has no chat_template (tokenizer_config.json or chat_template.jinja): "
                             "pass raw text, or add a template")
        return self._template.render(messages=template_messages(messages), add_generation_prompt=add_generation_prompt,
                                     **{k: v for k, v in self.specials.items() if v is not None}, **kwargs)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False, tokenize: bool = True,
                            tools: list[dict] | None = None, **kwargs):
        """Ids (or text) of `messages` through the checkpoint's template, as transformers renders them: `tools`
        (JSON schemas) and any template argument (enable_thinking=False, ...) go to the template."""
        text = self.render(messages, add_generation_prompt, tools=tools, documents=None, **kwargs)
        return self.encode(text) if tokenize else text

    # ---------------------------------------------------------------- files

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(folder / "tokenizer.json"))
        config = dict(self.config, chat_template=self.chat_template) if self.chat_template else dict(self.config)
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        specials = {k: v for k, v in self.specials.items() if v is not None}
        (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "ChatTokenizer":
        folder = Path(folder)
        path = folder / "tokenizer.json"
        try:
            backend = Backend.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception on bad files
            raise ValueError(f"cannot read tokenizer file {path}: {e}") from e
        config, generation, template = {}, {}, None
        for name in ("tokenizer_config.json", "generation_config.json"):
            if (folder / name).exists():
                try:
                    data = json.loads((folder / name).read_text())
                except ValueError as e:
                    raise ValueError(f"cannot read {folder / name}: {e}") from e
                config, generation = (data, generation) if name.startswith("tokenizer") else (config, data)
        if (folder / "chat_template.jinja").exists():
            template = (folder / "chat_template.jinja").read_text()
        elif (folder / "chat_template.json").exists():
            template = json.loads((folder / "chat_template.json").read_text()).get("chat_template")
        return cls(backend, config, generation, template)


def recipe_messages(tokenizer, messages: list[dict]) -> list[dict]:
    """`messages` as r1lab's training recipes feed them: with Open-R1's system prompt first when the
    checkpoint's template does not know <think> and the conversation has no system message."""
    prompt = getattr(tokenizer, "system_prompt", None)
    if prompt and not any(m.get("role") == "system" for m in messages):
        return [{"role": "system", "content": prompt}, *messages]
    return messages


def load_tokenizer(folder: str | Path) -> Tokenizer | ChatTokenizer:
    """r1lab's own Tokenizer when the folder holds it (its special tokens and its chat template), else the
    folder's tokenizer with the folder's own chat template."""
    folder = Path(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    ours = config.get("chat_template", CHAT_TEMPLATE) in (CHAT_TEMPLATE, CHAT_TEMPLATE_V1)
    if ours and not (folder / "chat_template.jinja").exists():
        try:
            return Tokenizer.load(folder)
        except ValueError:  # not r1lab's special tokens
            pass
    return ChatTokenizer.load(folder)
