"""A teacher behind an OpenAI-compatible chat-completions endpoint: client, identity, cached concurrent requests.

The official `openai` client sends each request and retries HTTP failures itself (429, 5xx, timeouts,
dropped connections) with exponential back-off and jitter, honouring Retry-After. This module adds what a
pipeline needs around it: bounded concurrency, a content-addressed response cache that survives a kill,
usage and cost accounting, and the reasons of the requests that failed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import random
import sqlite3
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import openai
from tqdm.auto import tqdm

from slmops.core.config import GenerationSettings, Requests, Teacher
from slmops.core.errors import InputError

ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"


def public_url(url: str) -> str:
    """The URL without user, password, query or fragment: what may be written to records and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    model: str
    api_version: str | None = None
    auth: str = "api_key"  # api_key | entra_id | none
    api_key_env: str = "OPENAI_API_KEY"
    served_model: str | None = None  # what the endpoint said it runs (see probe)

    @classmethod
    def from_params(cls, teacher: Teacher) -> Endpoint:
        connection = teacher.openai
        return cls(
            base_url=connection.base_url,
            model=teacher.model,
            api_version=connection.api_version,
            auth=connection.auth,
            api_key_env=connection.api_key_env,
        )

    def identity(self) -> dict:
        """Who answers, as recorded in teacher.json and the cache key; never a credential."""
        return {
            "backend": "openai",
            "base_url": public_url(self.base_url),
            "model": self.model,
            "api_version": self.api_version,
            "served_model": self.served_model,
        }

    def _credential(self):
        if self.auth == "none":
            return "unused"  # local servers (Foundry Local, Ollama, slmops serve) ignore it; the client wants one
        if self.auth == "entra_id":  # the async client wants an async token provider
            from azure.identity.aio import DefaultAzureCredential, get_bearer_token_provider

            return get_bearer_token_provider(DefaultAzureCredential(), ENTRA_SCOPE)
        key = os.environ.get(self.api_key_env)
        if not key:
            raise InputError(
                f"teacher.openai.api_key_env: environment variable {self.api_key_env} is not set "
                "(it must hold the endpoint's key; or set teacher.openai.auth: entra_id or none)"
            )
        return key

    def client(self, timeout_s: float, max_retries: int, on_request=None) -> openai.AsyncOpenAI:
        """The async client; `on_request` (async, called with each HTTP request) sees every attempt, retries too."""
        credential = self._credential()
        http_client = openai.DefaultAioHttpClient(event_hooks={"request": [on_request] if on_request else []})
        common = {"timeout": timeout_s, "max_retries": max_retries, "http_client": http_client}
        if self.api_version:  # classic Azure OpenAI: /openai/deployments/{model}/...?api-version=
            auth = {"azure_ad_token_provider": credential} if callable(credential) else {"api_key": credential}
            return openai.AsyncAzureOpenAI(azure_endpoint=self.base_url, api_version=self.api_version, **auth, **common)
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=credential, **common)


def served_endpoint(teacher: Teacher, record: str | Path = "data/endpoint.json") -> Endpoint:
    """The endpoint of params with the served model the endpoint stage recorded (part of the cache key)."""
    record = Path(record)
    if not record.is_file():
        raise InputError(f"{record}: not found; run the endpoint stage first (dvc repro endpoint)")
    served = json.loads(record.read_text()).get("served_model")
    if served is None:
        raise InputError(f"{record}: no served model recorded; rerun the endpoint stage (dvc repro endpoint)")
    return dataclasses.replace(Endpoint.from_params(teacher), served_model=served)


class ResponseCache:
    """Answers by content address in SQLite, committed one by one, so a killed run loses none it received.

    Outside git and DVC on purpose: it is a cost saver, not an artifact; deleting it only costs money."""

    def __init__(self, path: str | Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)  # autocommit: every put is durable at once
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # a killed process loses nothing; no fsync per answer
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        found = {}
        for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = keys[start : start + 500]
            rows = self._db.execute(
                f"SELECT key, reply FROM responses WHERE key IN ({','.join('?' * len(chunk))})", chunk
            )
            found.update((key, json.loads(reply)) for key, reply in rows)
        return found

    def put(self, key: str, reply: dict) -> None:
        self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?)", (key, json.dumps(reply)))

    def close(self) -> None:
        self._db.close()


