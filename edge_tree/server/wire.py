"""The OpenAI wire format: a request body checked into generation options, a result shaped into
a completion (or chat completion) and its streamed chunks, and errors in OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, fields
from typing import Any

from ..core.engine import GenerationResult
from ..core.options import GenOptions
from ..errors import EdgeTreeError, HostStalled, InputError, TargetLost, UsageError

# OpenAI fields asking for what edge-tree does not do: accepted only at the value that asks for nothing
NEUTRAL = {"n": (1,), "best_of": (1,), "echo": (False,), "logprobs": (False, 0), "top_logprobs": (0,),
           "presence_penalty": (0,), "frequency_penalty": (0,), "logit_bias": ({},), "suffix": ("",),
           "tools": ([],), "functions": ([],), "response_format": ({"type": "text"},),
           # without tools (refused above unless empty) these ask for nothing at these values
           "tool_choice": ("none", "auto"), "function_call": ("none", "auto"),
           "parallel_tool_calls": (True, False)}
# OpenAI fields that change nothing about the reply
IGNORED = {"user", "metadata", "store", "service_tier"}
ROLES = ("system", "developer", "user", "assistant")  # no tool role: tools are not supported
MESSAGE_FIELDS = {"role", "content"}
STREAM_OPTIONS = {"include_usage"}
MAX_DEPTH = 32  # JSON nesting a request may have: OpenAI's shapes need 4
SURROGATE = re.compile("[\ud800-\udfff]")
OWN = {"model", "stream", "stream_options", "max_completion_tokens"}  # read here, not generation options
GEN_FIELDS = {f.name for f in fields(GenOptions)}

# why the engine stopped -> OpenAI's finish_reason ("length": cut short by a limit, or by a
# shutdown; the reply's "speculation" field says which)
FINISH = {"eos": "stop", "stop": "stop", "max_tokens": "length", "context": "length",
          "max_time": "length", "interrupted": "length"}
SPECULATION_KEYS = ("mode", "stop_reason", "tokens_per_s", "mean_accepted_per_pass", "target_passes",
                    "target_passes_per_token", "drafted", "accepted", "acceptance_rate")


class ApiError(Exception):
    """An answer other than 200, with OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.param, self.code, self.kind = status, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


def server_error(message: str) -> ApiError:
    return ApiError(500, message, kind="server_error")


UNAVAILABLE_RETRY_S = 10  # seconds: a host that is back needs a model load before it serves


def unavailable(error: TargetLost | HostStalled) -> ApiError:
    """Every request while an RPC host is lost (until it is back and the server has loaded the
    target again), or while a pass waits on a host past its deadline (until the host answers)."""
    stalled = isinstance(error, HostStalled)
    then = "retry later" if stalled else "the server loads the target again once the host is back"
    return ApiError(503, f"the target is unavailable for now: {error}; {then}", kind="server_error",
                    code="rpc_host_stalled" if stalled else "target_unavailable",
                    headers={"Retry-After": str(UNAVAILABLE_RETRY_S)})


def error_from(error: Exception, chat: bool) -> ApiError:
    """An exception from a generation: the client's fault is a 400 naming the field, a lost RPC
    host 502, the rest 500."""
    if isinstance(error, UsageError):  # an option value: named as the JSON field, not the flag
        return ApiError(400, str(error).replace(error.option, error.field, 1), param=error.field)
    if isinstance(error, TargetLost):  # the host behind this server failed: a bad gateway
        return ApiError(502, str(error), kind="server_error", code="rpc_host_failed")
    if isinstance(error, HostStalled):  # ... or kept it waiting past the deadline
        return ApiError(502, str(error), kind="server_error", code="rpc_host_timeout")
    if isinstance(error, InputError):
        param = "messages" if chat and error.field == "prompt" else error.field
        return ApiError(400, _in_field_names(str(error)), param=param, code=error.code)
    if isinstance(error, EdgeTreeError):
        return server_error(str(error))
    return server_error(f"internal error: {type(error).__name__}: {error}")


