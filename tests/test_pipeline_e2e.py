"""End to end: the DVC pipeline on a small override of the default, in a temporary git repository."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_TEACHER

from slmops.models.hf import hash_weights

pytestmark = pytest.mark.e2e


def run(cmd, cwd, check=True, **extra_env):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(cwd),
        **extra_env,
    }
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def small_params(params):
    params["data"] = {
        "labelled": "data/small/labelled.jsonl",
        "prompts": "data/small/prompts.jsonl",
        "eval": "data/small/eval.jsonl",
    }
    boot = params["teacher"]["bootstrap"]
    boot.update(vocab_size=400, augment_copies=1, restarts=0, config=TINY_TEACHER)
    boot["train"].update(epochs=10, batch_size=16, learning_rate=0.01)
    params["student"]["config"] = {**TINY_TEACHER, "hidden_size": 32, "intermediate_size": 64}
    params["distill"]["train"].update(epochs=1)
    params["finetune"]["train"].update(epochs=1)
    params["finetune"]["lora"]["r"] = 4
    params["synthesize"]["generation"]["max_new_tokens"] = 64  # answers: at most 48 tokens with this vocabulary
    params["evaluate"]["generation"]["max_new_tokens"] = 64
    params["evaluate"]["speed"].update(warmup=1, repeats=5)
    params["quantize"]["parity"]["prompts"] = 4
    params["package"]["name"] = "tiny-triage"
    return params


def make_small(project: Path) -> None:
    """The first rows of the default's data in `project`/data/small, and params.yaml switched to them and to
    small_params."""
    small = project / "data/small"
    small.mkdir()
    for src, dst, n in (
        ("seed/labelled.jsonl", "labelled.jsonl", 150),
        ("prompts/unlabelled.jsonl", "prompts.jsonl", 150),
        ("eval/eval.jsonl", "eval.jsonl", 40),
    ):
        lines = (ROOT / "data" / src).read_text().splitlines(keepends=True)[:n]
        (small / dst).write_text("".join(lines))
    params = small_params(yaml.safe_load((project / "params.yaml").read_text()))
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def small_project(dest: Path) -> Path:
    """The project's files as git sees them (the working tree's, less reports/: a project that has never run) in
    `dest`, with make_small's params; no .git."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file() and not name.startswith("reports/"):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    make_small(dest)
    return dest


def new_pipeline(dest: Path) -> Path:
    """small_project in `dest` made a git repository and run from nothing with `dvc repro`."""
    repo = small_project(dest)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "small pipeline"]):
        run(cmd, repo)
    run(["dvc", "repro"], repo)
    return repo


@pytest.fixture(scope="module")
def repo(pipeline_run, tmp_path_factory):
    """A copy of the run from nothing (conftest's pipeline_run, shared by other modules) that this module's tests
    change, each leaving it as it found it unless it says otherwise."""
    return Path(shutil.copytree(pipeline_run, tmp_path_factory.mktemp("repo") / "pipeline", symlinks=True))


def stages_ran(result) -> set[str]:
    """The stages a `dvc repro` ran, less endpoint, which DVC runs every time (always_changed)."""
    return set(re.findall(r"Running stage '([^']+)'", result.stdout)) - {"endpoint"}


def changed_stages(repo) -> dict:
    """`dvc status --json` less endpoint, which is always changed."""
    status = json.loads(run(["dvc", "status", "--json"], repo).stdout)
    assert status.pop("endpoint") == ["always changed"]
    return status


def read_json(path):
    return json.loads(Path(path).read_text())


def without_timing(metrics):
    return {k: v for k, v in metrics.items() if k not in ("timing", "export_seconds")}


SPEED = (
    "latency",
    "ttft",
    "decode",
    "peak_rss",
    "runtime_rss",
    "model_rss",
    "requests",
    "memory_saved",
    "model_memory",
)


