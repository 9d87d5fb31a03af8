"""The openai teacher backend against real HTTP servers on 127.0.0.1: the fault-injecting FakeTeacher and
`slmops serve`. Library calls and the teacher, endpoint and synthesize stages in-process (conftest.run_stage); the
stage killed mid-run in a subprocess."""

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, default, run_stage
from fake_endpoint import FakeTeacher

from slmops.core.config import GenerationSettings
from slmops.core.errors import InputError
from slmops.core.task import render_answer
from slmops.teacher.endpoint import (
    Endpoint,
    ResponseCache,
    Usage,
    cache_key,
    check_success_ratio,
    complete_all,
    parse_reply,
    probe,
    public_url,
)
from slmops.teacher.selfinstruct import drop_near_duplicates, parse_written

FAKE_KEY = f"sk-fake-{uuid.uuid4().hex}"  # made at run time, so that no source file holds it


@pytest.fixture()
def rows():
    lines = (ROOT / "data/eval/eval.jsonl").read_text().splitlines()[:60]
    return [json.loads(line) for line in lines]


@pytest.fixture()
def teacher(rows):
    server = FakeTeacher({r["message"]: r["label"] for r in rows}, slow_s=1.5)
    yield server
    server.close()


def chats(task, rows):
    return [task.messages(r["message"]) for r in rows]


def endpoint_for(server, **kwargs):
    return Endpoint(base_url=server.url, model="teacher-deployment", auth="none", **kwargs)


def test_public_url_drops_credentials_query_and_fragment():
    assert (
        public_url("https://user:secret@example.com:8443/openai/v1/?api-key=abc#x")
        == "https://example.com:8443/openai/v1"
    )
    assert public_url("http://127.0.0.1:11434/v1") == "http://127.0.0.1:11434/v1"


def test_cache_key_changes_with_each_part_of_the_request():
    identity = {"base_url": "http://a/v1", "model": "m", "served_model": "m-1"}
    messages = [{"role": "user", "content": "hi"}]
    key = cache_key(identity, GenerationSettings.greedy(8).openai_kwargs(), messages)
    assert key == cache_key(dict(identity), GenerationSettings.greedy(8).openai_kwargs(), [dict(messages[0])])
    assert key != cache_key({**identity, "served_model": "m-2"}, GenerationSettings.greedy(8).openai_kwargs(), messages)
    assert key != cache_key(identity, GenerationSettings.at_temperature(8, 0.7).openai_kwargs(), messages)
    assert key != cache_key(
        identity, GenerationSettings.greedy(8).openai_kwargs(), [{"role": "user", "content": "hi!"}]
    )


def test_cache_key_is_the_one_earlier_releases_wrote():
    """Responses cached before the settings type changed are still found (they cost money)."""
    import hashlib

    identity = {"base_url": "http://a/v1", "model": "m", "served_model": "m-1"}
    messages = [{"role": "user", "content": "hi"}]
    old = {"max_tokens": 64, "temperature": 0.0, "top_p": 1.0, "seed": 42, "response_format": "json_object"}
    payload = json.dumps({"endpoint": identity, "settings": old, "messages": messages}, sort_keys=True)
    body = GenerationSettings.greedy(64).openai_kwargs(seed=42, response_format="json_object")
    assert cache_key(identity, body, messages) == hashlib.sha256(payload.encode()).hexdigest()


def test_settings_send_seed_and_json_mode_only_when_set():
    assert GenerationSettings.greedy(5).openai_kwargs() == {"max_tokens": 5, "temperature": 0.0, "top_p": 1.0}
    kwargs = GenerationSettings.greedy(5).openai_kwargs(seed=3, response_format="json_object")
    assert kwargs["seed"] == 3 and kwargs["response_format"] == {"type": "json_object"}
    sampled = default("synthesize.generation", max_new_tokens=5, do_sample=True, temperature=0.7, top_p=0.9)
    assert sampled.openai_kwargs() == {"max_tokens": 5, "temperature": 0.7, "top_p": 0.9}
    assert sampled.hf_kwargs() == {"max_new_tokens": 5, "do_sample": True, "temperature": 0.7, "top_p": 0.9}
    assert sampled.genai_search_options() == {"do_sample": True, "temperature": 0.7, "top_p": 0.9}
    assert GenerationSettings.greedy(5).genai_search_options() == {"do_sample": False}


