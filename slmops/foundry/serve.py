"""`slmops serve`: an OpenAI-compatible HTTP server over a packaged (onnxruntime-genai) model.

    slmops serve models/foundry/support-triage-slm [--host 127.0.0.1] [--port 8000]

POST /v1/chat/completions (with or without "stream": true) and GET /v1/models. Errors use OpenAI's shape,
{"error": {"message", "type", "code"}}: 400 for a malformed body, 404 for an unknown model or path,
413 for a body over --max-body-bytes. Written on the standard library's ThreadingHTTPServer: three
endpoints need no web framework. Requests are answered one at a time (the model holds the CPU anyway).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from slmops.core.config import GenerationSettings
from slmops.onnx.runtime import OnnxChatModel

ROLES = {"system", "user", "assistant"}


class RequestError(Exception):
    def __init__(self, status: HTTPStatus, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def parse_chat_request(body: bytes, model_name: str, context_length: int) -> dict:
    """The request's messages and settings, or a RequestError naming what is wrong."""
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not valid JSON: {err}") from None
    if not isinstance(request, dict):
        raise RequestError(HTTPStatus.BAD_REQUEST, "body must be a JSON object")
    if request.get("model") != model_name:
        raise RequestError(
            HTTPStatus.NOT_FOUND,
            f"model {request.get('model')!r} not found; this server has {model_name!r}",
            "model_not_found",
        )
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(HTTPStatus.BAD_REQUEST, "'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"messages[{i}] must be an object with a role ({', '.join(sorted(ROLES))}) and a string content",
            )
    max_tokens = request.get("max_completion_tokens", request.get("max_tokens", context_length))
    temperature, top_p = request.get("temperature", 0.0), request.get("top_p", 1.0)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise RequestError(HTTPStatus.BAD_REQUEST, "'max_tokens' must be a positive integer")
    for key, value, low, high in (("temperature", temperature, 0, 2), ("top_p", top_p, 0, 1)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"'{key}' must be a number from {low} to {high}")
    return {
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "max_tokens": max_tokens,
        "temperature": float(temperature),
        "top_p": float(top_p),
        "stream": bool(request.get("stream", False)),
    }


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, model: OnnxChatModel, name: str, max_body_bytes: int):
        super().__init__(address, ChatHandler)
        self.model, self.name, self.max_body_bytes = model, name, max_body_bytes
        self.lock = threading.Lock()


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # one short line per request on stderr
        super().log_message(fmt, *args)

    def do_GET(self):
        if self.path.rstrip("/") == "/v1/models":
            self._json(
                HTTPStatus.OK,
                {
                    "object": "list",
                    "data": [{"id": self.server.name, "object": "model", "created": 0, "owned_by": "slmops"}],
                },
            )
        else:
            self._error(RequestError(HTTPStatus.NOT_FOUND, f"no such path: {self.path}"))

    def do_POST(self):
        try:
            if self.path.rstrip("/") != "/v1/chat/completions":
                raise RequestError(HTTPStatus.NOT_FOUND, f"no such path: {self.path}")
            request = parse_chat_request(self._body(), self.server.name, self.server.model.context_length)
            prompt = self.server.model.prompt_tokens(request["messages"])
            if len(prompt) >= self.server.model.context_length:
                raise RequestError(
                    HTTPStatus.BAD_REQUEST,
                    f"the prompt is {len(prompt)} tokens; the model's context is {self.server.model.context_length}",
                    "context_length_exceeded",
                )
            with self.server.lock:
                (self._stream if request["stream"] else self._complete)(request, prompt)
        except RequestError as err:
            self._error(err)

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
        if int(length) > self.server.max_body_bytes:
            self.close_connection = True  # the unread body must not be parsed as the next request
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {length} bytes exceeds the limit of {self.server.max_body_bytes}",
            )
        return self.rfile.read(int(length))

    def _pieces(self, request, prompt):
        temperature, top_p = request["temperature"], request["top_p"]
        settings = GenerationSettings(
            max_new_tokens=request["max_tokens"],
            batch_size=1,
            do_sample=temperature > 0,
            temperature=temperature or 1.0,
            top_p=top_p or 1.0,
        )
        return self.server.model.stream(
            request["messages"], settings.max_new_tokens, settings.genai_search_options(), prompt=prompt
        )

    def _complete(self, request, prompt):
        pieces = list(self._pieces(request, prompt))
        self._json(
            HTTPStatus.OK,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.server.name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(pieces).strip()},
                        "finish_reason": _finish_reason(
                            len(pieces), request["max_tokens"], len(prompt), self.server.model.context_length
                        ),
                    }
                ],
                "usage": {
                    "prompt_tokens": len(prompt),
                    "completion_tokens": len(pieces),
                    "total_tokens": len(prompt) + len(pieces),
                },
            },
        )

    def _stream(self, request, prompt):
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.server.name,
        }

        def send(delta: dict, finish: str | None = None):
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        send({"role": "assistant", "content": ""})
        count = 0
        for piece in self._pieces(request, prompt):
            count += 1
            if piece:
                send({"content": piece})
        send({}, _finish_reason(count, request["max_tokens"], len(prompt), self.server.model.context_length))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _json(self, status: HTTPStatus, payload: dict):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, err: RequestError):
        kind = "invalid_request_error" if err.status < 500 else "server_error"
        self._json(err.status, {"error": {"message": err.message, "type": kind, "code": err.code}})


def _finish_reason(generated: int, max_tokens: int, prompt_tokens: int, context_length: int) -> str:
    return "length" if generated >= min(max_tokens, context_length - prompt_tokens) else "stop"


def serve(folder: str | Path, host: str = "127.0.0.1", port: int = 8000, max_body_bytes: int = 1 << 20) -> None:
    folder = Path(folder)
    model = OnnxChatModel(folder)
    info = folder / "inference_model.json"
    name = json.loads(info.read_text())["Name"] if info.is_file() else folder.name
    server = ChatServer((host, port), model, name, max_body_bytes)
    print(f"serving {name} on http://{host}:{server.server_port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
