"""`slmops serve` over the default pipeline's package under load: 64 clients at once, each asking eval messages
one after another on a new connection per request, greedy, up to 64 new tokens (evaluate's budget).

    pytest tests/benchmarks/test_serve_throughput.py --benchmark-only -s      (also part of `make bench`)

Every answer must equal the one the model gives the same request alone; no connection may be reset. Prints
throughput and latency percentiles (first send to answer, waits and retries after 503 included) per round.
"""

import json

import pytest
from conftest import ROOT
from serve_load import load, running_server, summary

from slmops.core.task import load_task
from slmops.onnx.runtime import OnnxChatModel

PACKAGE = ROOT / "models/foundry/support-triage-slm"
CLIENTS = 64
REQUESTS = 256
MAX_TOKENS = 64

pytestmark = pytest.mark.skipif(
    not (PACKAGE / "genai_config.json").is_file(),
    reason="needs the pipeline's package: run `make pipeline` (dvc repro) first",
)


@pytest.mark.parametrize("max_queue", [32, 64])
def test_serve_throughput_with_64_clients(benchmark, max_queue):
    task = load_task(ROOT / "data/task")
    rows = [json.loads(line) for line in (ROOT / "data/eval/eval.jsonl").read_text().splitlines()]
    chats = [task.messages(rows[n % len(rows)]["message"]) for n in range(REQUESTS)]
    model = OnnxChatModel(PACKAGE)
    expected = ["".join(model.stream(chat, MAX_TOKENS)) for chat in chats]  # serve strips nothing
    bodies = [{"model": PACKAGE.name, "messages": chat, "max_tokens": MAX_TOKENS} for chat in chats]
    results = []
    with running_server(PACKAGE, "--max-queue", max_queue) as url:
        load(url, bodies[:CLIENTS], CLIENTS)  # warm-up

        def run():
            results.append(load(url, bodies, CLIENTS))

        benchmark.group = "serve, 64 clients"
        benchmark.pedantic(run, rounds=3, iterations=1)
    for result in results:
        assert result["errors"] == []
        assert [result["answers"][n] for n in range(REQUESTS)] == expected
        print(f"\n--max-queue {max_queue}: {summary(result, CLIENTS)}")
