"""Helpers for tests of `slmops serve`: the server in its own process, and many clients at once against it."""

import contextlib
import http.client
import json
import subprocess
import sys
import threading
import time

import numpy as np
from conftest import ROOT


@contextlib.contextmanager
def running_server(folder, *flags):
    """`slmops serve FOLDER --port 0 FLAGS...` in its own process; yields its base URL, http://127.0.0.1:PORT/v1."""
    process = subprocess.Popen(
        [sys.executable, "-m", "slmops.cli", "serve", str(folder), "--port", "0", *map(str, flags)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("serving ") and " on http://127.0.0.1:" in line, line
        yield line.split()[-1]
    finally:
        process.terminate()
        process.wait(timeout=10)


def post(host: str, body: dict):
    """One chat completion on a new connection: (status, headers, payload)."""
    connection = http.client.HTTPConnection(host, timeout=60)
    try:
        connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, dict(response.headers), json.loads(response.read())
    finally:
        connection.close()


def load(url: str, bodies: list[dict], clients: int) -> dict:
    """`clients` threads started together; client i sends bodies i, i + clients, ... one after another, each on a
    new connection. A 503 is retried after its retry-after-ms, as the openai client does.

    Returns answers ({index: content}), latencies (seconds from first send to answer, retries included),
    refusals (the headers of each 503), errors (a reset or refused connection, any other status) and seconds."""
    host = url.split("//")[1].split("/")[0]
    answers, latencies, refusals, errors = {}, [], [], []
    start = threading.Barrier(clients)

    def client(i: int):
        start.wait()
        for n in range(i, len(bodies), clients):
            sent = time.perf_counter()
            for _ in range(200):
                try:
                    status, headers, payload = post(host, bodies[n])
                except OSError as err:
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

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    seconds = time.perf_counter() - began
    return {"answers": answers, "latencies": latencies, "refusals": refusals, "errors": errors, "seconds": seconds}


def summary(result: dict, clients: int) -> str:
    p50, p99 = np.percentile(result["latencies"], [50, 99]) * 1000
    count = len(result["latencies"])
    return (
        f"{count} requests from {clients} clients in {result['seconds']:.2f} s: {count / result['seconds']:.1f} "
        f"requests/s, latency p50 {p50:.0f} ms, p99 {p99:.0f} ms, {len(result['refusals'])} answered 503 then retried"
    )
