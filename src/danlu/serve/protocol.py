"""OpenAI request bodies, validated into plain engine requests; errors in OpenAI's shape.

Bodies are parsed from the raw bytes in pydantic's strict JSON mode, so `"max_tokens": "10"` or
`"temperature": "hot"` is a 400 naming the field, not a silent coercion. Fields the server does not know
are ignored with a warning (as vLLM does); fields it knows but cannot honour (`suffix`, `best_of`,
`tools`) are a 400.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from danlu.errors import ConfigError, TokenizerError
from danlu.infer.params import SamplingParams

log = logging.getLogger(__name__)

# The most choices one request may ask for (n), and the most alternatives per token (logprobs).
MAX_N = 16
MAX_LOGPROBS = 20
# Completions' default max_tokens (OpenAI's); chat's default is the rest of the context.
DEFAULT_COMPLETION_TOKENS = 16
# OpenAI's newer "developer" role is the system message of older models.
ROLE_ALIASES = {"developer": "system"}
CHAT_ROLES = ("system", "user", "assistant")


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ------------------------------------------------------------------------------------------- bodies


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    """The fields completions and chat share (OpenAI's, plus vLLM's top_k, min_p, repetition_penalty,
    ignore_eos and stop_token_ids)."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    n: int = 1
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = None


class JSONSchemaFormat(_Body):
    name: str = "response"
    # "schema" shadows a BaseModel attribute, hence the alias
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None


_UNSUPPORTED = {
    "suffix": "insertion (suffix) is not supported",
    "best_of": "best_of is not supported; use n",
    "tools": "tool calls are not supported",
    "functions": "function calls are not supported",
}


B = TypeVar("B", bound=_Body)
_TYPE_NAMES = {"str", "int", "float", "bool", "dict", "list", "TextPart"}


def parse_body(cls: type[B], raw: bytes) -> B:
    """The request body as cls, or an APIError(400) naming the first bad field."""
    try:
        body = cls.model_validate_json(raw or b"")
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        if err["type"] in ("json_invalid", "json_type"):
            raise APIError(
                400, f"the request body is not valid JSON ({err['msg']})", code="invalid_json"
            ) from None
        # a union's errors name the member they tried ("prompt.list[int]"): keep the field path only
        path = [p for p in err["loc"] if isinstance(p, int) or ("[" not in p and p not in _TYPE_NAMES)]
        param = ".".join(str(p) for p in path)
        if err["type"] == "missing":
            raise APIError(400, f"{param} is required", param=param, code="missing_field") from None
        got = repr(err.get("input"))[:60]
        raise APIError(400, f"{param}: {err['msg']} (got {got})", param=param, code="invalid_type") from None
    for name, why in _UNSUPPORTED.items():
        value = getattr(body, name, None)
        if value is not None and value != [] and not (name == "best_of" and value == 1):
            raise APIError(400, why, param=name, code="unsupported_parameter")
    if body.model_extra:
        log.warning("ignoring unknown request fields: %s", ", ".join(sorted(body.model_extra)))
    return body


# ---------------------------------------------------------------------------------- engine requests


@dataclass
class EngineRequest:
    """One prompt of a request, tokenized, and the parameters of its choices (one per n)."""

    prompt_ids: list[int]
    params: list[SamplingParams]
    # what `echo` prints for the prompt: the prompt string as sent, or the ids decoded
    prompt_text: str


def check_model(model: str | None, served_name: str) -> None:
    """A request may name the served model or none; any other name is OpenAI's 404 model_not_found."""
    if model is not None and model != served_name:
        raise APIError(
            404,
            f"the model {model!r} does not exist; this server serves {served_name!r} (see /v1/models)",
            param="model",
            code="model_not_found",
        )