def accuracy_only(metrics):
    """Metrics without the wall-clock and memory figures, which vary from run to run."""
    if isinstance(metrics, dict):
        return {k: accuracy_only(v) for k, v in metrics.items() if not k.startswith(SPEED)}
    return metrics


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
    assert read_json(repo / "models/onnx/quantize.json")["precision"] == "int4"
    metrics = read_json(repo / "reports/metrics.json")
    variants = metrics["variants"]
    assert set(variants) == {"teacher", "student", "finetuned", "quantized"}
    assert all(v["n"] == 40 and v["requests"] == 5 for v in variants.values())
    assert metrics["exact_match"] == variants["quantized"]["exact_match"]
    assert metrics["parameter_ratio"] == variants["finetuned"]["parameters"] / variants["teacher"]["parameters"]
    assert metrics["size_saved_by_quantization"] > 0.5
    for stage in ("teacher", "distill", "finetune"):
        assert (repo / f"reports/train/{stage}/plots/metrics/train/loss.tsv").is_file()
    for name in variants:
        assert len((repo / f"reports/predictions/{name}.jsonl").read_text().splitlines()) == 40
        assert len(read_json(repo / f"reports/plots/latency/{name}.json")) == 5
    assert "## Claims against this run" in (repo / "reports/report.md").read_text()
    package = repo / "models/foundry/tiny-triage"
    assert read_json(package / "inference_model.json")["Name"] == "tiny-triage"
    assert {f["path"] for f in read_json(package / "manifest.json")["files"]} >= {
        "README.md",
        "genai_config.json",
        "model.onnx",
        "tokenizer.json",
        "chat_template.jinja",
        "task.json",
    }
    assert read_json(repo / "reports/package.json")["verified"] is True


def test_second_repro_does_nothing(repo):
    before = (repo / "models/teacher/model.safetensors").stat().st_mtime_ns
    result = run(["dvc", "repro"], repo)
    assert stages_ran(result) == set() and "Running stage 'endpoint'" in result.stdout
    assert "Stage 'synthesize' didn't change, skipping" in result.stdout  # the endpoint's record is the same
    assert (repo / "models/teacher/model.safetensors").stat().st_mtime_ns == before


def model_file_hashes(repo):
    manifest = read_json(repo / "models/foundry/tiny-triage/manifest.json")
    return {f["path"]: f["sha256"] for f in manifest["files"] if f["path"] != "README.md"}


