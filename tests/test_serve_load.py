"""slmops serve under load: 64 clients at once on loopback, each with its own connection per request.

    pytest tests/test_serve_load.py -q -s        (prints throughput and latency percentiles; about 20 s)

Every request samples with its own seed, so each answer is distinct and deterministic: an answer given to the
wrong request, or cut short, differs from the one computed alone. A 503 must carry Retry-After (and
retry-after-ms); the client waits that long and sends again, as the openai client does.
"""

import http.client
import json
import threading
import time

import numpy as np
import pytest
from test_serve import running_server

from slmops.onnx.runtime import OnnxChatModel

CLIENTS = 64
PER_CLIENT = 4
MAX_TOKENS = 16


def messages(n: int) -> list[dict]:
    return [{"role": "user", "content": f"where is my order ORD-{n}?"}]


def expected_answers(folder) -> list[str]:
    model = OnnxChatModel(folder)
    options = {"do_sample": True, "temperature": 1.0, "top_p": 1.0}
    return [
        "".join(model.stream(messages(n), MAX_TOKENS, {**options, "random_seed": n})).strip()
        for n in range(CLIENTS * PER_CLIENT)
    ]


def post(host: str, n: int):
    """One request on a new connection: (status, headers, payload)."""
    body = {"model": "int4", "messages": messages(n), "max_tokens": MAX_TOKENS, "temperature": 1.0, "seed": n}
    connection = http.client.HTTPConnection(host, timeout=60)
    try:
        connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, dict(response.headers), json.loads(response.read())
    finally:
        connection.close()


def load(host: str) -> dict:
    """CLIENTS threads, started together, each sending PER_CLIENT requests one after another."""
    answers, latencies, refusals, errors = {}, [], [], []
    start = threading.Barrier(CLIENTS)

    def client(i: int):
        start.wait()
        for n in range(i * PER_CLIENT, (i + 1) * PER_CLIENT):
            sent = time.perf_counter()
            for _ in range(200):
                try:
                    status, headers, payload = post(host, n)
                except OSError as err:  # a reset or refused connection
                    errors.append(f"request {n}: {err!r}")
                    return
                if status != 503:
                    break
                refusals.append(headers)
                time.sleep(int(headers.get("retry-after-ms", "1000")) / 1000)
            if status != 200:
                errors.append(f"request {n}: {status} {payload}")
                return
            latencies.append(time.perf_counter() - sent)
            answers[n] = payload["choices"][0]["message"]["content"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    seconds = time.perf_counter() - began
    return {"answers": answers, "latencies": latencies, "refusals": refusals, "errors": errors, "seconds": seconds}


@pytest.mark.parametrize("max_queue", [64, 8])
def test_64_clients_get_every_answer_right_with_no_reset(tiny_onnx, max_queue):
    expected = expected_answers(tiny_onnx["int4"])
    assert len(set(expected)) == len(expected)  # every answer distinct: a mix-up would show
    with running_server(tiny_onnx["int4"], "--max-queue", max_queue) as url:
        result = load(url.split("//")[1].split("/")[0])
    assert result["errors"] == []
    assert [result["answers"][n] for n in range(len(expected))] == expected
    for headers in result["refusals"]:
        assert int(headers["Retry-After"]) >= 1 and int(headers["retry-after-ms"]) >= 1
    if max_queue >= CLIENTS - 1:
        assert result["refusals"] == []  # all 64 fit: one answered, 63 queued
    else:
        assert result["refusals"]  # the burst overflows a queue of 8
    p50, p99 = np.percentile(result["latencies"], [50, 99]) * 1000
    print(
        f"\n--max-queue {max_queue}: {len(expected)} requests from {CLIENTS} clients in {result['seconds']:.2f} s: "
        f"{len(expected) / result['seconds']:.1f} requests/s, latency p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
        f"{len(result['refusals'])} answered 503 then retried"
    )