def test_missing_key_variable_is_named_without_any_value(monkeypatch):
    monkeypatch.delenv("MY_TEACHER_KEY", raising=False)
    endpoint = Endpoint(base_url="https://example.invalid/v1", model="m", api_key_env="MY_TEACHER_KEY")
    with pytest.raises(InputError, match="environment variable MY_TEACHER_KEY is not set"):
        endpoint.client(5, 0)


def test_answers_in_order_with_faults_retried_and_counted(teacher, task, rows, tmp_path):
    faults = {0: ["429"], 1: ["500", "500"], 2: ["slow"], 3: ["malformed"], 4: ["drop"], 5: ["garbage", "500"]}
    for index, plan in faults.items():
        teacher.faults[rows[index]["message"]] = plan
    # The timeout sits well between a normal answer (under a second, even on 2 busy cores; a 1.5 s timeout was
    # crossed by one under load) and the slow fault.
    teacher.slow_s = 6.0
    requests = default(
        "synthesize.requests", concurrency=8, timeout_s=3.0, max_retries=3, cache=str(tmp_path / "cache.sqlite")
    )
    usage = Usage()
    start = time.perf_counter()
    replies, failures = complete_all(
        endpoint_for(teacher), GenerationSettings.greedy(64).openai_kwargs(), chats(task, rows), requests, usage
    )
    assert time.perf_counter() - start >= 1.0  # the 429 said Retry-After: 1
    assert failures == [None] * len(rows)
    assert [json.loads(r["content"]) for r in replies] == [r["label"] for r in rows]
    assert usage.retries == sum(len(plan) for plan in faults.values()) == 8
    assert usage.requests == len(rows) and usage.cache_hits == 0 and usage.failed == 0
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert {r["model"] for r in replies} == {"fake-teacher-2026-01"}


def test_a_cached_rerun_sends_nothing(teacher, task, rows, tmp_path):
    requests = default("synthesize.requests", concurrency=4, cache=str(tmp_path / "cache.sqlite"))
    first, _ = complete_all(
        endpoint_for(teacher), GenerationSettings.greedy(64).openai_kwargs(), chats(task, rows), requests, Usage()
    )
    sent = sum(teacher.attempts.values())
    usage = Usage()
    second, _ = complete_all(
        endpoint_for(teacher), GenerationSettings.greedy(64).openai_kwargs(), chats(task, rows), requests, usage
    )
    assert second == first and sum(teacher.attempts.values()) == sent == len(rows)
    assert usage.cache_hits == len(rows) and usage.requests == 0 and usage.prompt_tokens == 0
    assert usage.dataset_prompt_tokens == sum(r["prompt_tokens"] for r in first)
    changed = endpoint_for(teacher, served_model="fake-teacher-2026-02")  # the provider swapped the model
    complete_all(changed, GenerationSettings.greedy(64).openai_kwargs(), chats(task, rows), requests, Usage())
    assert sum(teacher.attempts.values()) == 2 * len(rows)


def test_persistent_failures_are_reported_and_the_rest_kept(teacher, task, rows, tmp_path):
    for row in rows[:10]:
        teacher.faults[row["message"]] = ["500"] * 10
    requests = default(
        "synthesize.requests", concurrency=8, max_retries=1, min_success_ratio=0.9, cache=str(tmp_path / "cache.sqlite")
    )
    usage = Usage()
    replies, failures = complete_all(
        endpoint_for(teacher), GenerationSettings.greedy(64).openai_kwargs(), chats(task, rows), requests, usage
    )
    assert failures[:10] == ["HTTP 500"] * 10 and failures[10:] == [None] * 50
    assert usage.failed == 10 and usage.failure_reasons == {"HTTP 500": 10} and usage.retries == 10
    with pytest.raises(
        InputError,
        match=r"10 of 60 teacher requests failed \(10 x HTTP 500\).*min_success_ratio is 0.9.*"
        r"50 answers received are cached",
    ):
        check_success_ratio(failures, 0.9, requests.cache)
    check_success_ratio(failures, 0.8, requests.cache)  # 50/60 is enough at 0.8
    teacher.faults.clear()
    before = sum(teacher.attempts.values())
    replies, failures = complete_all(
        endpoint_for(teacher), GenerationSettings.greedy(64).openai_kwargs(), chats(task, rows), requests, Usage()
    )
    assert sum(teacher.attempts.values()) - before == 10 and failures == [None] * 60