def test_killed_stage_leaves_the_previous_output_whole(repo):
    before = hash_weights(repo / "models/teacher")
    listing = sorted(p.name for p in (repo / "models/teacher").iterdir())
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["teacher"]["bootstrap"]["train"]["epochs"] = 50  # long enough to be killed mid-training
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(repo)}
    stage = subprocess.Popen(
        [sys.executable, "-m", "stages.teacher"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    live = []
    while not live and stage.poll() is None and time.time() < deadline:
        time.sleep(0.2)  # dvclive writes metrics.json after the first logged steps: training is under way
        live = list((repo / "reports/train").glob(".teacher.tmp-*/metrics.json"))
    assert live, "training never started writing its live metrics"
    assert stage.poll() is None, "the stage ended before it could be killed mid-write"
    stage.send_signal(signal.SIGKILL)
    stage.wait()
    assert live[0].parent.is_dir()  # killed mid-write: its temporary folder is left, the real one untouched
    run(["git", "checkout", "params.yaml"], repo)
    assert sorted(p.name for p in (repo / "models/teacher").iterdir()) == listing
    assert hash_weights(repo / "models/teacher") == before
    assert (repo / "reports/train/teacher/plots/metrics/train/loss.tsv").is_file()
    assert changed_stages(repo) == {}  # nothing to rerun: what `dvc repro` would find (its no-op is tested above)


def test_changing_lora_rank_or_precision_reruns_what_follows_only(repo):
    """Each change alone marks only its stages changed (dvc status); then one `dvc repro` with both (one rerun
    of quantize, evaluate and package instead of two) reruns finetune and what follows, and nothing before."""
    original = set_params(repo, lambda p: p["finetune"]["lora"].update(r=2))
    changed = changed_stages(repo)
    assert set(changed) == {"finetune", "package"}, changed  # the package's model card quotes the params
    assert changed["finetune"] == [{"changed deps": {"params.yaml": {"finetune": "modified"}}}]
    (repo / "params.yaml").write_text(original)
    set_params(repo, lambda p: p["quantize"].update(precision="fp32"))
    assert set(changed_stages(repo)) == {"quantize", "evaluate", "package"}

    set_params(repo, lambda p: p["finetune"]["lora"].update(r=2))
    mtimes = {
        p: (repo / p / "model.safetensors").stat().st_mtime_ns
        for p in ("models/teacher", "models/student", "models/finetuned")
    }
    result = run(["dvc", "repro"], repo)
    assert stages_ran(result) == {"finetune", "quantize", "evaluate", "package"}
    assert (repo / "models/teacher/model.safetensors").stat().st_mtime_ns == mtimes["models/teacher"]
    assert (repo / "models/student/model.safetensors").stat().st_mtime_ns == mtimes["models/student"]
    assert (repo / "models/finetuned/model.safetensors").stat().st_mtime_ns != mtimes["models/finetuned"]
    assert read_json(repo / "models/adapter/adapter_config.json")["r"] == 2
    assert read_json(repo / "reports/quantize.json")["parity"]["max_abs_logit_diff"] < 1e-3
    assert read_json(repo / "reports/metrics.json")["variants"]["quantized"]["runtime"] == "onnxruntime-genai fp32"
    assert changed_stages(repo) == {}


def test_push_to_azure_blob_then_a_fresh_clone_pulls_without_rerunning(repo, azurite, tmp_path):
    run(["dvc", "remote", "add", "-d", "blob", "azure://dvc/pipeline"], repo)
    run(["dvc", "remote", "modify", "--local", "blob", "connection_string", azurite], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "pipeline outputs and the remote"], repo)
    pushed = run(["dvc", "push"], repo)
    assert "pushed" in pushed.stdout
    assert azurite not in (repo / ".dvc/config").read_text()  # the credential stays in config.local, out of git

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run(["dvc", "remote", "modify", "--local", "blob", "connection_string", azurite], clone)
    run(["dvc", "pull"], clone)
    assert changed_stages(clone) == {}
    assert stages_ran(run(["dvc", "repro"], clone)) == set()
    assert hash_weights(clone / "models/teacher") == hash_weights(repo / "models/teacher")
    assert (clone / "models/foundry/tiny-triage/manifest.json").read_bytes() == (
        repo / "models/foundry/tiny-triage/manifest.json"
    ).read_bytes()


def set_precision(repo, precision):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["quantize"]["precision"] = precision
    params["gates"] = {"weights_mb": {"max_regression_pct": 0}, "schema_valid": {"max_regression": 1.0}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro"], repo)


def report(repo, *args):
    return run([sys.executable, "-m", "slmops.cli", "report", *args], repo, check=False)


def test_report_on_real_pipeline_commits(repo):
    """A committed fp32 run against the first commit (no outputs yet: every metric is new); then an int4 run
    in the workspace against the fp32 commit: the real change, and a weights gate that holds."""
    set_precision(repo, "fp32")
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "fp32 run", "--allow-empty"], repo)
    root = run(["git", "rev-list", "--max-parents=0", "HEAD"], repo).stdout.strip()
    first = report(repo, "--base", root, "--head", "HEAD", "--out", "pr/first.md")
    assert first.returncode == 0, first.stderr
    assert "| exact match | — |" in (repo / "pr/first.md").read_text()

    base = read_json(repo / "reports/metrics.json")
    set_precision(repo, "int4")
    head = read_json(repo / "reports/metrics.json")
    result = report(repo, "--base", "HEAD", "--out", "pr/report.md")
    markdown = (repo / "pr/report.md").read_text()
    assert result.returncode == 0, result.stderr  # int4 weighs less than fp32: the weights gate holds
    assert '| `quantize.precision` | `"fp32"` | `"int4"` |' in markdown
    change = head["weights_mb"] - base["weights_mb"]
    assert change < 0
    assert (
        f"| weights (MB) | {base['weights_mb']:.3f} | {head['weights_mb']:.3f} | -{abs(change):.3f} | "
        f"{change / base['weights_mb']:+.1%} | ▼ ✅ |"
    ) in markdown
    assert "| weights_mb | 0% worse |" in markdown
    assert (repo / "pr/plots/latency.png").is_file()


