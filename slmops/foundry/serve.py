"""`slmops serve`: an OpenAI-compatible HTTP server over a packaged (onnxruntime-genai) model.

    slmops serve models/foundry/support-triage-slm [--host 127.0.0.1] [--port 8000] [--max-queue 32]

POST /v1/chat/completions (with or without "stream": true) and GET /v1/models. The request fields it reads are
in slmops/foundry/chat_request.py. Errors use OpenAI's shape, {"error": {"message", "type", "param", "code"}}:
400 for a malformed or unsupported request or one that does not fit the context, 404 for an unknown model or
path, 413 for a body over --max-body-bytes, 503 with Retry-After when the queue is full.

The model answers one request at a time (it holds the CPU anyway); up to --max-queue more wait their turn, and
any beyond are refused at once with 503, Retry-After and retry-after-ms (which the openai client honours), never
left to the kernel's listen backlog to reset. Written on the standard library's ThreadingHTTPServer: three
endpoints need no web framework.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from slmops.core.errors import InputError
from slmops.foundry.chat_request import ChatRequest, RequestError, bad, parse_chat_request
from slmops.onnx.runtime import OnnxChatModel

LISTEN_BACKLOG = 1024  # connections the kernel holds until accepted (the standard library's 5 overflows at once)


class Admission:
    """One request at a time on the model, at most `max_queue` more waiting; any beyond get a RequestError 503
    whose retry_after (seconds) is the expected wait, from the mean time of the recent answers."""

    def __init__(self, max_queue: int):
        self.slots = threading.BoundedSemaphore(max_queue + 1)
        self.model = threading.Lock()
        self.max_queue = max_queue
        self.mean_seconds = 0.2  # until the first answer is timed
        self.lock = threading.Lock()

    @contextmanager
    def turn(self):
        if not self.slots.acquire(blocking=False):
            raise RequestError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"the server is busy: 1 request in progress and {self.max_queue} waiting (--max-queue); retry later",
                "server_busy",
                retry_after=(self.max_queue + 1) * self.mean_seconds,
            )
        try:
            with self.model:
                start = time.perf_counter()
                yield
                with self.lock:  # moving mean over about the last 10 answers
                    self.mean_seconds += (time.perf_counter() - start - self.mean_seconds) / 10
        finally:
            self.slots.release()


class StopScanner:
    """Cuts streamed text at the first of the stop sequences. `feed` returns the text safe to send: it holds back
    a tail as long as the longest stop less one character, so no part of a stop sequence is ever sent."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops, self.hold = stops, max(map(len, stops), default=1) - 1
        self.text, self.sent, self.stopped = "", 0, False

    def feed(self, piece: str) -> str:
        self.text += piece
        # Text before `sent` was searched when it was sent, with `hold` characters after it: no stop starts there.
        found = [i for i in (self.text.find(stop, self.sent) for stop in self.stops) if i >= 0]
        end = min(found) if found else max(self.sent, len(self.text) - self.hold)
        self.stopped = bool(found)
        out, self.sent = self.text[self.sent : end], end
        return out

    def flush(self) -> str:
        out, self.sent = self.text[self.sent :], len(self.text)
        return out


