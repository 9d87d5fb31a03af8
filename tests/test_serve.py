"""slmops serve: the official openai client against the server, streaming and not; errors in OpenAI's shape."""

import http.client
import json
import time

import openai
import pytest
from serve_load import running_server


@pytest.fixture(scope="module")
def server(tiny_onnx):
    """The server over the tiny int4 export (model name: its folder, int4), bodies up to 4,096 bytes."""
    with running_server(tiny_onnx["int4"], "--max-body-bytes", 4096) as url:
        yield url


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
    local = "".join(OnnxChatModel(tiny_onnx["int4"]).stream(messages, 6))
    assert completion.choices[0].message.content == local  # the text as generated, nothing stripped
    assert completion.choices[0].finish_reason == "length"  # random weights never end before 6 tokens
    assert completion.usage.completion_tokens == 6
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 6


def test_streaming_gives_the_same_answer_in_chunks(client):
    messages = [{"role": "user", "content": "where is my order ORD-12?"}]
    whole = client.chat.completions.create(model="int4", messages=messages, max_tokens=6).choices[0].message.content
    chunks = list(client.chat.completions.create(model="int4", messages=messages, max_tokens=6, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason == "length"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError, match="model 'gpt-4o' not found"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "body is not valid JSON"),
        (b"[1, 2]", "body must be a JSON object"),
        (b"[" * 2000 + b"]" * 2000, "nested too deeply"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "'model' is required"),
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


# --- what common clients send ------------------------------------------------------------------------------

ORDER = [{"role": "user", "content": "where is my order ORD-12?"}]
SAMPLED = {"temperature": 1.0, "seed": 7}  # random weights answer greedily with special tokens only (''): sample


def streamed(client, **request) -> list:
    return list(client.chat.completions.create(model="int4", stream=True, **request))


def streamed_text(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_text_content_parts_are_joined_with_a_newline(client, tiny_onnx):
    from slmops.onnx.runtime import OnnxChatModel

    parts = [{"type": "text", "text": "where is my order"}, {"type": "text", "text": "ORD-12?"}]
    completion = client.chat.completions.create(
        model="int4", messages=[{"role": "user", "content": parts}], max_tokens=12, **SAMPLED
    )
    model = OnnxChatModel(tiny_onnx["int4"])
    joined = [{"role": "user", "content": "where is my order\nORD-12?"}]
    local = "".join(model.stream(joined, 12, {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "random_seed": 7}))
    assert completion.usage.prompt_tokens == len(model.prompt_tokens(joined))
    assert completion.choices[0].message.content == local != ""


def test_a_developer_message_is_a_system_message(client):
    from slmops.foundry.chat_request import parse_chat_request

    body = {"model": "int4", "messages": [{"role": "developer", "content": "be brief"}, *ORDER]}
    parsed = parse_chat_request(json.dumps(body).encode(), "int4")
    assert parsed.messages[0] == {"role": "system", "content": "be brief"}
    with_system = [{"role": "system", "content": "be brief"}, *ORDER]
    developer = client.chat.completions.create(model="int4", messages=body["messages"], max_tokens=6, **SAMPLED)
    system = client.chat.completions.create(model="int4", messages=with_system, max_tokens=6, **SAMPLED)
    assert developer.choices[0].message.content == system.choices[0].message.content
    assert developer.usage == system.usage


def test_null_optional_fields_take_their_defaults(server, client):
    greedy = client.chat.completions.create(model="int4", messages=ORDER, max_tokens=6)
    nulls = {k: None for k in ("temperature", "top_p", "seed", "stop", "n", "stream", "stream_options", "user")}
    status, payload = raw(
        server, "POST", "/v1/chat/completions", json.dumps({"model": "int4", "messages": ORDER, **nulls}).encode()
    )
    assert status == 200
    assert payload["choices"][0]["finish_reason"] == "length"  # max_tokens null: up to the end of the context
    assert payload["usage"]["total_tokens"] == 256  # the tiny model's context
    assert payload["choices"][0]["message"]["content"] == greedy.choices[0].message.content  # greedy: ''
    official = client.chat.completions.create(model="int4", messages=ORDER, **nulls)  # the client sends the nulls
    assert (
        official.usage.total_tokens == 256 and official.choices[0].message.content == greedy.choices[0].message.content
    )


def test_neutral_values_of_unsupported_fields_are_accepted(client):
    plain = client.chat.completions.create(model="int4", messages=ORDER, max_tokens=6, **SAMPLED)
    neutral = client.chat.completions.create(
        model="int4",
        messages=ORDER,
        max_completion_tokens=6,
        n=1,
        frequency_penalty=0.0,
        presence_penalty=0,
        logprobs=False,
        tools=[],
        response_format={"type": "text"},
        user="someone",
        **SAMPLED,
    )
    assert neutral.choices[0].message.content == plain.choices[0].message.content


def test_the_same_seed_gives_the_same_sampled_answer(client):
    first, second, other = (
        client.chat.completions.create(model="int4", messages=ORDER, max_tokens=12, temperature=1.0, seed=seed)
        for seed in (7, 7, 8)
    )
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content


def test_stop_sequences_cut_the_answer_streaming_and_not(client):
    full = streamed_text(streamed(client, messages=ORDER, max_tokens=24, **SAMPLED))
    stop = full[6:9]  # three characters from the middle of the answer
    expected = full[: full.find(stop)]
    assert stop and len(expected) < len(full) - 3, full
    completion = client.chat.completions.create(
        model="int4", messages=ORDER, max_tokens=24, stop=[stop, "never in it"], **SAMPLED
    )
    assert completion.choices[0].message.content == expected
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens < 24  # generation ended at the stop sequence
    chunks = streamed(client, messages=ORDER, max_tokens=24, stop=stop, **SAMPLED)
    assert streamed_text(chunks) == expected  # no part of the stop sequence was sent
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_include_usage_adds_a_final_usage_chunk(client):
    whole = client.chat.completions.create(model="int4", messages=ORDER, max_tokens=6)
    chunks = streamed(client, messages=ORDER, max_tokens=6, stream_options={"include_usage": True})
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1]) and chunks[-2].choices[0].finish_reason == "length"
    plain = streamed(client, messages=ORDER, max_tokens=6)
    assert all(c.choices and c.usage is None for c in plain)