def _max_tokens(
    value: int | None,
    param: str,
    prompt_param: str,
    prompt_len: int,
    context: int,
    minimum: int,
    default: int,
) -> int:
    """The number of tokens to generate: value, checked to be >= minimum and to fit the context beside
    the prompt; unset, min(default, what fits)."""
    room = context - prompt_len
    if value is not None and value < minimum:
        raise APIError(400, f"{param} must be >= {minimum}, got {value}", param=param, code="invalid_value")
    if room < minimum:
        raise APIError(
            400,
            f"the prompt has {prompt_len} tokens and this model's context is {context} tokens: shorten it "
            f"to at most {context - minimum} tokens",
            param=prompt_param,
            code="context_length_exceeded",
        )
    if value is None:
        return min(default, room)
    if value > room:
        raise APIError(
            400,
            f"{param}={value} does not fit: the prompt has {prompt_len} tokens and the context is {context}, "
            f"so at most {room} new tokens",
            param=param,
            code="context_length_exceeded",
        )
    return value


def _logit_bias(bias: dict[str, float] | None, vocab_size: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        if not key.lstrip("-").isdigit() or not 0 <= int(key) < vocab_size:
            raise APIError(
                400, f"logit_bias keys are token ids in [0, {vocab_size}), got {key!r}", param="logit_bias"
            )
        out[int(key)] = value
    return out


def _sampling_params(
    body: _Sampling,
    max_tokens: int,
    vocab_size: int,
    logprobs: int | None,
    prompt_logprobs: int | None = None,
    constraint: dict[str, Any] | None = None,
) -> list[SamplingParams]:
    if not 1 <= body.n <= MAX_N:
        raise APIError(400, f"n must be in [1, {MAX_N}], got {body.n}", param="n", code="invalid_value")
    if body.temperature is not None and not 0 <= body.temperature <= 2:
        raise APIError(400, f"temperature must be in [0, 2], got {body.temperature}", param="temperature")
    if logprobs is not None and not 0 <= logprobs <= MAX_LOGPROBS:
        name = "top_logprobs" if isinstance(body, ChatRequest) else "logprobs"
        raise APIError(400, f"{name} must be in [0, {MAX_LOGPROBS}], got {logprobs}", param=name)
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    for s in body.stop_token_ids or []:
        if not 0 <= s < vocab_size:
            raise APIError(400, f"stop_token_ids: {s} is not a token id", param="stop_token_ids")
    fields: dict[str, Any] = {
        "max_tokens": max_tokens,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "top_k": body.top_k or 0,
        "min_p": body.min_p or 0.0,
        "frequency_penalty": body.frequency_penalty or 0.0,
        "presence_penalty": body.presence_penalty or 0.0,
        "repetition_penalty": 1.0 if body.repetition_penalty is None else body.repetition_penalty,
        "logit_bias": _logit_bias(body.logit_bias, vocab_size),
        "stop": stop,
        "stop_token_ids": list(body.stop_token_ids or []),
        "ignore_eos": body.ignore_eos,
        "logprobs": logprobs,
        "prompt_logprobs": prompt_logprobs,
        "constraint": constraint,
    }
    out = []
    for i in range(body.n):
        # with a seed, the n choices are n different draws that a rerun repeats
        seed = None if body.seed is None else body.seed + i
        try:
            out.append(SamplingParams(**fields, seed=seed))
        except ConfigError as e:
            param = str(e).split(":", 1)[0]
            raise APIError(400, str(e), param=param, code="invalid_value") from None
    return out


def _check_ids(ids: list[int], vocab_size: int, param: str) -> None:
    if not ids:
        raise APIError(400, f"{param} is empty", param=param)
    bad = next((i for i in ids if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise APIError(
            400, f"{param}: token id {bad} is outside the vocabulary [0, {vocab_size})", param=param
        )


def completion_requests(body: CompletionRequest, tokenizer: Any, context: int) -> list[EngineRequest]:
    """One EngineRequest per prompt of a /v1/completions body (a string, ids, or a list of either)."""
    p = body.prompt
    prompts: list[str | list[int]]
    if isinstance(p, str):
        prompts = [p]
    elif p and isinstance(p[0], list):
        prompts = list(p)  # type: ignore[arg-type]
    elif p and isinstance(p[0], int):
        prompts = [p]  # type: ignore[list-item]
    else:
        prompts = list(p)  # type: ignore[arg-type]
    if not prompts:
        raise APIError(400, "prompt is empty", param="prompt")
    if body.echo and body.stream:
        raise APIError(400, "echo is not supported with stream", param="echo")
    out = []
    for prompt in prompts:
        if isinstance(prompt, str):
            ids = tokenizer.encode(prompt, allowed_special="all")
            text = prompt
        else:
            _check_ids(prompt, tokenizer.vocab_size, "prompt")
            ids, text = list(prompt), tokenizer.decode(prompt)
        if not ids:
            raise APIError(400, "prompt is empty", param="prompt")
        minimum = 0 if body.echo else 1  # echo with max_tokens 0 scores a prompt (lm-eval does)
        max_tokens = _max_tokens(
            body.max_tokens, "max_tokens", "prompt", len(ids), context, minimum, DEFAULT_COMPLETION_TOKENS
        )
        prompt_logprobs = body.logprobs if body.echo else None
        if body.echo and max_tokens == 1 and body.logprobs is not None:
            # scoring (lm-eval drops the last position): the one token must be generated even when it
            # is an end token, which would otherwise end the request with no token at all
            body = body.model_copy(update={"ignore_eos": True})
        params = _sampling_params(body, max_tokens, tokenizer.vocab_size, body.logprobs, prompt_logprobs)
        out.append(EngineRequest(ids, params, text))
    return out


def _message_text(m: ChatMessage) -> str:
    if m.content is None:
        return ""
    if isinstance(m.content, str):
        return m.content
    return "".join(part.text for part in m.content)


def chat_messages(body: ChatRequest) -> list[dict[str, str]]:
    if not body.messages:
        raise APIError(400, "messages is empty", param="messages")
    out = []
    for i, m in enumerate(body.messages):
        role = ROLE_ALIASES.get(m.role, m.role)
        if role not in CHAT_ROLES:
            raise APIError(
                400,
                f"messages.{i}.role: unknown role {m.role!r}; roles are {', '.join(CHAT_ROLES)} (or developer)",
                param=f"messages.{i}.role",
            )
        out.append({"role": role, "content": _message_text(m)})
    return out


def response_constraint(fmt: ResponseFormat | None) -> dict[str, Any] | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json"}
    if fmt.json_schema is None or not fmt.json_schema.schema_:
        raise APIError(
            400, "response_format json_schema needs json_schema.schema", param="response_format.json_schema"
        )
    return {"type": "json_schema", "schema": fmt.json_schema.schema_}


def chat_request(
    body: ChatRequest, prompt_ids: list[int], tokenizer: Any, context: int, extra_stop: str | None = None
) -> EngineRequest:
    """The engine request of a /v1/chat/completions body whose messages rendered to prompt_ids;
    `extra_stop` ends the reply where the prompt's form ends a turn (a base model's transcript line)."""
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        log.warning("both max_tokens and max_completion_tokens given; using max_completion_tokens")
    value = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    name = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens = _max_tokens(value, name, "messages", len(prompt_ids), context, 1, context)
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    params = _sampling_params(
        body, max_tokens, tokenizer.vocab_size, logprobs, constraint=response_constraint(body.response_format)
    )
    if extra_stop is not None:
        params = [dataclasses.replace(p, stop=[*p.stop, extra_stop]) for p in params]
    return EngineRequest(prompt_ids, params, "")


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]], model_name: str) -> list[int]:
    """The conversation through the model's chat template, ending with the assistant's turn opened."""
    if hasattr(tokenizer, "chat_template") and not tokenizer.chat_template:
        raise APIError(
            400,
            f"{model_name} is a base model without a chat template; use /v1/completions with a plain prompt",
            param="messages",
            code="no_chat_template",
        )
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    except TokenizerError as e:
        raise APIError(400, str(e), param="messages") from None
    return tokenizer.encode(text, allowed_special="all")
