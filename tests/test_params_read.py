"""Guard: every params key a stage reads is declared for that stage in dvc.yaml.

Each stage runs in-process on a tiny config with its params wrapped in a recorder that notes every key read;
the declared `params:` of the stage (a key or one of its prefixes) must cover each. So a stage that starts
reading a key nobody declared fails here, instead of DVC silently not rerunning it when that key changes.
"""

import json
import shutil

import pytest
import yaml
from conftest import ROOT, TINY_TEACHER, in_process_children
from fake_endpoint import FakeTeacher
from pydantic import BaseModel

# Keys a stage may read without declaring them, each with its reason.
TRANSPORT_ONLY = {
    # How requests reach an endpoint (concurrency, timeout, retries, least success share, cache file): they change
    # no answer, and retuning them must not resend every request or retrain anything.
    "synthesize.requests",
}

pytestmark = pytest.mark.slow  # runs every stage of a tiny pipeline in-process (minutes on 2 cores)

PIPELINE = ("teacher", "endpoint", "synthesize", "distill", "finetune", "quantize", "evaluate", "package")


class Recorder:
    """Wraps a params section; notes the dotted key of every field read. A method or property of a section
    (model_dump, hf_kwargs, build_precision) counts as reading the whole section."""

    def __init__(self, section: BaseModel, path: str, seen: set[str]):
        self._section, self._path, self._seen = section, path, seen

    def __getattr__(self, name):
        value = getattr(self._section, name)
        if name == "model_dump":  # reads every field but those excluded
            return self._dump
        if name not in type(self._section).model_fields:
            self._seen.add(self._path)
            return value
        path = f"{self._path}.{name}" if self._path else name
        if isinstance(value, BaseModel):
            return Recorder(value, path, self._seen)
        self._seen.add(path)
        return value

    def _dump(self, **kwargs):
        fields = set(type(self._section).model_fields) - set(kwargs.get("exclude") or ())
        self._seen.update(f"{self._path}.{name}" if self._path else name for name in fields)
        return self._section.model_dump(**kwargs)


def declared(stage: str) -> list[str]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage].get("params", [])


def covered(key: str, keys: list[str]) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in keys)


def run_recorded(monkeypatch, stage: str) -> set[str]:
    import importlib

    from slmops.core.params import load_params

    module = importlib.import_module(f"stages.{stage}")
    seen: set[str] = set()
    monkeypatch.setattr(module, "load_params", lambda *a: Recorder(load_params(*a), "", seen))
    module.main()
    return seen


def tiny_project(root, edit):
    for name in ("task",):
        shutil.copytree(ROOT / "data" / name, root / "data" / name)
    small = root / "data/small"
    small.mkdir(parents=True)
    for src, dst, n in (
        ("seed/labelled.jsonl", "labelled.jsonl", 150),
        ("prompts/unlabelled.jsonl", "prompts.jsonl", 40),
        ("eval/eval.jsonl", "eval.jsonl", 12),
    ):
        (small / dst).write_text("".join((ROOT / "data" / src).read_text().splitlines(keepends=True)[:n]))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"] = {k: f"data/small/{k}.jsonl" for k in ("labelled", "prompts", "eval")}
    params["teacher"]["bootstrap"].update(vocab_size=400, augment_copies=1, restarts=0, config=TINY_TEACHER)
    params["teacher"]["bootstrap"]["train"].update(epochs=10, learning_rate=0.01)
    params["student"]["config"] = {**TINY_TEACHER, "hidden_size": 32, "intermediate_size": 64}
    params["distill"]["train"]["epochs"] = 1
    params["finetune"]["train"]["epochs"] = 1
    params["synthesize"]["generation"]["max_new_tokens"] = 64
    params["evaluate"]["generation"]["max_new_tokens"] = 64
    params["evaluate"]["speed"].update(warmup=1, repeats=2)
    params["quantize"]["parity"]["prompts"] = 2
    params["package"]["name"] = "tiny-guard"
    edit(params)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def reads(tmp_path_factory):
    """{stage: keys read} for the whole pipeline on the bootstrap default, then teacher, endpoint and synthesize
    with an endpoint teacher (the fault-free FakeTeacher on 127.0.0.1)."""
    monkeypatch = pytest.MonkeyPatch()
    in_process_children(monkeypatch)  # they read no params
    found = {}
    try:
        local = tmp_path_factory.mktemp("local")
        tiny_project(local, lambda p: None)
        monkeypatch.chdir(local)
        for stage in PIPELINE:
            found[stage] = run_recorded(monkeypatch, stage)
        rows = [json.loads(line) for line in (local / "data/small/eval.jsonl").read_text().splitlines()]
        teacher = FakeTeacher({r["message"]: r["label"] for r in rows})
        try:
            remote = tmp_path_factory.mktemp("remote")

            def endpoint(params):
                params["data"]["prompts"] = "data/small/eval.jsonl"  # labelled, so the FakeTeacher knows the answers
                params["teacher"].update(backend="openai", model="teacher-deployment")
                params["teacher"]["openai"].update(base_url=teacher.url, auth="none")
                params["synthesize"]["logprobs_top_k"] = 0
                params["synthesize"]["mode"] = "generate_and_label"
                params["synthesize"]["generate"].update(requests=2, prompts_per_request=2)
                params["synthesize"]["requests"]["cache"] = str(remote / "cache.sqlite")

            tiny_project(remote, endpoint)
            monkeypatch.chdir(remote)
            for stage in ("teacher", "endpoint", "synthesize"):
                found[f"{stage} (openai)"] = run_recorded(monkeypatch, stage)
        finally:
            teacher.close()
    finally:
        monkeypatch.undo()
    return found


@pytest.mark.parametrize("stage", [*PIPELINE, "teacher (openai)", "endpoint (openai)", "synthesize (openai)"])
def test_every_params_key_a_stage_reads_is_declared_for_it(reads, stage):
    keys = declared(stage.split(" ")[0])
    undeclared = sorted(k for k in reads[stage] if not covered(k, keys) and not covered(k, sorted(TRANSPORT_ONLY)))
    assert reads[stage], f"{stage}: no params read recorded"
    assert not undeclared, f"dvc.yaml stage {stage.split(' ')[0]} reads {undeclared} but declares {keys}"


def test_the_recorder_sees_branch_specific_keys(reads):
    """The two runs take the branches they were meant to (else the guard proves less than it says)."""
    assert "teacher.bootstrap.train" in reads["teacher"] or "teacher.bootstrap.train.epochs" in reads["teacher"]
    assert {"teacher.openai.base_url", "synthesize.generate.requests"} <= reads["synthesize (openai)"] | {
        k for k in reads["teacher (openai)"]
    }
    assert json.dumps(sorted(reads["package"]))  # every stage recorded something serialisable
