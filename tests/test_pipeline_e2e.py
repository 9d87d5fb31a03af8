"""End to end: the DVC pipeline on a small override of the default, in a temporary git repository."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slmops.modeling import hash_weights
from conftest import ROOT

pytestmark = pytest.mark.e2e
TINY = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
        "intermediate_size": 96, "max_position_embeddings": 256, "tie_word_embeddings": True}


def run(cmd, cwd, check=True):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(cwd)}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def small_params(params):
    params["data"] = {"labelled": "data/small/labelled.jsonl", "prompts": "data/small/prompts.jsonl", "eval": "data/small/eval.jsonl"}
    boot = params["teacher"]["bootstrap"]
    boot.update(vocab_size=400, augment_copies=1, config=TINY)
    boot["train"].update(epochs=10, batch_size=16, learning_rate=0.01)
    params["student"]["config"] = {**TINY, "hidden_size": 32, "intermediate_size": 64}
    params["distill"]["train"].update(epochs=1)
    params["finetune"]["train"].update(epochs=1)
    params["finetune"]["lora"]["r"] = 4
    params["synthesize"]["generation"]["max_new_tokens"] = 120  # a small vocabulary spells answers in more tokens
    params["evaluate"]["generation"]["max_new_tokens"] = 120
    return params


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The project's files (as git sees them) in a new git repository, with a small params override."""
    repo = tmp_path_factory.mktemp("pipeline")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    small = repo / "data/small"
    small.mkdir()
    for src, dst, n in (("seed/labelled.jsonl", "labelled.jsonl", 150), ("prompts/unlabelled.jsonl", "prompts.jsonl", 150),
                        ("eval/eval.jsonl", "eval.jsonl", 40)):
        lines = (ROOT / "data" / src).read_text().splitlines(keepends=True)[:n]
        (small / dst).write_text("".join(lines))
    params = small_params(yaml.safe_load((repo / "params.yaml").read_text()))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "small pipeline"]):
        run(cmd, repo)
    run(["dvc", "repro"], repo)
    return repo


def read_json(path):
    return json.loads(Path(path).read_text())


def without_timing(metrics):
    return {k: v for k, v in metrics.items() if k != "timing"}


def test_pipeline_writes_every_artifact(repo):
    teacher = read_json(repo / "models/teacher/teacher.json")
    assert teacher["backend"] == "bootstrap" and teacher["weights_sha256"] == hash_weights(repo / "models/teacher")
    assert (repo / "models/teacher/tokenizer.json").is_file()
    synth = read_json(repo / "reports/synthesize.json")
    assert synth["prompts"] == 150 and synth["accepted"] + synth["rejected"] == 150
    accepted = (repo / "data/synthetic/accepted.jsonl").read_text().splitlines()
    assert len(accepted) == synth["accepted"]
    for name in ("tokens.npy", "topk_ids.npy", "topk_logprobs.npy", "rejected.jsonl", "meta.json"):
        assert (repo / "data/synthetic" / name).is_file(), name
    for folder in ("models/student", "models/finetuned"):
        assert (repo / folder / "model.safetensors").is_file() and (repo / folder / "tokenizer.json").is_file()
    assert (repo / "models/adapter/adapter_config.json").is_file()
    assert read_json(repo / "models/adapter/finetune.json")["method"] == "lora"
    metrics = read_json(repo / "reports/metrics.json")
    assert set(metrics) == {"teacher", "student", "finetuned", "retention"}
    assert metrics["finetuned"]["n"] == 40
    assert metrics["retention"]["parameter_ratio"] == metrics["finetuned"]["parameters"] / metrics["teacher"]["parameters"]
    for stage in ("teacher", "distill", "finetune"):
        assert (repo / f"reports/train/{stage}/plots/metrics/train/loss.tsv").is_file()
    assert len((repo / "reports/predictions/finetuned.jsonl").read_text().splitlines()) == 40


def test_second_repro_does_nothing(repo):
    before = (repo / "models/teacher/model.safetensors").stat().st_mtime_ns
    result = run(["dvc", "repro"], repo)
    assert "Data and pipelines are up to date" in result.stdout
    assert (repo / "models/teacher/model.safetensors").stat().st_mtime_ns == before


def test_same_seed_same_metrics(repo):
    first = {name: read_json(repo / f"reports/{name}.json") for name in ("teacher", "synthesize", "distill", "finetune", "metrics")}
    run(["dvc", "repro", "--force"], repo)
    second = {name: read_json(repo / f"reports/{name}.json") for name in first}
    assert without_timing(second.pop("synthesize")) == without_timing(first.pop("synthesize"))
    assert second == first


def test_killed_stage_leaves_the_previous_output_whole(repo):
    before = hash_weights(repo / "models/teacher")
    listing = sorted(p.name for p in (repo / "models/teacher").iterdir())
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["teacher"]["bootstrap"]["train"]["epochs"] = 50  # long enough to be killed mid-training
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(repo)}
    stage = subprocess.Popen([sys.executable, "-m", "stages.teacher"], cwd=repo, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((repo / "reports/train").glob(".teacher.tmp-*/metrics.json")) and time.time() < deadline:
        time.sleep(0.2)  # dvclive writes metrics.json after the first logged steps: training is under way
    stage.send_signal(signal.SIGKILL)
    stage.wait()
    run(["git", "checkout", "params.yaml"], repo)
    assert sorted(p.name for p in (repo / "models/teacher").iterdir()) == listing
    assert hash_weights(repo / "models/teacher") == before
    assert (repo / "reports/train/teacher/plots/metrics/train/loss.tsv").is_file()
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], repo).stdout


def test_changing_lora_rank_reruns_finetune_and_what_follows_only(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["finetune"]["lora"]["r"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(["dvc", "status", "--json"], repo).stdout
    changed = json.loads(status)
    assert set(changed) == {"finetune"}, changed
    assert {"changed params": {"params.yaml": {"finetune.lora.r": "modified"}}} in changed["finetune"] or \
        any("params.yaml" in json.dumps(entry) for entry in changed["finetune"])
    mtimes = {p: (repo / p / "model.safetensors").stat().st_mtime_ns for p in ("models/teacher", "models/student", "models/finetuned")}
    result = run(["dvc", "repro"], repo)
    assert "Running stage 'finetune'" in result.stdout and "Running stage 'evaluate'" in result.stdout
    for stage in ("teacher", "synthesize", "distill"):
        assert f"Running stage '{stage}'" not in result.stdout
    assert (repo / "models/teacher/model.safetensors").stat().st_mtime_ns == mtimes["models/teacher"]
    assert (repo / "models/student/model.safetensors").stat().st_mtime_ns == mtimes["models/student"]
    assert (repo / "models/finetuned/model.safetensors").stat().st_mtime_ns != mtimes["models/finetuned"]