def test_a_rejected_request_is_not_retried_and_its_reason_kept(teacher, task, rows, tmp_path):
    teacher.faults[rows[0]["message"]] = ["400"]
    usage = Usage()
    _, failures = complete_all(
        endpoint_for(teacher),
        GenerationSettings.greedy(64).openai_kwargs(),
        chats(task, rows[:3]),
        default("synthesize.requests", cache=str(tmp_path / "c.sqlite")),
        usage,
    )
    assert failures[0] == "HTTP 400: response_format json_object is not supported" and failures[1:] == [None, None]
    assert teacher.attempts[rows[0]["message"]] == 1 and usage.retries == 0


def test_entra_id_sends_a_bearer_token_from_azure_identity(teacher, task, rows, tmp_path, monkeypatch):
    import azure.identity.aio
    from azure.core.credentials import AccessToken

    class FakeCredential:
        async def get_token(self, *scopes, **kwargs):
            assert scopes == ("https://cognitiveservices.azure.com/.default",)
            return AccessToken("entra-token-123", int(time.time()) + 3600)

    monkeypatch.setattr(azure.identity.aio, "DefaultAzureCredential", FakeCredential)
    endpoint = Endpoint(base_url=teacher.url, model="m", auth="entra_id")
    complete_all(
        endpoint,
        GenerationSettings.greedy(8).openai_kwargs(),
        chats(task, rows[:2]),
        default("synthesize.requests", cache=str(tmp_path / "c.sqlite")),
        Usage(),
    )
    assert teacher.authorizations == {"Bearer entra-token-123"}


def test_classic_azure_deployment_gets_its_url_and_api_key_header(teacher, task, rows, tmp_path, monkeypatch):
    monkeypatch.setenv("AZURE_TEACHER_KEY", FAKE_KEY)
    endpoint = Endpoint(
        base_url=teacher.url.removesuffix("/v1"),
        model="gpt-4o-teacher",
        api_version="2024-10-21",
        api_key_env="AZURE_TEACHER_KEY",
    )
    replies, _ = complete_all(
        endpoint,
        GenerationSettings.greedy(64).openai_kwargs(),
        chats(task, rows[:2]),
        default("synthesize.requests", cache=str(tmp_path / "c.sqlite")),
        Usage(),
    )
    assert teacher.paths == ["/openai/deployments/gpt-4o-teacher/chat/completions?api-version=2024-10-21"] * 2
    assert teacher.authorizations == {FAKE_KEY}  # sent as the api-key header
    assert json.loads(replies[0]["content"]) == rows[0]["label"]


def test_probe_reports_the_served_model_and_names_an_unreachable_endpoint(teacher):
    assert probe(endpoint_for(teacher), default("synthesize.requests")) == {"served_model": "fake-teacher-2026-01"}
    gone = Endpoint(base_url="http://127.0.0.1:9/v1", model="m", auth="none")
    with pytest.raises(
        InputError, match=r"teacher endpoint http://127.0.0.1:9/v1 \(model m\) did not answer: connection failed"
    ):
        probe(gone, default("synthesize.requests", max_retries=0, timeout_s=2))


