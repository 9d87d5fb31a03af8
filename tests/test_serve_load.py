"""slmops serve under load: 64 clients at once on loopback, each with a new connection per request.

    pytest tests/test_serve_load.py -q -s        (prints throughput and latency percentiles; about 30 s)

Every request samples with its own seed, so each answer is distinct and deterministic: an answer given to the
wrong request, or cut short, differs from the one computed alone. A 503 must carry Retry-After (and
retry-after-ms); the client waits that long and sends again, as the openai client does.
"""

import pytest
from serve_load import load, running_server, summary

from slmops.onnx.runtime import OnnxChatModel

CLIENTS = 64
REQUESTS = 256
MAX_TOKENS = 16


def body(n: int) -> dict:
    messages = [{"role": "user", "content": f"where is my order ORD-{n}?"}]
    return {"model": "int4", "messages": messages, "max_tokens": MAX_TOKENS, "temperature": 1.0, "seed": n}


def alone(model: OnnxChatModel, n: int) -> str:
    options = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "random_seed": n}
    return "".join(model.stream(body(n)["messages"], MAX_TOKENS, options))


@pytest.mark.slow
@pytest.mark.parametrize("max_queue", [64, 8])
def test_64_clients_get_every_answer_right_with_no_reset(tiny_onnx, max_queue):
    model = OnnxChatModel(tiny_onnx["int4"])
    expected = [alone(model, n) for n in range(REQUESTS)]
    assert len(set(expected)) == REQUESTS  # every answer distinct: a mix-up would show
    with running_server(tiny_onnx["int4"], "--max-queue", max_queue) as url:
        result = load(url, [body(n) for n in range(REQUESTS)], CLIENTS)
    assert result["errors"] == []
    assert [result["answers"][n] for n in range(REQUESTS)] == expected
    for headers in result["refusals"]:
        assert int(headers["Retry-After"]) >= 1 and int(headers["retry-after-ms"]) >= 1
    if max_queue >= CLIENTS - 1:
        assert result["refusals"] == []  # all 64 fit: one answered, 63 queued
    else:
        assert result["refusals"]  # the burst overflows a queue of 8
    print(f"\n--max-queue {max_queue}: {summary(result, CLIENTS)}")
