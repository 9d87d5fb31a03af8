"""Throughput of the openai teacher backend against a local server that adds 50 ms to every request, and
the speed of a fully cached rerun.

    pytest tests/benchmarks/test_endpoint_throughput.py --benchmark-only -s      (also part of `make bench`)

The server runs in its own process so that it does not share the client's interpreter.
"""

import subprocess
import sys

import pytest
from conftest import ROOT, default

from slmops.core.config import GenerationSettings
from slmops.teacher.endpoint import Endpoint, Usage, complete_all

LATENCY_S = 0.05
RATES: dict[int, float] = {}
REQUESTS = {1: 40, 16: 480}  # about 2 s of work at each concurrency
CACHED_PROMPTS = 3000


@pytest.fixture(scope="module")
def endpoint():
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/fake_endpoint.py"), str(LATENCY_S)],
        cwd=ROOT / "tests",
        stdout=subprocess.PIPE,
        text=True,
    )
    yield Endpoint(base_url=server.stdout.readline().strip(), model="fake", auth="none")
    server.terminate()
    server.wait(timeout=10)


def chats(count: int, tag: str) -> list[list[dict]]:
    return [[{"role": "user", "content": f"{tag} message {i}"}] for i in range(count)]


@pytest.mark.parametrize("concurrency", [1, 16])
def test_throughput_by_concurrency(benchmark, endpoint, tmp_path, concurrency):
    rounds = iter(range(100))

    def fresh():  # every round sends new prompts to an empty cache: nothing is served from the cache
        n = next(rounds)
        requests = default("synthesize.requests", concurrency=concurrency, cache=str(tmp_path / f"cache-{n}.sqlite"))
        return (
            endpoint,
            GenerationSettings.greedy(8).openai_kwargs(),
            chats(REQUESTS[concurrency], f"c{concurrency}-r{n}"),
            requests,
            Usage(),
        ), {}

    def send(endpoint, settings, prompts, requests, usage):
        replies, failures = complete_all(endpoint, settings, prompts, requests, usage)
        assert failures == [None] * len(prompts) and usage.requests == len(prompts)

    benchmark.group = "endpoint throughput"
    benchmark.pedantic(send, setup=fresh, rounds=3)
    RATES[concurrency] = REQUESTS[concurrency] / benchmark.stats.stats.mean
    benchmark.extra_info["requests_per_s"] = RATES[concurrency]
    if concurrency == 16 and 1 in RATES:
        ratio = RATES[16] / RATES[1]
        benchmark.extra_info["speedup_over_concurrency_1"] = ratio
        print(
            f"\nendpoint with {LATENCY_S * 1000:.0f} ms latency: concurrency 1 {RATES[1]:.1f} requests/s, "
            f"concurrency 16 {RATES[16]:.1f} requests/s: {ratio:.1f}x"
        )
        assert ratio >= 12, f"concurrency 16 gives only {ratio:.1f}x the throughput of concurrency 1"


def test_fully_cached_rerun_of_3000_prompts(benchmark, endpoint, tmp_path):
    requests = default("synthesize.requests", concurrency=64, cache=str(tmp_path / "cache.sqlite"))
    prompts = chats(CACHED_PROMPTS, "cached")
    complete_all(endpoint, GenerationSettings.greedy(8).openai_kwargs(), prompts, requests, Usage())  # fill the cache

    def rerun():
        usage = Usage()
        replies, _ = complete_all(endpoint, GenerationSettings.greedy(8).openai_kwargs(), prompts, requests, usage)
        assert usage.cache_hits == CACHED_PROMPTS and usage.requests == 0 and None not in replies

    benchmark.group = "endpoint cache"
    benchmark.pedantic(rerun, rounds=5)
    print(f"\nfully cached rerun of {CACHED_PROMPTS} prompts: {benchmark.stats.stats.max:.2f} s at most")
    assert benchmark.stats.stats.max < 5