def test_base_package_at_the_base_revision_timed_beside_the_head_package(repo, tmp_path):
    """What CI does on a pull request: the base revision's package (the fp32 commit above) from DVC with
    scripts/base_package.sh, timed alternately with the workspace's int4 package by `slmops bench compare`, and
    the report gating speed on those ratios."""
    fetched = run(["bash", "scripts/base_package.sh", "HEAD", tmp_path / "base"], repo, SLMOPS_REBUILD_BASE="0")
    base = Path(fetched.stdout.strip())
    assert base == tmp_path / "base/tiny-triage" and (base / "genai_config.json").is_file()
    head = repo / "models/foundry/tiny-triage"

    def weights(folder):
        return sum(f.stat().st_size for f in folder.glob("model.onnx*"))

    assert weights(base) > 2 * weights(head)  # the fp32 package of the base commit, not the workspace's int4 one
    out = tmp_path / "speed.json"
    compared = run(
        [sys.executable, "-m", "slmops.cli", "bench", "compare", base, head, "--rounds", "2", "--requests", "4"]
        + ["--out", out],
        repo,
    )
    speed = json.loads(out.read_text())
    assert speed["order"] == ["base", "head", "head", "base"] and speed["rounds"] == 2 and speed["requests"] == 4
    for side in ("base", "head"):
        figures = speed[side]
        assert len(figures["latencies_ms"]) == 8  # 4 timed requests x 2 rounds, every one kept
        assert 0 < figures["latency_p50_ms"] <= figures["latency_p95_ms"]
        assert figures["decode_tokens_per_s"] > 0 and figures["peak_rss_mb"] > 0
    assert speed["hardware"]["cores"] == os.cpu_count() and speed["hardware"]["runtimes"]["onnxruntime-genai"]
    assert "latency_p95_ms: base" in compared.stdout and "head/base" in compared.stdout

    original = (repo / "params.yaml").read_text()
    try:
        params = yaml.safe_load(original)
        params["gates"]["latency_p95_ms"] = {"max_regression_pct": 1000}
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        result = report(repo, "--base", "HEAD", "--speed", out, "--out", "pr/speed.md")
    finally:
        (repo / "params.yaml").write_text(original)
    assert result.returncode in (0, 1), result.stderr  # accuracy gates may fail on the tiny models; speed may not
    markdown = (repo / "pr/speed.md").read_text()
    assert "### Speed, timed side by side" in markdown and "order base → head → head → base" in markdown
    b, h = speed["base"]["latency_p95_ms"], speed["head"]["latency_p95_ms"]
    assert f"| latency p95 (ms) | {b:.2f} | {h:.2f} | ×{h / b:.2f} |" in markdown
    gate = next(line for line in markdown.splitlines() if line.startswith("| latency_p95_ms |"))
    assert "not gated" not in gate and gate.endswith("| ✅ pass |")  # gated on the ratio, well within 1000%
    row = next(line for line in markdown.splitlines() if line.startswith("| latency p95 (ms) |"))
    assert not row.endswith("context only |")  # timed side by side: compared, gated
    assert next(line for line in markdown.splitlines() if line.startswith("| latency saved")).endswith("context only |")
    assert "speed timed side by side in this run" in markdown.splitlines()[1]
    assert "timed side by side (ms; first line: base, second: head)" in markdown  # the latency chart uses this run


# The tests below leave the shared repository as they found it: up to date, with the same outputs.


