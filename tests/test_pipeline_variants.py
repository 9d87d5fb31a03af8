"""The pipeline pointed elsewhere by params.yaml alone: an endpoint teacher, another task. Each starts from a copy
of conftest's pipeline_run (the end-to-end module's small pipeline, run once from nothing) and reruns every stage."""

import json
import shutil
import uuid

import pytest
import yaml
from fake_endpoint import FakeTeacher
from test_pipeline_e2e import changed_stages, read_json, run, set_params, stages_ran

from slmops.models.hf import hash_weights

pytestmark = pytest.mark.e2e
FAKE_KEY = f"sk-e2e-{uuid.uuid4().hex}"  # made at run time: this file, copied into the project, must not hold it
MEETINGS = "tests/data/tasks/meetings"


def test_a_pipeline_with_an_endpoint_teacher(pipeline_run, tmp_path):
    """The whole pipeline with teacher.backend openai: a fault-injecting teacher on loopback labels the
    prompts (one answer in five first fails), the student starts from the first run's fine-tuned model.
    The endpoint's key, set in the environment, ends up in no file of the project and in no log."""
    repo, second = pipeline_run, tmp_path / "second"
    shutil.copytree(repo, second, symlinks=True)
    rows = [
        json.loads(line)
        for name in ("labelled", "eval")
        for line in (repo / f"data/small/{name}.jsonl").read_text().splitlines()
    ]
    teacher = FakeTeacher({r["message"]: r["label"] for r in rows})
    for row in rows[:150:5]:
        teacher.faults[row["message"]] = ["500"]
    try:
        params = yaml.safe_load((second / "params.yaml").read_text())
        params["data"]["prompts"] = "data/small/labelled.jsonl"
        params["teacher"].update(backend="openai", model="teacher-deployment")
        params["teacher"]["openai"].update(base_url=teacher.url, auth="api_key", api_key_env="E2E_TEACHER_KEY")
        params["synthesize"]["logprobs_top_k"] = 0
        params["synthesize"]["requests"]["cache"] = str(tmp_path / "responses.sqlite")
        params["student"]["model"] = str(repo / "models/finetuned")
        params["distill"]["kd"]["alpha"] = 1.0
        params["quantize"]["precision"] = "fp32"  # this barely trained student's near-tied logits fail int4 parity
        (second / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        result = run(["dvc", "repro"], second, E2E_TEACHER_KEY=FAKE_KEY)
        again = run(["dvc", "repro"], second, E2E_TEACHER_KEY=FAKE_KEY)
    finally:
        teacher.close()
    assert stages_ran(result) == {"teacher", "synthesize", "distill", "finetune", "quantize", "evaluate", "package"}
    assert stages_ran(again) == set()
    assert teacher.authorizations == {f"Bearer {FAKE_KEY}"}
    logs = result.stdout + result.stderr + again.stdout + again.stderr
    assert FAKE_KEY not in logs
    files = [p for p in [*second.rglob("*"), tmp_path / "responses.sqlite"] if p.is_file()]
    assert len(files) > 100  # models, data, reports, dvc.lock, the DVC cache, the response cache
    assert [str(p) for p in files if FAKE_KEY.encode() in p.read_bytes()] == []
    assert read_json(second / "models/teacher/teacher.json") == {
        "backend": "openai",
        "base_url": teacher.url,
        "model": "teacher-deployment",
        "api_version": None,
        "served_model": "fake-teacher-2026-01",
    }
    synthesize = read_json(second / "reports/synthesize.json")
    assert synthesize["accepted"] == 150 and synthesize["usage"]["requests"] == 150
    assert synthesize["usage"]["retries"] == 30 and synthesize["usage"]["failed"] == 0
    metrics = read_json(second / "reports/metrics.json")
    assert metrics["variants"]["teacher"]["runtime"] == "endpoint teacher-deployment"
    assert metrics["variants"]["teacher"]["exact_match"] == 1.0 and metrics["variants"]["teacher"]["size_mb"] is None
    assert metrics["memory_saved"] is None and metrics["accuracy_kept"] == metrics["exact_match"]
    assert "served model `fake-teacher-2026-01`" in (second / "models/foundry/tiny-triage/README.md").read_text()
    assert "| teacher | endpoint teacher-deployment | n/a |" in (second / "reports/report.md").read_text()


def test_switching_params_to_another_task_reruns_every_stage_and_ships_its_model(pipeline_run, tmp_path):
    """params.yaml alone points the pipeline at a second task (an integer and a list field, another instruction)."""
    second = tmp_path / "second"
    shutil.copytree(pipeline_run, second, symlinks=True)
    assert changed_stages(second) == {}  # the copy is up to date: what reruns below is the switch
    old_teacher = hash_weights(second / "models/teacher")

    def meetings(params):
        params["task"]["dir"] = MEETINGS
        params["data"] = {name: f"{MEETINGS}/{name}.jsonl" for name in ("labelled", "prompts", "eval")}
        params["package"]["name"] = "tiny-meetings"

    set_params(second, meetings)
    every = {"teacher", "synthesize", "distill", "finetune", "quantize", "evaluate", "package"}
    assert set(changed_stages(second)) == every
    assert stages_ran(run(["dvc", "repro"], second)) == every
    assert changed_stages(second) == {}

    fields = ["action", "room", "day", "attendees", "invitees"]
    task = read_json(second / "models/foundry/tiny-meetings/task.json")
    assert task["name"] == "meeting-requests" and task["answer_schema"]["required"] == fields
    assert sorted(p.name for p in (second / "models/foundry").iterdir()) == ["tiny-meetings"]
    assert hash_weights(second / "models/teacher") != old_teacher
    accepted = [json.loads(line) for line in (second / "data/synthetic/accepted.jsonl").read_text().splitlines()]
    assert accepted and all(list(row["label"]) == fields for row in accepted)
    assert isinstance(accepted[0]["label"]["attendees"], int) and isinstance(accepted[0]["label"]["invitees"], list)
    metrics = read_json(second / "reports/metrics.json")
    assert set(metrics["variants"]["quantized"]["field_accuracy"]) == set(fields)
    lines = (second / "reports/predictions/quantized.jsonl").read_text().splitlines()
    predictions = [json.loads(line) for line in lines]
    assert len(predictions) == 40 and all(list(p["label"]) == fields for p in predictions)
    teacher = metrics["variants"]["teacher"]  # the small students here train too briefly to answer well
    assert teacher["json_valid"] >= 0.5 and teacher["field_accuracy"]["action"] >= 0.5, teacher
    assert read_json(second / "reports/distill.json")["examples"] == len(accepted)
    shipped = read_json(second / "models/foundry/tiny-meetings/tokenizer.json")
    tokens = [*shipped["model"]["vocab"], *(t["content"] for t in shipped["added_tokens"])]
    # the shipped model's tokenizer learned the new data: its answer keys are single tokens, the old ones gone
    assert any('"attendees": ' in t for t in tokens) and not any("urgency" in t for t in tokens)
