"""The body of an OpenAI chat-completions request, as `slmops serve` understands it.

Accepted as common OpenAI clients send it: text content parts (joined with a newline, as vLLM does), a `developer`
message (the system message of newer models), null for any optional field (its default), `stop` (a string or up to
4), `stream_options.include_usage`. Fields that would change the answer but that this server cannot honour (n > 1,
tools, logprobs, penalties, a JSON response format, image or audio parts) are refused with a RequestError naming the
field, never ignored. Written by hand, not with pydantic: each refusal must read like OpenAI's own (message, param).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP = 4  # as in the OpenAI API
# Sent by some clients with their neutral value (or null), which is what this server does anyway.
NEUTRAL = {
    "n": [1],
    "frequency_penalty": [0],
    "presence_penalty": [0],
    "logprobs": [False],
    "top_logprobs": [0],
    "logit_bias": [{}],
    "tools": [[]],
    "tool_choice": ["none"],
    "parallel_tool_calls": [True, False],
    "response_format": [{"type": "text"}],
    "store": [False],
}
# Name the caller, not the answer: accepted (strings) and not used.
IDENTIFIERS = {"user", "safety_identifier"}
SUPPORTED = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
    *NEUTRAL,
    *IDENTIFIERS,
}


class RequestError(Exception):
    """An HTTP error answer in OpenAI's shape; `param`: the request field at fault, `retry_after`: seconds (503)."""

    def __init__(
        self,
        status: HTTPStatus,
        message: str,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.retry_after = status, message, code, param, retry_after


def bad(message: str, param: str | None = None, code: str | None = None) -> RequestError:
    return RequestError(HTTPStatus.BAD_REQUEST, message, code, param)


@dataclass(frozen=True)
class ChatRequest:
    """A valid request. max_tokens None: up to the end of the context; temperature 0 (the default): greedy."""

    messages: list[dict]
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    max_tokens_param: str = "max_tokens"  # the field that set max_tokens, for error messages

    def search_options(self) -> dict:
        """onnxruntime-genai search options (less max_length): greedy at temperature 0 or top_p 0 (the narrowest
        nucleus: the most likely token; onnxruntime-genai would read top_p 0 as "no nucleus"), else sampling."""
        if self.temperature == 0 or self.top_p == 0:
            return {"do_sample": False}
        seed = {} if self.seed is None else {"random_seed": self.seed}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, **seed}


def parse_chat_request(body: bytes, model_name: str) -> ChatRequest:
    """The request in `body` (JSON bytes), or a RequestError naming the field at fault: 400, or 404 for another
    model than `model_name`."""
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise bad(f"body is not valid JSON: {err}") from None
    except RecursionError:
        raise bad("body is not valid JSON: nested too deeply") from None
    if not isinstance(request, dict):
        raise bad("body must be a JSON object")
    for key in request:
        if key not in SUPPORTED:
            raise bad(f"'{key}' is not supported by this server", key, "unsupported_parameter")
    if not isinstance(request.get("model"), str):
        raise bad(f"'model' is required: a string, the name this server has ({model_name!r})", "model")
    if request.get("model") != model_name:
        raise RequestError(
            HTTPStatus.NOT_FOUND,
            f"model {request.get('model')!r} not found; this server has {model_name!r}",
            "model_not_found",
            "model",
        )
    _check_neutral(request)
    stream = _optional(request, "stream", bool, False)
    return ChatRequest(
        messages=_messages(request.get("messages")),
        max_tokens=_max_tokens(request),
        max_tokens_param="max_completion_tokens" if request.get("max_completion_tokens") is not None else "max_tokens",
        temperature=_number(request, "temperature", 0, 2, 0.0),  # greedy, as evaluate scored the model
        top_p=_number(request, "top_p", 0, 1, 1.0),
        seed=_seed(request),
        stop=_stop(request.get("stop")),
        stream=stream,
        include_usage=_include_usage(request.get("stream_options"), stream),
    )


def _messages(messages) -> list[dict]:
    """[{role, content}] with developer as system and text parts joined."""
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list", "messages")
    parsed = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise bad(f"{where} must be an object with a role ({', '.join(ROLES)})", f"{where}.role")
        for key in message:
            if key not in ("role", "content"):
                raise bad(f"{where}.{key} is not supported by this server", f"{where}.{key}", "unsupported_parameter")
        parsed.append({"role": ROLES[message["role"]], "content": _content(message.get("content"), where)})
    return parsed


def _content(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise bad(f"{where}.content must be a string or a non-empty list of text parts", f"{where}.content")
    texts = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else None
            raise bad(
                f"{at}: content part of type {kind!r} is not supported; this model reads text parts only",
                f"{at}.type",
                "unsupported_content_type",
            )
        if set(part) != {"type", "text"} or not isinstance(part["text"], str):
            raise bad(f"{at} must be {{'type': 'text', 'text': <string>}}", at)
        texts.append(part["text"])
    return "\n".join(texts)


def _optional(request: dict, key: str, kind: type, default):
    value = request.get(key)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise bad(f"'{key}' must be a {kind.__name__} or null", key)
    return value


def _number(request: dict, key: str, low: float, high: float, default: float) -> float:
    value = request.get(key)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise bad(f"'{key}' must be a number from {low} to {high} (or null), not {value!r}", key)
    return float(value)


def _integer(request: dict, key: str, low: int):
    value = request.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
        raise bad(f"'{key}' must be an integer of at least {low} (or null), not {value!r}", key)
    return value


def _max_tokens(request: dict) -> int | None:
    """max_completion_tokens, else max_tokens (its older name), else None."""
    newer, older = _integer(request, "max_completion_tokens", 1), _integer(request, "max_tokens", 1)
    return newer if newer is not None else older


def _seed(request: dict) -> int | None:
    seed = _integer(request, "seed", 0)
    if seed is not None and seed > 2**32 - 1:
        raise bad(f"'seed' must be at most {2**32 - 1}, not {seed}", "seed")
    return seed


def _stop(stop) -> tuple[str, ...]:
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOP:
        raise bad(f"'stop' must be a string or a list of at most {MAX_STOP} strings (or null)", "stop")
    for i, text in enumerate(stops):
        if not isinstance(text, str) or not text:
            raise bad(f"stop[{i}] must be a non-empty string", "stop")
    return tuple(stops)


def _include_usage(options, stream: bool) -> bool:
    if options is None:
        return False
    if not stream:
        raise bad("'stream_options' is only allowed when 'stream' is true", "stream_options")
    if not isinstance(options, dict):
        raise bad("'stream_options' must be an object or null", "stream_options")
    for key, value in options.items():
        if key == "include_usage" and isinstance(value, (bool, type(None))):
            continue
        if key == "include_obfuscation" and value in (False, None):
            continue  # the stream is not obfuscated; asking for it (true) is refused below
        raise bad(f"stream_options.{key}: {value!r} is not supported by this server", f"stream_options.{key}")
    return bool(options.get("include_usage"))


def _check_neutral(request: dict) -> None:
    for key, allowed in NEUTRAL.items():
        value = request.get(key)
        if value is not None and not any(_same(value, a) for a in allowed):
            shown = " or ".join(json.dumps(a) for a in allowed)
            raise bad(
                f"'{key}': {json.dumps(value)} is not supported by this server (only {shown}, or null)",
                key,
                "unsupported_parameter",
            )
    for key in IDENTIFIERS:
        _optional(request, key, str, None)


def _same(value, allowed) -> bool:
    """JSON equality: 0 equals 0.0, but false is not 0."""
    if isinstance(value, bool) or isinstance(allowed, bool):
        return value is allowed
    return value == allowed