def set_params(repo, change) -> str:
    """Apply `change` to the repository's params; returns the previous text of params.yaml, to restore."""
    text = (repo / "params.yaml").read_text()
    params = yaml.safe_load(text)
    change(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return text


def kept_outputs(repo) -> dict[str, bytes]:
    """The outputs kept in git (cache: false): reports, predictions, plots, training curves."""
    return {
        str(p.relative_to(repo)): p.read_bytes()
        for p in sorted((repo / "reports").rglob("*"))
        if p.is_file() and "/pr/" not in str(p)
    }


def test_a_change_to_the_logprob_reader_reruns_distill(repo):
    reader = repo / "slmops/train/logprobs.py"
    original = reader.read_text()
    assert changed_stages(repo) == {}  # up to date, as every test leaves it
    try:
        reader.write_text(original + "# a change to how the teacher's log-probs are read\n")
        changed = changed_stages(repo)
    finally:
        reader.write_text(original)
    assert "distill" in changed and "teacher" not in changed, changed
    assert {"changed deps": {"slmops/train/logprobs.py": "modified"}} in changed["distill"]
    assert changed_stages(repo) == {}


def test_a_failed_package_loses_no_previous_output(repo):
    assert changed_stages(repo) == {}  # up to date, as every test leaves it
    kept, lock = kept_outputs(repo), (repo / "dvc.lock").read_bytes()
    manifest = (repo / "models/foundry/tiny-triage/manifest.json").read_bytes()
    # 255 fits the context (256) alone, so params pass, but not beside the prompt: package's verify refuses it.
    original = set_params(repo, lambda p: p["package"]["verify"].update(max_output_tokens=255))
    try:
        failed = run(["dvc", "repro"], repo, check=False)
    finally:
        (repo / "params.yaml").write_text(original)
    assert failed.returncode != 0 and "Running stage 'package'" in failed.stdout, failed.stdout[-2000:]
    assert "does not fit the package's context of 256 tokens" in failed.stderr, failed.stderr[-2000:]
    assert kept_outputs(repo) == kept  # reports/package.json, metrics.json, report.md, predictions, plots
    assert (repo / "dvc.lock").read_bytes() == lock
    run(["dvc", "checkout"], repo)  # the cached outputs DVC removed before running the stage
    assert (repo / "models/foundry/tiny-triage/manifest.json").read_bytes() == manifest
    assert changed_stages(repo) == {}


def test_an_interrupted_evaluate_loses_no_previous_output(repo, tmp_path):
    """evaluate is killed once it scores its second variant; with a new limit its outputs would all differ."""
    assert changed_stages(repo) == {}  # up to date, as every test leaves it
    kept, lock = kept_outputs(repo), (repo / "dvc.lock").read_bytes()
    original = set_params(repo, lambda p: p["evaluate"].update(limit=20))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(repo)}
    log = tmp_path / "repro.log"
    with log.open("w") as out:
        dvc = subprocess.Popen(
            ["dvc", "repro"], cwd=repo, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.time() + 300
        while dvc.poll() is None and time.time() < deadline and "evaluating student" not in log.read_text():
            time.sleep(0.2)
        assert dvc.poll() is None, f"evaluate ended before it could be interrupted:\n{log.read_text()[-2000:]}"
        os.killpg(dvc.pid, signal.SIGKILL)  # dvc and the stage it runs
        dvc.wait()
        now = kept_outputs(repo)
    finally:
        (repo / "params.yaml").write_text(original)
        for name, data in kept.items():  # the shared repository as it was, whatever this test finds
            (repo / name).write_bytes(data)
        for stale in sorted((repo / "reports").rglob(".*.tmp-*"), reverse=True):  # a killed stage's temporaries
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
    assert (repo / "dvc.lock").read_bytes() == lock
    changed = sorted(name for name in kept if now.get(name) != kept[name])
    assert changed == [], f"an interrupted evaluate replaced {changed}"
    assert changed_stages(repo) == {}
