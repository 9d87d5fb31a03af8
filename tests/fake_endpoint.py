"""A fault-injecting OpenAI-compatible teacher on 127.0.0.1 for the tests and the benchmark.

It labels support messages it knows (message -> label) with the canonical JSON answer, writes prompts for
self-instruct requests, and, per (message, attempt), can answer 429 with Retry-After, 500, too slowly,
with a malformed body, or drop the connection; or answer 200 the way real teachers do (STYLES): withheld or
flagged by Azure's content filter, after a <think> block, with the text in reasoning_content only, in a fence
between prose, cut at max_tokens, or with text after the JSON.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from slmops.core.task import render_answer

FAULTS = ("429", "500", "400", "400_content_filter", "slow", "malformed", "garbage", "drop")
STYLES = ("content_filter", "content_filter_full", "think", "reasoning_only", "fenced", "length", "trailing")


def styled(style: str, answer: str) -> tuple[str | None, str, dict]:
    """(content, finish_reason, extra message fields) of a 200 answer in `style` ("ok": the bare answer)."""
    if style == "content_filter":  # Azure: the completion was filtered, nothing is returned
        return None, "content_filter", {}
    if style == "content_filter_full":  # Azure: flagged, yet the text is there
        return answer, "content_filter", {}
    if style == "think":
        return f"<think>\nThe customer asks about an order; I pick the intent.\n</think>\n\n{answer}", "stop", {}
    if style == "reasoning_only":  # vLLM's reasoning parser put everything in reasoning_content
        return None, "stop", {"reasoning_content": f"Let me think. The answer is {answer}"}
    if style == "fenced":
        return f"Here is the classification:\n\n```json\n{answer}\n```\n\nLet me know if you need more.", "stop", {}
    if style == "length":
        return answer[: len(answer) // 2], "length", {}
    if style == "trailing":
        return f"{answer}\n\nThe urgency follows from the tone of the message.", "stop", {}
    return answer, "stop", {}


class FakeTeacher:
    def __init__(
        self, labels: dict[str, dict], latency_s: float = 0.0, slow_s: float = 2.0, model: str = "fake-teacher-2026-01"
    ):
        self.labels = labels  # user message -> label
        self.latency_s = latency_s  # added to every request
        self.slow_s = slow_s  # how long a "slow" fault waits
        self.served_model = model
        self.faults: dict[str, list[str]] = {}  # user message -> fault per attempt ("ok" to answer)
        self.attempts: Counter = Counter()  # user message -> requests received
        self.answered: Counter = Counter()  # user message -> answers sent (what a provider bills)
        self.authorizations: set[str] = set()
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        self.answer_limit: int | None = None  # answers sent before later requests are held, then dropped unanswered
        self.held = 0  # requests held at the limit
        self.release = threading.Event()  # ends the holding: held requests are dropped
        self._admitted = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, messages: list[dict]) -> str:
        user = messages[-1]["content"]
        if user in self.labels:
            return render_answer(self.labels[user])
        if user.startswith("You write realistic"):
            return "\n".join(
                f"{i}. My parcel number {zlib.crc32(user.encode()) % 97 + i} never arrived, where is it?"
                if i % 3 == 0
                else f"- Question {i} about {user[-40:-20]!r} and refund {i * 7}"
                for i in range(1, 6)
            )
        return "OK"

    def _handler(self):
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in separate writes

            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user = body["messages"][-1]["content"]
                with teacher._lock:
                    attempt = teacher.attempts[user]
                    teacher.attempts[user] += 1
                    teacher.authorizations.add(self.headers.get("Authorization") or self.headers.get("api-key"))
                    teacher.bodies.append(body)
                    teacher.paths.append(self.path)
                plan = teacher.faults.get(user, [])
                fault = plan[attempt] if attempt < len(plan) else "ok"
                time.sleep(teacher.latency_s)
                if fault == "429":
                    return self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": "1"})
                if fault == "400":
                    return self._send(400, b'{"error": {"message": "response_format json_object is not supported"}}')
                if fault == "400_content_filter":  # Azure's answer when the prompt itself is filtered
                    error = {"code": "content_filter", "message": "The response was filtered", "status": 400}
                    return self._send(400, json.dumps({"error": error}).encode())
                if fault == "500":
                    return self._send(500, b'{"error": {"message": "internal error"}}')
                if fault == "malformed":
                    return self._send(200, b'{"choices": [{"message": ')
                if fault == "garbage":
                    return self._send(200, b'{"hello": "world"}')
                if fault == "drop":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return None
                if fault == "slow":
                    time.sleep(teacher.slow_s)
                with teacher._lock:
                    teacher._admitted += 1
                    hold = teacher.answer_limit is not None and teacher._admitted > teacher.answer_limit
                    teacher.held += hold
                if hold:
                    teacher.release.wait()
                    self.close_connection = True
                    return None
                content, finish_reason, extra = styled(fault, teacher.answer(body["messages"]))
                completion = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": 0,
                    "model": teacher.served_model,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": finish_reason,
                            "message": {"role": "assistant", "content": content, **extra},
                        }
                    ],
                    "usage": {
                        "prompt_tokens": len(json.dumps(body["messages"])) // 4,
                        "completion_tokens": len(content or "") // 4 + 1,
                        "total_tokens": len(json.dumps(body["messages"])) // 4 + len(content or "") // 4 + 1,
                    },
                }
                with teacher._lock:
                    teacher.answered[user] += 1
                return self._send(200, json.dumps(completion).encode())

        return Handler


def main() -> None:
    """`python tests/fake_endpoint.py LATENCY_S`: serve in a process of its own (the benchmark's client then
    has the interpreter to itself); prints the base URL, answers "OK" to any message."""
    import sys

    teacher = FakeTeacher({}, latency_s=float(sys.argv[1]))
    print(teacher.url, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