def cache_key(identity: dict, body: dict, messages: list[dict]) -> str:
    """SHA-256 of who answers, the request's generation fields and the messages."""
    # The generation fields under the names earlier releases hashed, so that existing caches keep hitting.
    settings = {
        "max_tokens": body["max_tokens"],
        "temperature": body["temperature"],
        "top_p": body["top_p"],
        "seed": body.get("seed"),
        "response_format": (body.get("response_format") or {}).get("type"),
    }
    payload = json.dumps({"endpoint": identity, "settings": settings, "messages": messages}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class Usage:
    requests: int = 0  # chat completions answered by the endpoint in this run
    failed: int = 0  # requests given up after their retries
    attempts: int = 0  # HTTP requests sent, retries included
    cache_hits: int = 0
    prompt_tokens: int = 0  # of this run's requests: what this run paid for
    completion_tokens: int = 0
    dataset_prompt_tokens: int = 0  # of every answer used, cached or not: what the dataset costs from scratch
    dataset_completion_tokens: int = 0
    content_filtered: int = 0  # of every answer used, cached or not: finish_reason content_filter (never a label)
    failure_reasons: Counter = field(default_factory=Counter)

    @property
    def retries(self) -> int:
        """Extra attempts after a 429, 5xx, timeout, dropped connection or malformed body."""
        return self.attempts - self.requests - self.failed

    def record(self, reply: dict) -> None:
        self.requests += 1
        self.prompt_tokens += reply["prompt_tokens"]
        self.completion_tokens += reply["completion_tokens"]

    def record_used(self, replies: list[dict | None]) -> None:
        for reply in filter(None, replies):
            self.content_filtered += reply["finish_reason"] == "content_filter"
            self.dataset_prompt_tokens += reply["prompt_tokens"]
            self.dataset_completion_tokens += reply["completion_tokens"]

    def summary(self, prices: dict) -> dict:
        """Counts, tokens and the estimated cost (USD, from per-million-token prices) of this run and of the dataset."""

        def cost(prompt: int, completion: int) -> float:
            return round(
                (prompt * prices["prompt_per_million"] + completion * prices["completion_per_million"]) / 1e6, 6
            )

        figures = {k: v for k, v in asdict(self).items() if k != "failure_reasons"}
        return {
            **figures,
            "retries": self.retries,
            "failure_reasons": dict(self.failure_reasons.most_common()),
            "cost_usd": cost(self.prompt_tokens, self.completion_tokens),
            "dataset_cost_usd": cost(self.dataset_prompt_tokens, self.dataset_completion_tokens),
        }


class BadResponse(Exception):
    """A 200 answer that is not a chat completion (garbage body, no choices, no message)."""


def parse_reply(body: str) -> dict:
    """The parts of a chat-completions response body we keep; BadResponse when it is not one.

    A message whose `content` is null is a reply, not a bad response: a content filter withheld it
    (finish_reason content_filter) or the model only reasoned; asking again would get the same, so it is kept
    and slmops.core.answers.parse_answer says why it holds no answer. `reasoning_content` (DeepSeek, vLLM) or
    `reasoning` (Ollama, OpenRouter) is kept apart from the content; it is never part of the answer."""
    try:
        completion = json.loads(body)
        choice = completion["choices"][0]
        message = choice["message"]
        content = message["content"]
        usage = completion.get("usage") or {}
        reply = {
            "content": content,
            "finish_reason": choice.get("finish_reason"),
            "model": completion.get("model"),
            "prompt_tokens": int(usage.get("prompt_tokens") or 0),
            "completion_tokens": int(usage.get("completion_tokens") or 0),
        }
        reasoning = message.get("reasoning_content") or message.get("reasoning")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:  # JSONDecodeError is a ValueError
        raise BadResponse(f"malformed response body ({type(err).__name__})") from None
    if content is not None and not isinstance(content, str):
        raise BadResponse(f"message content is a {type(content).__name__}, not text")
    if isinstance(reasoning, str) and reasoning:
        reply["reasoning_content"] = reasoning
    return reply


def describe_failure(err: Exception, timeout_s: float) -> str:
    """A short reason for the failure counts; never the request (or its key)."""
    if isinstance(err, openai.APIStatusError):
        if err.code == "content_filter":  # Azure refused the prompt itself: asking again gets the same
            return f"content filter: the endpoint filtered the prompt (HTTP {err.status_code} content_filter)"
        if err.status_code in (400, 404, 422):  # the request itself is wrong: the server's words say how
            said = err.body.get("message") if isinstance(err.body, dict) else None
            return f"HTTP {err.status_code}: {str(said or err.message)[:160]}"
        return f"HTTP {err.status_code}"  # not 401/403: their messages may quote part of the key
    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    # The aiohttp transport reports any connection error as a connect timeout: ask the root cause.
    if isinstance(err, openai.APITimeoutError) and isinstance(root, TimeoutError):
        return f"timed out after {timeout_s:g} s"
    if isinstance(err, openai.APIConnectionError):  # APITimeoutError included
        return f"connection failed ({type(root).__name__})"
    return str(err)


def _backoff(attempt: int) -> float:
    """The openai client's own schedule (0.5 s doubling up to 8 s, minus up to 25% jitter)."""
    return min(0.5 * 2**attempt, 8.0) * (1 - 0.25 * random.random())


async def complete(client, model: str, body: dict, messages: list[dict], max_retries: int) -> dict:
    """One chat completion; `body`: generation fields (GenerationSettings.openai_kwargs). The client retries HTTP
    failures; a malformed 200 body is retried here, because the client hands it over as it is."""
    for attempt in range(max_retries + 1):
        # client.post (the client's documented way to raw requests) skips the typed-params transform and model
        # parsing of chat.completions.create, a third of the client's CPU per request; retries are the same.
        text = await client.post("/chat/completions", cast_to=str, body={"model": model, "messages": messages, **body})
        try:
            return parse_reply(text)
        except BadResponse:
            if attempt == max_retries:
                raise
            await asyncio.sleep(_backoff(attempt))
    raise AssertionError("unreachable")


def complete_all(
    endpoint: Endpoint,
    body: dict,
    chats: list[list[dict]],
    requests: Requests,
    usage: Usage,
    desc: str = "teacher answering",
) -> tuple[list[dict | None], list[str | None]]:
    """(replies, failure reasons), both in the order of `chats`. Cached answers are not requested again;
    each new answer is cached as soon as it arrives."""
    cache = ResponseCache(requests.cache)
    identity = endpoint.identity()
    keys = [cache_key(identity, body, chat) for chat in chats]
    cached = cache.get_many(keys)
    replies: list[dict | None] = [cached.get(key) for key in keys]
    failures: list[str | None] = [None] * len(chats)
    usage.cache_hits += len(cached)
    missing = [i for i, reply in enumerate(replies) if reply is None]
    if missing:
        asyncio.run(_fetch(endpoint, body, chats, keys, missing, requests, cache, usage, replies, failures, desc))
    cache.close()
    usage.record_used(replies)
    return replies, failures


async def _fetch(endpoint, body, chats, keys, missing, requests, cache, usage, replies, failures, desc) -> None:
    async def count_attempt(_request) -> None:
        usage.attempts += 1

    client = endpoint.client(requests.timeout_s, requests.max_retries, count_attempt)
    limit = asyncio.Semaphore(requests.concurrency)
    bar = tqdm(total=len(missing), desc=desc, unit="request")

    async def one(i: int) -> None:
        async with limit:
            try:
                reply = await complete(client, endpoint.model, body, chats[i], requests.max_retries)
            except (openai.OpenAIError, BadResponse) as err:
                failures[i] = describe_failure(err, requests.timeout_s)
                usage.failed += 1
                usage.failure_reasons[failures[i]] += 1
            else:
                cache.put(keys[i], reply)
                replies[i] = reply
                usage.record(reply)
        bar.update()

    try:
        await asyncio.gather(*(one(i) for i in missing))
    finally:
        bar.close()
        await client.close()


def complete_enough(
    endpoint: Endpoint, body: dict, chats: list[list[dict]], requests: Requests, usage: Usage, desc: str
) -> tuple[list[dict | None], list[str | None]]:
    """complete_all, then InputError (check_success_ratio) when fewer than requests.min_success_ratio succeeded."""
    replies, failures = complete_all(endpoint, body, chats, requests, usage, desc)
    check_success_ratio(failures, requests.min_success_ratio, requests.cache)
    return replies, failures


def check_success_ratio(failures: list[str | None], min_ratio: float, cache_path: str) -> None:
    """InputError naming how many requests failed and why when too few succeeded."""
    failed = [f for f in failures if f is not None]
    if not failures or 1 - len(failed) / len(failures) >= min_ratio:
        return
    reasons = ", ".join(f"{count} x {reason}" for reason, count in Counter(failed).most_common())
    raise InputError(
        f"{len(failed)} of {len(failures)} teacher requests failed ({reasons}); "
        f"synthesize.requests.min_success_ratio is {min_ratio}. The {len(failures) - len(failed)} answers "
        f"received are cached in {cache_path}: a rerun sends only the failed requests"
    )


def probe(endpoint: Endpoint, requests: Requests) -> dict:
    """Ask the endpoint which model answers (one uncached one-token completion): served_model changes
    when the provider swaps the model behind a name."""

    async def ask() -> dict:
        client = endpoint.client(requests.timeout_s, requests.max_retries)
        try:
            reply = await complete(
                client,
                endpoint.model,
                GenerationSettings.greedy(1).openai_kwargs(seed=0),
                [{"role": "user", "content": "Say OK."}],
                requests.max_retries,
            )
        finally:
            await client.close()
        return reply

    try:
        reply = asyncio.run(ask())
    except (openai.OpenAIError, BadResponse) as err:
        raise InputError(
            f"teacher endpoint {public_url(endpoint.base_url)} (model {endpoint.model}) did not answer: "
            f"{describe_failure(err, requests.timeout_s)}"
        ) from None
    return {"served_model": reply["model"]}


def time_requests(endpoint: Endpoint, body: dict, chats: list[list[dict]], requests: Requests) -> list[float]:
    """Seconds per request, sent one at a time and never from the cache: what a caller of the endpoint waits."""

    async def timed() -> list[float]:
        client = endpoint.client(requests.timeout_s, requests.max_retries)
        seconds = []
        try:
            for chat in tqdm(chats, desc="timing the endpoint", unit="request"):
                start = time.perf_counter()
                await complete(client, endpoint.model, body, chat, requests.max_retries)
                seconds.append(time.perf_counter() - start)
        finally:
            await client.close()
        return seconds

    try:
        return asyncio.run(timed())
    except (openai.OpenAIError, BadResponse) as err:
        raise InputError(
            f"timing teacher endpoint {public_url(endpoint.base_url)}: {describe_failure(err, requests.timeout_s)}"
        ) from None