@dataclass
class Outcome:
    completion_tokens: int = 0
    finish_reason: str = "length"


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address, model: OnnxChatModel, name: str, max_body_bytes: int, max_queue: int):
        super().__init__(address, ChatHandler)
        self.model, self.name, self.max_body_bytes = model, name, max_body_bytes
        self.admission = Admission(max_queue)


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer
    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds a silent connection holds its thread

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
            request = parse_chat_request(self._body(), self.server.name)
            try:
                prompt = self.server.model.prompt_tokens(request.messages)
            except InputError as err:  # the model's chat template refuses these messages
                raise bad(str(err), "messages") from None
            budget = self._budget(request, len(prompt))
            with self.server.admission.turn():
                (self._stream if request.stream else self._complete)(request, prompt, budget)
        except RequestError as err:
            self._error(err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client left; the answer is dropped

    def _budget(self, request: ChatRequest, prompt_tokens: int) -> int:
        """Most tokens to generate: the request's max_tokens, or the rest of the context; 400 if it cannot fit."""
        context = self.server.model.context_length
        if prompt_tokens >= context:
            raise bad(
                f"the prompt is {prompt_tokens} tokens; the model's context is {context}",
                "messages",
                "context_length_exceeded",
            )
        if request.max_tokens is not None and prompt_tokens + request.max_tokens > context:
            raise bad(
                f"{request.max_tokens_param} {request.max_tokens} does not fit the model's context of {context} "
                f"tokens with a prompt of {prompt_tokens} (at most {context - prompt_tokens})",
                request.max_tokens_param,
                "context_length_exceeded",
            )
        return request.max_tokens or context - prompt_tokens

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

    def _deltas(self, request: ChatRequest, prompt, budget: int, outcome: Outcome) -> Iterator[str]:
        """The answer's text in pieces, cut before the first stop sequence; fills `outcome` when done."""
        scanner = StopScanner(request.stop)
        pieces = self.server.model.stream(request.messages, budget, request.search_options(), prompt=prompt)
        try:
            for piece in pieces:
                outcome.completion_tokens += 1
                text = scanner.feed(piece)
                if text:
                    yield text
                if scanner.stopped:
                    break
        finally:
            pieces.close()  # frees the generator at once when a stop sequence ended the answer
        tail = "" if scanner.stopped else scanner.flush()
        if tail:
            yield tail
        outcome.finish_reason = "stop" if scanner.stopped or outcome.completion_tokens < budget else "length"

    def _complete(self, request: ChatRequest, prompt, budget: int):
        outcome = Outcome()
        text = "".join(self._deltas(request, prompt, budget, outcome))  # as streamed: nothing stripped
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
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": outcome.finish_reason,
                    }
                ],
                "usage": _usage(len(prompt), outcome),
            },
        )

    def _stream(self, request: ChatRequest, prompt, budget: int):
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
        if request.include_usage:
            base["usage"] = None  # as OpenAI: null on every chunk but the last

        def send(chunk: dict):
            self.wfile.write(f"data: {json.dumps({**base, **chunk})}\n\n".encode())
            self.wfile.flush()

        def choice(delta: dict, finish: str | None = None) -> dict:
            return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        send(choice({"role": "assistant", "content": ""}))
        outcome = Outcome()
        for text in self._deltas(request, prompt, budget, outcome):
            send(choice({"content": text}))
        send(choice({}, outcome.finish_reason))
        if request.include_usage:
            send({"choices": [], "usage": _usage(len(prompt), outcome)})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _json(self, status: HTTPStatus, payload: dict, headers: dict | None = None):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, err: RequestError):
        kind = "invalid_request_error" if err.status < 500 else "server_error"
        headers = {}
        if err.retry_after is not None:
            # Retry-After counts whole seconds (RFC 9110); the openai client prefers retry-after-ms when present.
            headers = {
                "Retry-After": str(max(1, math.ceil(err.retry_after))),
                "retry-after-ms": str(max(1, round(err.retry_after * 1000))),
            }
        payload = {"error": {"message": err.message, "type": kind, "param": err.param, "code": err.code}}
        self._json(err.status, payload, headers)


def _usage(prompt_tokens: int, outcome: Outcome) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": prompt_tokens + outcome.completion_tokens,
    }


def serve(
    folder: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_body_bytes: int = 1 << 20,
    max_queue: int = 32,
) -> None:
    """Serve the model folder until interrupted; prints `serving NAME on http://HOST:PORT/v1` once listening."""
    folder = Path(folder)
    model = OnnxChatModel(folder)
    info = folder / "inference_model.json"
    name = json.loads(info.read_text())["Name"] if info.is_file() else folder.name
    try:
        server = ChatServer((host, port), model, name, max_body_bytes, max_queue)
    except (OSError, OverflowError) as err:  # a busy or privileged port, an unknown host, a port beyond 65535
        raise InputError(f"cannot listen on {host}:{port}: {err}") from None
    print(f"serving {name} on http://{host}:{server.server_port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
