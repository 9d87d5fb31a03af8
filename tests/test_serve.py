"""slmops serve: the official openai client against the server, streaming and not; errors in OpenAI's shape."""

import http.client
import json
import subprocess
import sys

import openai
import pytest
from conftest import ROOT


@pytest.fixture(scope="module")
def server(tiny_onnx):
    """`slmops serve` on a free loopback port over the tiny int4 export (model name: its folder, int4)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "slmops.cli",
            "serve",
            str(tiny_onnx["int4"]),
            "--port",
            "0",
            "--max-body-bytes",
            "4096",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = process.stdout.readline()
    assert line.startswith("serving int4 on http://127.0.0.1:"), line
    yield line.split()[-1]  # http://127.0.0.1:PORT/v1
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server, api_key="unused", max_retries=0)


def raw(server, method, path, body: bytes | None = None, headers=None):
    host = server.split("//")[1].split("/")[0]
    connection = http.client.HTTPConnection(host, timeout=30)
    connection.request(method, path, body=body, headers=headers or {"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list()] == ["int4"]


def test_chat_completion_matches_the_model_and_counts_tokens(client, tiny_onnx):
    from slmops.onnx.runtime import OnnxChatModel

    messages = [{"role": "user", "content": "where is my order ORD-12?"}]
    completion = client.chat.completions.create(model="int4", messages=messages, max_tokens=6)
    local = OnnxChatModel(tiny_onnx["int4"]).answer(messages, 6)
    assert completion.choices[0].message.content == local.text
    assert completion.choices[0].finish_reason == "length"  # random weights never end before 6 tokens
    assert completion.usage.completion_tokens == 6
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 6


def test_streaming_gives_the_same_answer_in_chunks(client):
    messages = [{"role": "user", "content": "where is my order ORD-12?"}]
    whole = client.chat.completions.create(model="int4", messages=messages, max_tokens=6).choices[0].message.content
    chunks = list(client.chat.completions.create(model="int4", messages=messages, max_tokens=6, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip() == whole
    assert chunks[-1].choices[0].finish_reason == "length"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError, match="model 'gpt-4o' not found"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "body is not valid JSON"),
        (b"[1, 2]", "body must be a JSON object"),
        (json.dumps({"model": "int4", "messages": []}).encode(), "'messages' must be a non-empty list"),
        (json.dumps({"model": "int4", "messages": [{"role": "robot", "content": "x"}]}).encode(), "messages[0]"),
        (
            json.dumps({"model": "int4", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}).encode(),
            "max_tokens",
        ),
        (
            json.dumps({"model": "int4", "messages": [{"role": "user", "content": "x"}], "temperature": 9}).encode(),
            "temperature",
        ),
    ],
)
def test_malformed_body_is_400(server, body, message):
    status, payload = raw(server, "POST", "/v1/chat/completions", body)
    assert status == 400 and message in payload["error"]["message"]
    assert payload["error"]["type"] == "invalid_request_error"


def test_prompt_longer_than_the_context_is_400(server):
    body = json.dumps({"model": "int4", "messages": [{"role": "user", "content": "ORD-12 " * 300}]}).encode()
    status, payload = raw(server, "POST", "/v1/chat/completions", body)
    assert status == 400 and payload["error"]["code"] == "context_length_exceeded"


def test_oversized_body_is_413_and_the_server_stays_up(server, client):
    body = json.dumps({"model": "int4", "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    status, payload = raw(server, "POST", "/v1/chat/completions", body)
    assert status == 413 and "exceeds the limit of 4096" in payload["error"]["message"]
    assert [m.id for m in client.models.list()] == ["int4"]


def test_unknown_path_is_404(server):
    assert raw(server, "GET", "/v1/embeddings")[0] == 404
    assert raw(server, "POST", "/v1/completions", b"{}")[0] == 404
