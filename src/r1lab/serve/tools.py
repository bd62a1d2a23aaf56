"""Function calling: each family's tool-call format — how calls are parsed out of the model's answer and the
grammar that forces one — and the checks on `tools` / `tool_choice` / tool messages.

The formats (named as vLLM's tool parsers name them):

    hermes       Qwen2.5, Qwen3 and r1lab's own template: <tool_call>{"name": …, "arguments": {…}}</tool_call>,
                 one block per call (Qwen puts a newline inside each tag)
    llama3_json  Llama 3.1/3.2: the answer is a bare JSON object {"name": …, "parameters": {…}} (optionally after
                 <|python_tag|>); several are separated by ";"
    deepseek_v3  DeepSeek-V3 and R1: <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
                 ```json ARGS ```<｜tool▁call▁end｜>…<｜tool▁calls▁end｜>

The format is read off the chat template. A call the model garbles (JSON that does not parse, a name not in
`tools`) leaves the whole answer as content: the client sees text, never an error.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from ..tokenizer import CHAT_TEMPLATE
from .errors import APIError

MAX_PARALLEL = 4  # calls one forced answer may make: bounds its length, so a large enough max_tokens always completes it
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # OpenAI's rule for function names (vLLM also allows dots)
DS_CALLS, DS_CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DS_CALL, DS_CALL_END, DS_SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
PYTHON_TAG = "<|python_tag|>"


@dataclass
class Call:
    name: str
    arguments: str  # JSON text of an object
    id: str = ""

    def __post_init__(self) -> None:
        self.id = self.id or f"call_{uuid.uuid4().hex[:24]}"

    def openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def tool_format(tokenizer) -> str:
    """hermes | llama3_json | deepseek_v3, from the tokenizer's chat template (hermes when it shows no format)."""
    template = getattr(tokenizer, "chat_template", None) or CHAT_TEMPLATE
    if DS_CALLS in template:
        return "deepseek_v3"
    if "<|start_header_id|>" in template and "parameters" in template:
        return "llama3_json"
    return "hermes"


# ---------------------------------------------------------------- parsing

def _call_from_json(obj, names: set[str], key: str | None = None) -> Call | None:
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get(key) if key else obj.get("arguments", obj.get("parameters"))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None
    return Call(obj["name"], json.dumps(args, ensure_ascii=False))


def _parse_hermes(text: str, names: set[str]) -> tuple[str, list[Call]] | None:
    at = text.find("<tool_call>")
    if at < 0:
        return None
    calls = []
    for body in re.findall(r"<tool_call>(.*?)(?:</tool_call>|$)", text[at:], flags=re.S):
        try:
            call = _call_from_json(json.loads(body.strip()), names)
        except ValueError:
            return None
        if call is None:
            return None
        calls.append(call)
    return text[:at], calls


def _parse_llama(text: str, names: set[str]) -> tuple[str, list[Call]] | None:
    body = text.strip()
    if body.startswith(PYTHON_TAG):
        body = body[len(PYTHON_TAG):].lstrip()
    if not body.startswith("{"):
        return None
    decoder, calls, pos = json.JSONDecoder(), [], 0
    while pos < len(body):
        try:
            obj, end = decoder.raw_decode(body, pos)
        except ValueError:
            return None
        call = _call_from_json(obj, names)
        if call is None:
            return None
        calls.append(call)
        pos = end
        while pos < len(body) and body[pos] in " \t\r\n;":
            pos += 1
    return "", calls


def _parse_deepseek(text: str, names: set[str]) -> tuple[str, list[Call]] | None:
    at = text.find(DS_CALLS)
    if at < 0:
        return None
    pattern = re.escape(DS_CALL) + r"(\w+)" + re.escape(DS_SEP) + r"(.*?)\n```(?:json)?\n(.*?)\n```" + re.escape(DS_CALL_END)
    calls = []
    for _, name, args in re.findall(pattern, text[at:], flags=re.S):
        try:
            call = _call_from_json({"name": name.strip(), "arguments": json.loads(args)}, names)
        except ValueError:
            return None
        if call is None:
            return None
        calls.append(call)
    return (text[:at], calls) if calls else None


PARSERS = {"hermes": _parse_hermes, "llama3_json": _parse_llama, "deepseek_v3": _parse_deepseek}


def parse_calls(fmt: str, text: str, names: set[str]) -> tuple[str | None, list[Call]]:
    """(content, calls) of an answer; garbled or absent calls: (text, [])."""
    parsed = PARSERS[fmt](text, names)
    if not parsed or not parsed[1]:
        return text, []
    content = parsed[0].strip()
    return content or None, parsed[1]


def call_start(fmt: str) -> str:
    """The text that opens a call in the answer (for streaming: what to hold back once seen)."""
    return {"hermes": "<tool_call>", "llama3_json": "{", "deepseek_v3": DS_CALLS}[fmt]