# a generation option's command-line flag -> its JSON field, for messages an HTTP client reads
FIELD_OF_FLAG = {flag: f.name for f in fields(GenOptions) for spelling in f.metadata.get("flags", ())
                 for flag in spelling.split("/") if flag.startswith("--")}
_FLAG = re.compile(r"--[a-z][a-z-]*")


def _in_field_names(message: str) -> str:
    """The engine's words, with generation options named as the body names them."""
    return _FLAG.sub(lambda m: FIELD_OF_FLAG.get(m.group(0), m.group(0)), message)


@dataclass
class Call:
    """One checked request."""

    chat: bool
    id: str
    model: str
    options: GenOptions
    prompt: str | None  # completions
    messages: list[dict] | None  # chat completions, each {"role", "content"} with text content
    stream: bool
    include_usage: bool
    created: int

    @property
    def object(self) -> str:
        return "chat.completion" if self.chat else "text_completion"

    @property
    def chunk_object(self) -> str:
        """A streamed chunk's: OpenAI names chat's apart, completions' alike."""
        return self.object + ".chunk" if self.chat else self.object


@dataclass(frozen=True)
class Limits:
    """The server's own bounds on a request: a slot's context, the default max_tokens
    (--n-predict; None: up to the context) and the longest generation (--timeout, seconds)."""

    n_ctx: int
    n_predict: int | None = None
    timeout: float | None = None


def parse(raw: bytes, chat: bool, model_id: str, limits: Limits) -> Call:
    """A request body -> Call, or ApiError (400, 404) saying which field is wrong."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, f"the body nests deeper than {MAX_DEPTH} levels") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    _check_values(body, "", 0)
    body = {k: v for k, v in body.items() if v is not None}  # null means "not given"
    text_field = "messages" if chat else "prompt"
    _check_fields(body, text_field)
    model = body.get("model", model_id)
    if model != model_id:
        raise ApiError(404, f"the model {model!r} does not exist: this server serves {model_id!r}",
                       param="model", code="model_not_found")
    stream = _typed(body, "stream", bool, False)
    stream_options = _typed(body, "stream_options", dict, {})
    if stream_options and not stream:
        raise ApiError(400, "stream_options: only allowed when stream is true", param="stream_options")
    unknown = sorted(set(stream_options) - STREAM_OPTIONS)
    if unknown:
        raise ApiError(400, f"stream_options: unrecognized field {unknown[0]!r}", param="stream_options",
                       code="unknown_field")
    include_usage = _typed(stream_options, "include_usage", bool, False, "stream_options.include_usage")
    text = _messages(body.get("messages")) if chat else _prompt(body.get("prompt"))
    return Call(chat, f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", model_id,
                _options(body, limits), None if chat else text, text if chat else None,
                stream, include_usage, int(time.time()))


def _check_values(value, where: str, depth: int) -> None:
    """No deeper nesting than MAX_DEPTH, and no lone UTF-16 surrogate in a string (JSON's \\ud800
    escapes decode to text that no tokenizer can encode): a 400 naming the field."""
    if depth > MAX_DEPTH:
        raise ApiError(400, f"the body nests deeper than {MAX_DEPTH} levels", param=where or None)
    if isinstance(value, str):
        if SURROGATE.search(value):
            raise ApiError(400, f"{where}: holds a lone UTF-16 surrogate, which is not text",
                           param=where.split(".")[0].split("[")[0])
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_values(key, where or "body", depth + 1)
            _check_values(item, f"{where}.{key}" if where else key, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_values(item, f"{where}[{i}]", depth + 1)


def _check_fields(body: dict, text_field: str) -> None:
    for name, value in body.items():
        if name in NEUTRAL and value not in NEUTRAL[name]:
            raise ApiError(400, f"{name}: edge-tree supports only {NEUTRAL[name][0]!r}, got {value!r}",
                           param=name, code="unsupported_value")
        if name not in NEUTRAL and name not in IGNORED | OWN | GEN_FIELDS | {text_field}:
            raise ApiError(400, f"unrecognized request field {name!r}", param=name, code="unknown_field")


def _typed(body: dict, name: str, kind: type, default, param: str | None = None):
    value = body.get(name, default)
    if not isinstance(value, kind):
        raise ApiError(400, f"{param or name}: must be {kind.__name__}, got {value!r}", param=param or name)
    return value


def _prompt(prompt) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]  # a batch of one
    if not isinstance(prompt, str):
        raise ApiError(400, f"prompt: must be a string (one prompt per request), got {_short(prompt)}",
                       param="prompt")
    return prompt


def _messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: must be a non-empty list of messages", param="messages")
    return [_message(m, i) for i, m in enumerate(messages)]


def _message(message, i: int) -> dict:
    where = f"messages[{i}]"
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ApiError(400, f"{where}: must be an object with a string role", param="messages")
    if message["role"] not in ROLES:
        raise ApiError(400, f"{where}.role: must be one of {', '.join(ROLES)}, got {_short(message['role'])}",
                       param="messages", code="unsupported_value")
    unknown = sorted(set(message) - MESSAGE_FIELDS)
    if unknown:
        raise ApiError(400, f"{where}: unsupported field {unknown[0]!r} (edge-tree serves text "
                            "messages only)",
                       param="messages", code="unknown_field")
    content = message.get("content") or ""
    if isinstance(content, list):  # content parts: text only
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise ApiError(400, f"{where}.content: only text parts are supported", param="messages")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ApiError(400, f"{where}.content: must be a string or a list of text parts", param="messages")
    return {"role": message["role"], "content": content}


def _options(body: dict, limits: Limits) -> GenOptions:
    """The generation options: OpenAI's sampling fields and edge-tree's own (mode, caps, ...),
    checked as the CLI checks them. Without max_tokens, the reply has the server's default
    length, or may fill the context; it never runs past the server's time limit."""
    values = {k: v for k, v in body.items() if k in GEN_FIELDS}
    if "max_tokens" not in values and "max_completion_tokens" in body:
        values["max_tokens"] = body["max_completion_tokens"]
    if "max_tokens" not in values:
        values.update(max_tokens=limits.n_predict or limits.n_ctx,
                      context_full=values.get("context_full", "stop"))
    asked = values.get("max_time")
    if limits.timeout is not None and (asked is None or _positive_number(asked)):  # else a 400 below
        values["max_time"] = min(asked or limits.timeout, limits.timeout)
    try:
        return GenOptions.from_mapping(values)
    except UsageError as e:
        raise error_from(e, chat=False) from None


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- answers ---------------------------------------------------------------------------------

