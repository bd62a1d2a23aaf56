"""The OpenAI wire protocol (the subset we serve), as pydantic models.

Requests are strict about types (a string where a number belongs is a 400, as OpenAI answers) and lenient
about extra fields (ignored, so any OpenAI client's newer options do no harm). Responses are built as
models and dumped to JSON; the thinking goes out twice, as `reasoning` (vLLM, Ollama) and `reasoning_content`
(the DeepSeek API).
"""
from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_N = 16  # choices per request
MAX_STOP = 16  # stop strings per request
MAX_LOGPROBS = 20  # alternatives per token (top_logprobs, logprobs, prompt_logprobs), OpenAI's chat limit
LogprobCount = Annotated[int, Field(ge=0, le=MAX_LOGPROBS)]


class Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)


class TextPart(Request):
    type: Literal["text"]
    text: str


class FunctionCall(Request):
    name: str
    arguments: str  # JSON text of an object, as OpenAI sends it


class ToolCall(Request):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    # an earlier answer's thinking, under either name: the template decides what it keeps (DeepSeek's rule:
    # dropped once a new user turn starts, kept across the tool sub-turns of one answer)
    reasoning: str | None = None
    reasoning_content: str | None = None
    name: str | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=128)] | None = None  # assistant
    tool_call_id: str | None = None  # tool

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class FunctionDef(Request):
    name: str
    description: str | None = None
    parameters: dict | None = None  # a JSON schema of type object
    strict: bool | None = None


class Tool(Request):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(Request):
    name: str


class NamedToolChoice(Request):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(Request):
    name: str | None = None
    description: str | None = None
    schema_: dict = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class StreamOptions(Request):
    include_usage: bool = False


class SamplingFields(Request):
    """What both endpoints share."""

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    seed: Annotated[int, Field(ge=-(2**63), lt=2**63)] | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM's extensions, handy for benchmarks and tests
    top_k: Annotated[int, Field(ge=0)] = 0
    ignore_eos: bool = False

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]  # an empty stop string would end every completion at once


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: LogprobCount | None = None  # needs logprobs: true
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None  # default: auto with tools
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    # the thinking switch: template arguments (Qwen3's enable_thinking, DeepSeek-V3.1's thinking) and OpenAI's
    # reasoning_effort ("none" switches the thinking off); a budget closes the thinking after that many tokens
    chat_template_kwargs: dict | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    thinking_budget: Annotated[int, Field(ge=0)] | None = None
    thinking_token_budget: Annotated[int, Field(ge=0)] | None = None  # vLLM's name for the same


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(SamplingFields):
    prompt: str | Annotated[list[str], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
    echo: bool = False
    max_tokens: Annotated[int, Field(ge=0)] | None = None  # 0 (with echo or prompt_logprobs): score the prompt only
    logprobs: LogprobCount | None = None  # the legacy API's: log-probs, with this many alternatives per token
    prompt_logprobs: LogprobCount | None = None  # vLLM's: score every prompt token


# ---------------------------------------------------------------- responses

class Response(BaseModel):
    model_config = ConfigDict(extra="allow")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class CompletionTokensDetails(Response):
    reasoning_tokens: int = 0


class Usage(Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails | None = None


class AssistantMessage(Response):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    reasoning: str | None = None  # the thinking, under vLLM's and Ollama's name and DeepSeek's
    reasoning_content: str | None = None
    tool_calls: list[dict] | None = None


class TopLogprob(Response):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(Response):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class TextLogprobs(Response):
    """The legacy completions API's log-probs: parallel lists, one entry per token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class PromptLogprob(Response):
    """One token of vLLM's prompt_logprobs."""

    logprob: float
    rank: int
    decoded_token: str


class ChatChoice(Response):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None


class CompletionHeader(Response):
    """The fields every completion object and chunk starts with, in OpenAI's order (subclasses pin `object`)."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: str


class ChatCompletion(CompletionHeader):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(Response):
    role: str | None = None
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[dict] | None = None


class ChatChunkChoice(Response):
    index: int
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(CompletionHeader):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class TextChoice(Response):
    index: int
    text: str
    logprobs: TextLogprobs | None = None
    finish_reason: str | None = None
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = None


class TextCompletion(CompletionHeader):
    object: Literal["text_completion"] = "text_completion"
    choices: list[TextChoice]
    usage: Usage | None = None


class ModelCard(Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "r1lab"
    max_model_len: int | None = None


class ModelList(Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(Response):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(Response):
    error: ErrorInfo