def render_calls(fmt: str, calls: list[dict], own_template: bool = False) -> str:
    """OpenAI-shaped calls ({"function": {"name", "arguments"}}) as the model writes them in `fmt` (what the
    parsers read back, and what SFT trains an assistant turn with tool calls to write)."""
    out = []
    for c in calls:
        fn = c.get("function") or c
        args = fn["arguments"] if isinstance(fn["arguments"], str) else json.dumps(fn["arguments"], ensure_ascii=False)
        name = json.dumps(fn["name"], ensure_ascii=False)
        if fmt == "llama3_json":
            out.append(f'{{"name": {name}, "parameters": {args}}}')
        elif fmt == "deepseek_v3":
            out.append(f"{DS_CALL}function{DS_SEP}{fn['name']}\n```json\n{args}\n```{DS_CALL_END}")
        elif own_template:
            out.append(f'<tool_call>{{"name": {name}, "arguments": {args}}}</tool_call>')
        else:
            out.append(f'\n<tool_call>\n{{"name": {name}, "arguments": {args}}}\n</tool_call>')
    if fmt == "llama3_json":
        return "; ".join(out)
    if fmt == "deepseek_v3":
        return DS_CALLS + "\n".join(out) + DS_CALLS_END
    return "".join(out)


# ---------------------------------------------------------------- forcing a call (constrained decoding)

def _parameters(tool: dict) -> dict:
    """A tool's parameters schema for a forced call: no arguments the function does not declare, unless the schema
    says otherwise (a function cannot take them; and a weak model could invent keys without end)."""
    params = dict(tool["function"].get("parameters") or {"type": "object"})
    params.setdefault("additionalProperties", False)
    return params


def call_schema(tools: list[dict], key: str = "arguments") -> dict:
    """A JSON schema for one call object {"name": N, key: ARGS} of any of `tools`."""
    options = [{"type": "object", "properties": {"name": {"const": t["function"]["name"]}, key: _parameters(t)},
                "required": ["name", key], "additionalProperties": False} for t in tools]
    return options[0] if len(options) == 1 else {"anyOf": options}


def call_grammar(fmt: str, tools: list[dict], parallel: bool, grammars, own_template: bool) -> str:
    """A Lark grammar whose every sentence is one call (or several, if `parallel`) of `tools` in the family's
    format: what `tool_choice: "required"` and a named function constrain the answer to (at most MAX_PARALLEL calls)."""
    if fmt == "llama3_json":  # Llama 3.1/3.2 templates render one call per turn: no parallel calls
        return f"start: {grammars.json_schema(call_schema(tools, 'parameters'))}\n"
    if fmt == "deepseek_v3":
        bodies = []
        for t in tools:
            name = t["function"]["name"]
            args = grammars.json_schema(_parameters(t))
            bodies.append(f'{grammars.token(DS_CALL)} "function" {grammars.token(DS_SEP)} {json.dumps(name)} '
                          f'"\\n```json\\n" {args} "\\n```" {grammars.token(DS_CALL_END)}')
        repeat = f'("\\n" call){{0,{MAX_PARALLEL - 1}}}' if parallel else ""
        return (f"start: {grammars.token(DS_CALLS)} call {repeat} {grammars.token(DS_CALLS_END)}\n"
                + "call: " + " | ".join(f"({b})" for b in bodies) + "\n")
    inner = "" if own_template else '"\\n"'  # Qwen writes a newline inside the tags, r1lab's template none
    sep = "" if own_template else '"\\n"'
    call = f'{grammars.token("<tool_call>")} {inner} {grammars.json_schema(call_schema(tools))} {inner} ' \
           f'{grammars.token("</tool_call>")}'
    return f"start: call ({sep} call){{0,{MAX_PARALLEL - 1}}}\ncall: {call}\n" if parallel else f"start: {call}\n"


# ---------------------------------------------------------------- request checks

def check_tools(tools: list[dict] | None, tool_choice) -> list[dict]:
    """The tools a request offers, checked (400s name the field); [] when none. tool_choice: none | auto |
    required | {"type": "function", "function": {"name": …}}."""
    tools = tools or []
    seen = set()
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(fn, dict):
            raise APIError(400, "each tool must be {\"type\": \"function\", \"function\": {...}}", param=f"tools.{i}")
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise APIError(400, f"tools.{i}.function.name must be 1-64 letters, digits, '_', '-' or '.'",
                           param=f"tools.{i}.function.name")
        if name in seen:
            raise APIError(400, f"two tools are named {name!r}", param=f"tools.{i}.function.name")
        seen.add(name)
        params = fn.get("parameters")
        if params is not None and (not isinstance(params, dict) or params.get("type", "object") != "object"):
            raise APIError(400, "a function's parameters must be a JSON schema of type object",
                           param=f"tools.{i}.function.parameters")
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if name not in seen:
            raise APIError(400, f"tool_choice names the function {name!r}, which is not in tools",
                           param="tool_choice")
    elif tool_choice == "required" and not tools:
        raise APIError(400, "tool_choice 'required' needs at least one tool", param="tool_choice")
    return tools


def chosen_tools(tools: list[dict], tool_choice) -> list[dict]:
    """The tools a forced call may use: the named one, or all."""
    if isinstance(tool_choice, dict):
        return [t for t in tools if t["function"]["name"] == tool_choice["function"]["name"]]
    return tools


def check_tool_messages(messages: list[dict]) -> None:
    """Every tool message answers a call an earlier assistant message made (OpenAI's rule)."""
    calls: set[str] = set()
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            calls.update(c.get("id") for c in m.get("tool_calls") or [])
        elif m["role"] == "tool":
            if not m.get("tool_call_id") or m["tool_call_id"] not in calls:
                raise APIError(400, f"messages.{i}: a message with role 'tool' must answer a preceding assistant "
                               f"message's tool_calls; no call has the id {m.get('tool_call_id')!r}",
                               param=f"messages.{i}.tool_call_id")