def usage(result: GenerationResult) -> dict:
    prompt, completion = result.stats["prompt_tokens"], len(result.tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": result.stats["prompt_cached"]}}


def speculation(result: GenerationResult) -> dict:
    """The extra field on every reply: how the speculation went."""
    return {k: result.stats.get(k) for k in SPECULATION_KEYS}


def finish_reason(result: GenerationResult) -> str:
    return FINISH.get(result.stop_reason, "stop")


def reply(call: Call, result: GenerationResult) -> dict:
    """The whole answer of a request that did not stream."""
    finish = finish_reason(result)
    if call.chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": result.text},
                  "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": finish}
    return {**_head(call, call.object), "choices": [choice], "usage": usage(result),
            "speculation": speculation(result)}


def chunk(call: Call, text: str | None = None, result: GenerationResult | None = None,
          role: bool = False) -> dict:
    """One streamed chunk: text, the assistant's role (chat's first chunk), or the end (result)."""
    finish = finish_reason(result) if result else None
    if call.chat:
        delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    out = {**_head(call, call.chunk_object), "choices": [choice]}
    if result:
        out["speculation"] = speculation(result)
    return out


def usage_chunk(call: Call, result: GenerationResult) -> dict:
    """With stream_options.include_usage: a last chunk with no choices and the usage."""
    return {**_head(call, call.chunk_object), "choices": [],
            "usage": usage(result)}


def _head(call: Call, obj: str) -> dict:
    return {"id": call.id, "object": obj, "created": call.created, "model": call.model}


def sse(data: dict | str) -> str:
    """A server-sent event line: a JSON object, or the closing [DONE]."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"