def chat_body(**fields) -> bytes:
    return json.dumps({"model": "int4", "messages": ORDER, "max_tokens": 4, **fields}).encode()


@pytest.mark.parametrize(
    "body, param, message",
    [
        (chat_body(n=2), "n", "'n': 2 is not supported by this server (only 1, or null)"),
        (chat_body(tools=[{"type": "function", "function": {"name": "f"}}]), "tools", "'tools'"),
        (chat_body(logprobs=True), "logprobs", "'logprobs': true is not supported"),
        (chat_body(response_format={"type": "json_object"}), "response_format", 'only {"type": "text"}'),
        (chat_body(presence_penalty=0.5), "presence_penalty", "'presence_penalty': 0.5"),
        (chat_body(functions=[]), "functions", "'functions' is not supported by this server"),
        (chat_body(stream_options={"include_usage": True}), "stream_options", "only allowed when 'stream' is true"),
        (chat_body(stream=True, stream_options={"x": 1}), "stream_options.x", "stream_options.x: 1"),
        (
            chat_body(stream=True, stream_options={"include_obfuscation": True}),
            "stream_options.include_obfuscation",
            "stream_options.include_obfuscation: True is not supported",
        ),
        (chat_body(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4 strings"),
        (chat_body(stop=""), "stop", "stop[0] must be a non-empty string"),
        (chat_body(temperature="0"), "temperature", "'temperature' must be a number from 0 to 2"),
        (chat_body(seed=-1), "seed", "'seed' must be an integer of at least 0"),
        (
            chat_body(messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}]),
            "messages[0].role",
            "messages[0] must be an object with a role (system, developer, user, assistant)",
        ),
        (
            chat_body(messages=[{"role": "user", "content": "x", "name": "ann"}]),
            "messages[0].name",
            "messages[0].name is not supported",
        ),
        (
            chat_body(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is this?"},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                        ],
                    }
                ]
            ),
            "messages[0].content[1].type",
            "content part of type 'image_url' is not supported",
        ),
        (chat_body(messages=[{"role": "user", "content": []}]), "messages[0].content", "non-empty list of text"),
    ],
)
def test_unsupported_fields_are_400_naming_the_field(server, body, param, message):
    status, payload = raw(server, "POST", "/v1/chat/completions", body)
    assert status == 400, payload
    assert payload["error"]["param"] == param and message in payload["error"]["message"], payload