def test_cache_survives_a_reopen(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    cache.put("k", {"content": "x"})
    cache.close()
    assert ResponseCache(tmp_path / "c.sqlite").get_many(["k", "other"]) == {"k": {"content": "x"}}


def test_written_prompts_are_parsed_and_near_duplicates_dropped():
    content = '1. "Where is my order ORD-12?"\n- where is my order ORD-12 ??\n\n* The blender arrived broken.\nok'
    written = parse_written(content)
    assert written == ["Where is my order ORD-12?", "where is my order ORD-12 ??", "The blender arrived broken."]
    kept, dropped = drop_near_duplicates(written, ["the blender arrived broken!"], 0.7)
    assert kept == ["Where is my order ORD-12?"] and dropped == 2


def test_written_prompts_are_asked_for_with_seed_examples_and_deduplicated():
    from slmops.teacher.labelling import write_new_prompts

    seeds = [f"my order ORD-{i:02d} never arrived, where is it?" for i in range(10)] + ["the blender is broken"]
    asked = []

    def answer_all(chats):
        asked.extend(chats)
        return ["1. I want to return the lamp I bought.\n2. the blender is broken!", None]  # one request failed

    generate = default("synthesize.generate", requests=2, prompts_per_request=4, examples=3, max_similarity=0.7)
    rows, stats = write_new_prompts(answer_all, generate, seeds, seeds, seed=1)
    assert rows == [{"id": "written-00000", "message": "I want to return the lamp I bought."}]
    assert stats == {"requests": 2, "written": 2, "near_duplicates_dropped": 1, "kept": 1}
    assert len(asked) == 2 and all("Write 4 new inputs" in chat[0]["content"] for chat in asked)
    again = []
    write_new_prompts(lambda chats: again.extend(chats) or [None, None], generate, seeds, seeds, seed=1)
    assert again == asked  # same seed, same questions: a rerun hits the cache


def test_a_filtered_or_reasoning_only_answer_is_a_reply_not_retried(teacher, task, rows, tmp_path):
    styles = {0: "content_filter", 1: "content_filter_full", 2: "reasoning_only", 3: "think", 4: "length"}
    for index, style in styles.items():
        teacher.faults[rows[index]["message"]] = [style]
    usage = Usage()
    replies, failures = complete_all(
        endpoint_for(teacher),
        GenerationSettings.greedy(64).openai_kwargs(),
        chats(task, rows[:6]),
        default("synthesize.requests", max_retries=3, cache=str(tmp_path / "c.sqlite")),
        usage,
    )
    assert failures == [None] * 6
    assert [teacher.attempts[r["message"]] for r in rows[:6]] == [1] * 6 and usage.retries == 0
    assert [r["finish_reason"] for r in replies] == [
        "content_filter",
        "content_filter",
        "stop",
        "stop",
        "length",
        "stop",
    ]
    assert replies[0]["content"] is None and replies[2]["content"] is None
    assert replies[2]["reasoning_content"].startswith("Let me think.")
    assert (
        usage.content_filtered == 2
        and usage.summary({"prompt_per_million": 0, "completion_per_million": 0})["content_filtered"] == 2
    )


def test_reply_bodies_that_are_not_chat_completions_are_bad_responses():
    from slmops.teacher.endpoint import BadResponse

    ok = {"choices": [{"finish_reason": "stop", "message": {"content": "x", "reasoning": "why"}}], "model": "m"}
    assert parse_reply(json.dumps(ok))["reasoning_content"] == "why"  # Ollama's and OpenRouter's name for it
    for body, reason in [
        ('{"choices": []}', "malformed response body (IndexError)"),
        ('{"choices": [{"message": {}}]}', "malformed response body (KeyError)"),
        ('{"choices": [{"message": {"content": [{"type": "text"}]}}]}', "message content is a list, not text"),
    ]:
        with pytest.raises(BadResponse, match=re.escape(reason)):
            parse_reply(body)


def test_a_prompt_the_content_filter_refuses_is_named_and_not_retried(teacher, task, rows, tmp_path):
    teacher.faults[rows[0]["message"]] = ["400_content_filter"]
    usage = Usage()
    _, failures = complete_all(
        endpoint_for(teacher),
        GenerationSettings.greedy(64).openai_kwargs(),
        chats(task, rows[:2]),
        default("synthesize.requests", cache=str(tmp_path / "c.sqlite")),
        usage,
    )
    assert failures == ["content filter: the endpoint filtered the prompt (HTTP 400 content_filter)", None]
    assert teacher.attempts[rows[0]["message"]] == 1


# ---- the stages, as DVC runs them ----


def endpoint_params(project, teacher, rows, **synthesize):
    (project / "data/prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["prompts"] = "data/prompts.jsonl"
    params["teacher"].update(backend="openai", model="teacher-deployment")
    params["teacher"]["openai"].update(
        base_url=teacher.url,
        auth="api_key",
        api_key_env="FAKE_TEACHER_KEY",
        prices={"prompt_per_million": 2.5, "completion_per_million": 10.0},
    )
    params["synthesize"]["logprobs_top_k"] = 0
    params["synthesize"]["requests"].update(
        concurrency=4, timeout_s=0.75, max_retries=3, cache=".cache/responses.sqlite"
    )
    params["synthesize"].update(synthesize)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def stage(project, name, key=FAKE_KEY):
    return run_stage(project, name, FAKE_TEACHER_KEY=key)


def run_openai_stages(project):
    logs = []
    for name in ("teacher", "endpoint", "synthesize"):
        result = stage(project, name)
        logs.append(result.stdout + result.stderr)
        assert result.returncode == 0, result.stderr[-2000:]
    return "\n".join(logs)


def test_stages_record_identity_label_and_account_usage(project, teacher, rows):
    for row, fault in zip(rows, ["429", "500", "malformed", "drop", "slow"], strict=False):
        teacher.faults[row["message"]] = [fault]
    teacher.labels[rows[7]["message"]] = {"intent": "not-an-intent"}  # the teacher answers off-schema once
    endpoint_params(project, teacher, rows)
    logs = run_openai_stages(project)

    identity = json.loads((project / "models/teacher/teacher.json").read_text())
    assert identity == {
        "backend": "openai",
        "base_url": teacher.url,
        "model": "teacher-deployment",
        "api_version": None,
        "served_model": "fake-teacher-2026-01",
    }
    assert json.loads((project / "data/endpoint.json").read_text())["served_model"] == "fake-teacher-2026-01"
    accepted = [json.loads(line) for line in (project / "data/synthetic/accepted.jsonl").read_text().splitlines()]
    assert [a["label"] for a in accepted] == [r["label"] for i, r in enumerate(rows) if i != 7]
    rejected = [json.loads(line) for line in (project / "data/synthetic/rejected.jsonl").read_text().splitlines()]
    assert [r["message"] for r in rejected] == [rows[7]["message"]] and rejected[0]["reason"].startswith("schema:")
    meta = json.loads((project / "data/synthetic/meta.json").read_text())
    assert meta["logprobs_top_k"] == 0 and meta["teacher"]["served_model"] == "fake-teacher-2026-01"
    usage = json.loads((project / "reports/synthesize.json").read_text())["usage"]
    assert usage["requests"] == 60 and usage["retries"] == 5 and usage["cache_hits"] == 0 and usage["failed"] == 0
    expected = (usage["prompt_tokens"] * 2.5 + usage["completion_tokens"] * 10.0) / 1e6
    assert usage["cost_usd"] == pytest.approx(expected) and usage["cost_usd"] > 0
    assert "teacher answering" in logs and "request/s" in logs  # the progress bar, with its rate

    again = stage(project, "synthesize")
    assert again.returncode == 0
    usage = json.loads((project / "reports/synthesize.json").read_text())["usage"]
    assert usage["requests"] == 0 and usage["cache_hits"] == 60 and usage["cost_usd"] == 0
    assert usage["dataset_cost_usd"] == pytest.approx(expected)


def test_real_teacher_answers_are_labelled_or_rejected_with_their_reason(project, teacher, rows):
    """Through the stages: each style of answer real teachers send, the reason rejected.jsonl records, one
    request each (a filtered or reasoning-only answer is not asked again), and the counts in the stats."""
    styles = ["content_filter", "content_filter_full", "reasoning_only", "length", "think", "fenced", "trailing"]
    for row, style in zip(rows, styles, strict=False):
        teacher.faults[row["message"]] = [style]
    endpoint_params(project, teacher, rows[:10])
    run_openai_stages(project)

    accepted = [json.loads(line) for line in (project / "data/synthetic/accepted.jsonl").read_text().splitlines()]
    assert [a["message"] for a in accepted] == [r["message"] for r in rows[4:10]]
    assert [a["label"] for a in accepted] == [r["label"] for r in rows[4:10]]
    assert accepted[0]["answer"].startswith("<think>")  # the teacher's raw text, as it came
    rejected = [json.loads(line) for line in (project / "data/synthetic/rejected.jsonl").read_text().splitlines()]
    filtered = "content filter: the endpoint filtered this answer (finish_reason content_filter)"
    reasoning = len(f"Let me think. The answer is {render_answer(rows[2]['label'])}")  # what the fake sends
    assert [(r["message"], r["kind"], r["reason"]) for r in rejected] == [
        (rows[0]["message"], "content_filter", filtered),
        (rows[1]["message"], "content_filter", filtered),
        (rows[2]["message"], "empty", f"no answer: content is null (reasoning_content holds {reasoning} characters)"),
        (rows[3]["message"], "length", "cut at 64 tokens (finish_reason length)"),
    ]
    assert [teacher.attempts[r["message"]] for r in rows[:10]] == [1] * 10
    stats = json.loads((project / "reports/synthesize.json").read_text())
    assert stats["rejected_by"] == {"content_filter": 2, "empty": 1, "length": 1}
    assert stats["usage"]["content_filtered"] == 2 and stats["usage"]["retries"] == 0


def test_below_the_success_ratio_the_stage_fails_naming_counts_and_reasons(project, teacher, rows):
    for row in rows[:12]:
        teacher.faults[row["message"]] = ["500"] * 10
    endpoint_params(project, teacher, rows)
    for name in ("teacher", "endpoint"):
        assert stage(project, name).returncode == 0
    result = stage(project, "synthesize")
    assert result.returncode == 2
    assert (
        "12 of 60 teacher requests failed (12 x HTTP 500); synthesize.requests.min_success_ratio is 0.95"
        in result.stderr
    )
    assert not (project / "data/synthetic").exists()
    teacher.faults.clear()
    before = sum(teacher.answered.values())
    assert stage(project, "synthesize").returncode == 0
    assert sum(teacher.answered.values()) - before == 12  # only the failed ones are asked again


def test_a_swapped_model_changes_the_endpoint_record(project, teacher, rows):
    endpoint_params(project, teacher, rows[:3])
    assert stage(project, "endpoint").returncode == 0
    first = (project / "data/endpoint.json").read_text()
    assert stage(project, "endpoint").returncode == 0 and (project / "data/endpoint.json").read_text() == first
    teacher.served_model = "fake-teacher-2026-02"
    assert stage(project, "endpoint").returncode == 0
    assert json.loads((project / "data/endpoint.json").read_text())["served_model"] == "fake-teacher-2026-02"


def test_wrong_params_for_the_openai_backend_are_named(project, teacher, rows):
    before = (project / "data/endpoint.json").read_text()
    endpoint_params(project, teacher, rows[:3], logprobs_top_k=4)
    result = stage(project, "synthesize")
    assert result.returncode == 2 and "synthesize.logprobs_top_k: an endpoint's log-probs" in result.stderr
    endpoint_params(project, teacher, rows[:3])
    result = stage(project, "endpoint", key="")
    assert result.returncode == 2 and "environment variable FAKE_TEACHER_KEY is not set" in result.stderr
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["teacher"]["openai"]["base_url"] = None
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = stage(project, "endpoint")
    assert result.returncode == 2 and "teacher.openai.base_url: must be set with backend openai" in result.stderr
    assert (project / "data/endpoint.json").read_text() == before  # nothing written


def test_generate_and_label_writes_new_prompts_and_drops_near_duplicates(project, teacher, rows):
    endpoint_params(
        project,
        teacher,
        rows[:5],
        mode="generate_and_label",
        generate={
            "requests": 4,
            "prompts_per_request": 5,
            "examples": 3,
            "temperature": 1.0,
            "max_tokens": 256,
            "max_similarity": 0.7,
        },
    )
    run_openai_stages(project)
    written = [json.loads(line) for line in (project / "data/synthetic/written_prompts.jsonl").read_text().splitlines()]
    stats = json.loads((project / "reports/synthesize.json").read_text())
    assert stats["generate"]["requests"] == 4 and stats["generate"]["written"] == 20
    assert stats["generate"]["kept"] == len(written) and stats["generate"]["near_duplicates_dropped"] > 0
    assert stats["prompts"] == 5 + len(written)
    messages = [w["message"] for w in written]
    kept, dropped = drop_near_duplicates(messages, [], 0.7)
    assert dropped == 0  # what is kept has no near-duplicate left
    writing = [b for b in teacher.bodies if b["messages"][0]["content"].startswith("You write realistic")]
    assert len(writing) == 4 and all(b["temperature"] == 1.0 and b["max_tokens"] == 256 for b in writing)


@pytest.mark.slow  # the stage killed is a child process that imports torch
def test_kill_9_mid_run_then_rerun_gives_the_uninterrupted_dataset(project, teacher, rows, tmp_path):
    teacher.answer_limit = 25
    endpoint_params(
        project,
        teacher,
        rows,
        requests={
            "concurrency": 2,
            "timeout_s": 5,
            "max_retries": 3,
            "min_success_ratio": 0.95,
            "cache": ".cache/responses.sqlite",
        },
    )
    for name in ("teacher", "endpoint"):
        assert stage(project, name).returncode == 0
    env = {
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "FAKE_TEACHER_KEY": FAKE_KEY,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "stages.synthesize"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while teacher.held < 2 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # 25 answered, then both requests in flight (concurrency 2) held unanswered
    assert teacher.held == 2 and process.poll() is None, "the stage was not waiting mid-run on held requests"
    process.send_signal(signal.SIGKILL)
    process.wait()
    teacher.answer_limit = None
    teacher.release.set()
    assert not (project / "data/synthetic").exists()
    assert sum(teacher.answered.values()) == 25

    assert stage(project, "synthesize").returncode == 0
    resumed = (project / "data/synthetic/accepted.jsonl").read_text()
    assert all(teacher.answered[r["message"]] == 1 for r in rows)  # the 25 came from the cache, none asked twice

    uninterrupted = tmp_path / "uninterrupted"
    uninterrupted.mkdir()
    (uninterrupted / "params.yaml").write_text((project / "params.yaml").read_text())
    shutil.copytree(project / "data", uninterrupted / "data", ignore=shutil.ignore_patterns("synthetic"))
    for name in ("teacher", "endpoint", "synthesize"):
        assert stage(uninterrupted, name).returncode == 0
    assert (uninterrupted / "data/synthetic/accepted.jsonl").read_text() == resumed


def test_key_never_reaches_an_artifact_log_or_report(project, teacher, rows):
    teacher.faults[rows[0]["message"]] = ["500"]
    endpoint_params(project, teacher, rows[:20])
    logs = run_openai_stages(project)
    assert teacher.authorizations == {f"Bearer {FAKE_KEY}"}  # the key was used...
    assert FAKE_KEY not in logs  # ...and is in no log,
    leaks = [str(p) for p in project.rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()]
    assert leaks == []  # nor in any file the run wrote: models/, data/, reports/, the response cache


def test_against_slmops_serve(task, rows, tiny_onnx, tmp_path):
    """One pipeline's package as another's teacher: the answers are the served model's own."""
    from slmops.onnx.runtime import OnnxChatModel

    process = subprocess.Popen(
        [sys.executable, "-m", "slmops.cli", "serve", str(tiny_onnx["int4"]), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        url = process.stdout.readline().split()[-1]
        endpoint = Endpoint(base_url=url, model="int4", auth="none")
        assert probe(endpoint, default("synthesize.requests")) == {"served_model": "int4"}
        usage = Usage()
        replies, failures = complete_all(
            endpoint,
            GenerationSettings.greedy(6).openai_kwargs(),
            chats(task, rows[:8]),
            default("synthesize.requests", concurrency=4, cache=str(tmp_path / "c.sqlite")),
            usage,
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
    local = OnnxChatModel(tiny_onnx["int4"])
    assert failures == [None] * 8
    assert [r["content"] for r in replies] == [local.answer(chat, 6).text for chat in chats(task, rows[:8])]
    assert usage.completion_tokens == 8 * 6 and usage.requests == 8
