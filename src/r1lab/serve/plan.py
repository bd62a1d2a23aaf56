"""From a chat request to what the engine runs: the template's messages, the prompt (tools and template
arguments rendered by the checkpoint's own template), whether the answer starts inside the thinking, and the
constraint each choice decodes under (a forced tool call or a response_format, after the thinking; a
thinking budget).

The thinking switch: `chat_template_kwargs` go to the template as they are (Qwen3 reads `enable_thinking`,
DeepSeek-V3.1 `thinking`); `reasoning_effort: "none"` sets both to false, any other effort to true. A template
that pre-fills "<think>\\n" whatever it is told (r1lab's, R1-Distill's) has the thinking closed right there
("</think>") when the switch says off.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..engine.constraint import Grammars, GrammarError, ThinkingBudget
from ..tokenizer import END_THINK, THINK, Tokenizer
from .errors import APIError
from .tools import call_grammar, check_tool_messages, check_tools, chosen_tools, tool_format


@dataclass
class ChatPlan:
    tools: list[dict] = field(default_factory=list)
    tool_choice: str | dict = "none"
    fmt: str = "hermes"
    template_kwargs: dict = field(default_factory=dict)
    thinking_off: bool = False
    prefilled: bool = True  # the answer starts inside the thinking (set when the prompt is rendered)
    constraint: object = None  # () -> a fresh Constraint per choice, or None

    @property
    def parse_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def names(self) -> set[str]:
        return {t["function"]["name"] for t in self.tools}


def chat_messages(body) -> list[dict]:
    """The request's messages as chat templates read them (OpenAI's shape; a call's arguments as an object)."""
    out = []
    for m in body.messages:
        d = {"role": "system" if m.role == "developer" else m.role,
             "content": None if m.content is None and m.role == "assistant" else m.text()}
        if m.role == "assistant":
            reasoning = m.reasoning if m.reasoning is not None else m.reasoning_content
            if reasoning is not None:
                d["reasoning_content"] = reasoning
            if m.tool_calls:
                d["tool_calls"] = [{"id": c.id, "type": "function",
                                    "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
                                   for c in m.tool_calls]
        if m.role == "tool":
            d["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            d["name"] = m.name
        out.append(d)
    return out


def _arguments(text: str):
    try:
        value = json.loads(text)
    except ValueError:
        return text  # not JSON: the template gets the text as it came
    return value if isinstance(value, dict) else text


def _grammars(state) -> Grammars:
    if getattr(state, "grammars", None) is None:
        model = getattr(state.engine, "model", None)
        vocab = getattr(getattr(model, "config", None), "vocab_size", None) or state.tokenizer.vocab_size
        state.grammars = Grammars(state.tokenizer, vocab)
    return state.grammars


def plan_chat(state, body, messages: list[dict]) -> ChatPlan:
    """Check the tool, format and thinking fields of `body` (400s) and plan the request."""
    choice = body.tool_choice.model_dump() if hasattr(body.tool_choice, "model_dump") else body.tool_choice
    tools = check_tools([t.model_dump(exclude_none=True) for t in body.tools or []], choice)
    check_tool_messages(messages)
    plan = ChatPlan(tools=tools, tool_choice=choice or ("auto" if tools else "none"), fmt=tool_format(state.tokenizer))
    kwargs = dict(body.chat_template_kwargs or {})
    if body.reasoning_effort is not None:
        on = body.reasoning_effort != "none"
        kwargs.setdefault("enable_thinking", on)
        kwargs.setdefault("thinking", on)
    plan.template_kwargs = kwargs
    plan.thinking_off = kwargs.get("enable_thinking") is False or kwargs.get("thinking") is False
    forced = plan.tool_choice == "required" or isinstance(plan.tool_choice, dict)
    fmt = body.response_format
    wants_json = fmt is not None and fmt.type != "text"
    if forced and wants_json:
        raise APIError(400, "response_format cannot be combined with a forced tool_choice", param="response_format")
    grammar = None
    try:
        if forced:
            named = isinstance(plan.tool_choice, dict)
            lark = call_grammar(plan.fmt, chosen_tools(tools, plan.tool_choice), body.parallel_tool_calls and not named,
                                _grammars(state), isinstance(state.tokenizer, Tokenizer))
            grammar = _grammars(state).compile(lark)
        elif wants_json:
            schema = {"type": "object"} if fmt.type == "json_object" else (fmt.json_schema.schema_ if fmt.json_schema else None)
            if not isinstance(schema, dict) or not schema:
                raise APIError(400, "response_format json_schema needs json_schema.schema", param="response_format")
            grammar = _grammars(state).compile(f"start: {Grammars.json_schema(schema)}\n")
    except GrammarError as e:
        raise APIError(400, f"cannot compile the {'tools' if forced else 'response_format'} schema: {e}",
                       param="tools" if forced else "response_format", code="invalid_schema") from e
    budget = next((b for b in (body.thinking_budget, body.thinking_token_budget, getattr(state, "thinking_budget", None))
                   if b is not None), None)
    plan.constraint = _constraint_factory(state, plan, grammar, budget)
    return plan


def _constraint_factory(state, plan: ChatPlan, grammar, budget: int | None):
    tokenizer = state.tokenizer
    think_id, end_id = getattr(tokenizer, "think_token_id", None), getattr(tokenizer, "end_think_token_id", None)
    template = getattr(tokenizer, "chat_template", None) or ""
    if grammar is None and (budget is None or end_id is None):
        return None

    def make():
        # where the model opens the thinking itself (Qwen3), its first token may be <think>
        can_open = not plan.prefilled and not plan.thinking_off and THINK in template and think_id is not None
        opener = think_id if can_open else None
        if grammar is None:
            if not (plan.prefilled or can_open):
                return None
            return ThinkingBudget(_grammars(state).vocab_size, thinking=plan.prefilled, think_id=opener,
                                  end_think_id=end_id, budget=budget)
        return _grammars(state).constraint(grammar, thinking=plan.prefilled, think_id=opener, end_think_id=end_id,
                                           budget=budget)
    return make


def render_prompt(tokenizer, messages: list[dict], plan: ChatPlan) -> list[int]:
    """The prompt's ids through the checkpoint's template (tools and template arguments included); sets
    plan.prefilled. DeepSeek's templates join a call's arguments as text: they get the JSON text."""
    import jinja2

    tools = plan.tools or None
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, tools=tools,
                                             **plan.template_kwargs)
    except (TypeError, jinja2.TemplateError):
        as_text = [dict(m, tool_calls=[dict(c, function=dict(c["function"], arguments=_as_text(c["function"]["arguments"])))
                                       for c in m["tool_calls"]]) if m.get("tool_calls") else m for m in messages]
        text = tokenizer.apply_chat_template(as_text, add_generation_prompt=True, tokenize=False, tools=tools,
                                             **plan.template_kwargs)
    opened = text.rstrip().endswith(THINK)
    if opened and plan.thinking_off:
        text += END_THINK + "\n\n"  # the template opened the thinking regardless: close it at once
        opened = False
    plan.prefilled = opened
    return tokenizer.encode(text)


def _as_text(arguments) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