def test_the_official_client_raises_the_400_with_its_param(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="int4", messages=ORDER, n=3)
    assert raised.value.param == "n" and raised.value.code == "unsupported_parameter"


def test_max_tokens_beyond_the_context_is_400_naming_both_numbers(client):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="int4", messages=ORDER, max_tokens=2048)
    prompt = raised.value.body["message"].split("prompt of ")[1].split(" ")[0]
    assert raised.value.body["message"] == (
        f"max_tokens 2048 does not fit the model's context of 256 tokens with a prompt of {prompt} "
        f"(at most {256 - int(prompt)})"
    )
    assert raised.value.code == "context_length_exceeded" and raised.value.param == "max_tokens"
    fits = client.chat.completions.create(model="int4", messages=ORDER, max_tokens=256 - int(prompt))
    assert fits.usage.total_tokens == 256
    with pytest.raises(openai.BadRequestError, match="max_completion_tokens 300 does not fit") as raised:
        client.chat.completions.create(model="int4", messages=ORDER, max_completion_tokens=300)
    assert raised.value.param == "max_completion_tokens"


# --- stop sequences and admission, without a server -------------------------------------------------------


@pytest.mark.parametrize(
    "stops, pieces, sent, stopped",
    [
        (("END",), ["abE", "N", "Dxyz"], ["a", "b", ""], True),  # a stop split over three tokens
        (("END",), ["xE", "Nq"], ["", "xE"], False),  # a false start is sent once it cannot be a stop
        (("\n", "ab"), ["xxa", "b\n"], ["xx", ""], True),  # the earliest of several stops
        ((), ["a", "b"], ["a", "b"], False),  # no stops: nothing held back
    ],
)
def test_stop_scanner_never_sends_part_of_a_stop(stops, pieces, sent, stopped):
    from slmops.foundry.serve import StopScanner

    scanner = StopScanner(stops)
    assert [scanner.feed(p) for p in pieces] == sent
    assert scanner.stopped is stopped
    if not stopped:
        assert "".join(sent) + scanner.flush() == "".join(pieces)


def test_admission_queues_then_refuses_with_the_expected_wait():
    import threading

    from slmops.foundry.chat_request import RequestError
    from slmops.foundry.serve import Admission

    admission = Admission(max_queue=1)
    running, release = threading.Event(), threading.Event()

    def answer():
        with admission.turn():
            running.set()
            release.wait(10)

    first = threading.Thread(target=answer)
    first.start()
    running.wait(10)
    running.clear()
    second = threading.Thread(target=answer)  # waits for the model
    second.start()
    time.sleep(0.2)
    assert not running.is_set()
    with pytest.raises(RequestError) as refused, admission.turn():
        pass
    assert refused.value.status == 503 and refused.value.retry_after == pytest.approx(2 * 0.2)
    assert "1 request in progress and 1 waiting" in refused.value.message
    release.set()
    first.join(10), second.join(10)
    assert running.is_set()  # the queued request was answered
    with admission.turn():  # room again
        pass


def test_top_p_zero_is_the_narrowest_nucleus_the_greedy_answer(client):
    greedy = client.chat.completions.create(model="int4", messages=ORDER, max_tokens=12)
    for seed in (1, 2):
        narrowest = client.chat.completions.create(
            model="int4", messages=ORDER, max_tokens=12, temperature=1.5, top_p=0, seed=seed
        )
        assert narrowest.choices[0].message.content == greedy.choices[0].message.content


def test_a_chat_the_template_refuses_is_400_and_the_server_stays_up(tiny_onnx, tmp_path):
    import shutil

    folder = tmp_path / "no-system"
    shutil.copytree(tiny_onnx["int4"], folder)
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}<|assistant|>"
    )
    with running_server(folder) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="System role not supported") as err:
            client.chat.completions.create(model="no-system", messages=[{"role": "system", "content": "x"}, *ORDER])
        assert err.value.body["param"] == "messages"
        answer = client.chat.completions.create(model="no-system", messages=ORDER, max_tokens=4)
        assert answer.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("flags", [["--port", "70000"], ["--host", "999.1.1.1"]])
def test_an_address_serve_cannot_listen_on_is_exit_2(tiny_onnx, flags):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "slmops.cli", "serve", str(tiny_onnx["int4"]), *flags],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "cannot listen on" in result.stderr and "Traceback" not in result.stderr
