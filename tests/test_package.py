"""Package: the Foundry Local folder, its manifest, verify (hashes, onnxruntime-genai, Foundry Local), chat."""

import json
import subprocess
import sys

import pytest
from conftest import DEFAULT_PARAMS, ROOT, run_stage

from slmops.core.errors import InputError
from slmops.foundry import verify as verification
from slmops.foundry.package import inference_model, sha256, task_record, write_manifest
from slmops.foundry.verify import check_manifest
from slmops.onnx.export import copy_genai_files
from slmops.report.card import model_card

SLMOPS = [sys.executable, "-m", "slmops.cli"]


@pytest.fixture()
def package(tiny_onnx, task, tmp_path):
    folder = tmp_path / "tiny-slm"
    copy_genai_files(tiny_onnx["int4"], folder)
    (folder / "inference_model.json").write_text(json.dumps(inference_model("tiny-slm", folder, task.instruction)))
    (folder / "task.json").write_text(json.dumps(task_record(task)))
    write_manifest(folder, "tiny-slm", 3)
    return folder


def slmops(*args, stdin=None):
    return subprocess.run([*SLMOPS, *map(str, args)], capture_output=True, text=True, input=stdin, cwd=ROOT)


def test_prompt_template_is_rendered_from_the_chat_template(package):
    record = json.loads((package / "inference_model.json").read_text())
    assert record == {
        "Name": "tiny-slm",
        "PromptTemplate": {
            "system": "",  # the bootstrap template drops system messages
            "user": "<|user|>{Content}<|end|>",
            "assistant": "<|assistant|>{Content}<|end|>",
            "prompt": "<|user|>{Content}<|end|><|assistant|>",
        },
    }


def test_manifest_lists_every_file_with_its_hash(package):
    manifest = check_manifest(package)
    listed = {f["path"]: f for f in manifest["files"]}
    on_disk = {p.name for p in package.iterdir()} - {"manifest.json"}
    assert set(listed) == on_disk
    assert {
        "genai_config.json",
        "model.onnx",
        "tokenizer.json",
        "chat_template.jinja",
        "inference_model.json",
    } <= on_disk
    assert listed["model.onnx"]["sha256"] == sha256(package / "model.onnx")
    assert listed["tokenizer.json"]["bytes"] == (package / "tokenizer.json").stat().st_size
    assert manifest["name"] == "tiny-slm" and manifest["version"] == 3


@pytest.mark.parametrize(
    "tamper, expected",
    [
        (lambda d: (d / "tokenizer.json").write_text("{}"), "tokenizer.json: changed"),
        (lambda d: (d / "model.onnx.data").unlink(), "model.onnx.data: missing"),
        (lambda d: (d / "extra.bin").write_bytes(b"1"), "extra.bin: not in the manifest"),
    ],
)
def test_manifest_check_names_the_tampered_file(package, tamper, expected):
    tamper(package)
    with pytest.raises(InputError, match=expected):
        check_manifest(package)


def test_malformed_or_missing_manifest(package):
    (package / "manifest.json").write_text('{"name": "tiny-slm", "version": 0, "files": []}')
    with pytest.raises(InputError, match="invalid manifest"):
        check_manifest(package)
    (package / "manifest.json").unlink()
    with pytest.raises(InputError, match="no manifest.json"):
        check_manifest(package)


def test_verify_loads_the_package_in_genai_and_foundry_local(package):
    result = slmops("package", "verify", package, "--message", "where is my order ORD-12?", "--max-output-tokens", 16)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == f"{package}: 8 files match the manifest"  # no README.md in this fixture
    genai, foundry = lines[1].split(": ", 1), lines[2].split(": ", 1)
    assert genai[0] == "onnxruntime-genai" and foundry[0] in ("Foundry Local (STOP)", "Foundry Local (LENGTH)")
    assert genai[1] == foundry[1]  # the same greedy answer from both runtimes, system and user message


def test_verify_refuses_a_package_whose_runtimes_disagree(package, monkeypatch):
    # Foundry Local can run once per process, so its answer is replaced here; the real one is compared above.
    monkeypatch.setattr(verification, "foundry_local_chat", lambda *args: ("something else", "STOP", 3))
    messages = [{"role": "system", "content": "Extract."}, {"role": "user", "content": "ORD-12"}]
    with pytest.raises(InputError, match="Foundry Local answered 'something else' but onnxruntime-genai answered"):
        verification.verify(package, messages, 8)


def test_verify_refuses_an_output_budget_over_the_context_up_front(package):
    refused = slmops("package", "verify", package, "--max-output-tokens", 2048)
    assert refused.returncode == 2, refused.stderr[-3000:]
    message = refused.stderr.strip().splitlines()[-1]
    prompt = int(message.split("verification prompt of ")[1].split(" ")[0])
    assert message == (
        f"error: {package}: max_output_tokens 2048 does not fit the package's context of 256 tokens with the "
        f"verification prompt of {prompt} tokens (at most {256 - prompt})"
    )
    assert "Traceback" not in refused.stderr
    most = slmops("package", "verify", package, "--max-output-tokens", 256 - prompt)  # Foundry Local takes it
    assert most.returncode == 0, most.stderr[-3000:]
    assert "Foundry Local (LENGTH): " in most.stdout


def test_verify_refuses_a_message_that_alone_fills_the_context(package):
    refused = slmops("package", "verify", package, "--message", "my blender is broken " * 200)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "the verification prompt alone is" in refused.stderr and "the package's context is 256" in refused.stderr


def test_verify_refuses_a_tampered_package(package):
    data = bytearray((package / "model.onnx.data").read_bytes())
    data[100] ^= 0xFF
    (package / "model.onnx.data").write_bytes(bytes(data))
    result = slmops("package", "verify", package)
    assert result.returncode == 2
    assert "model.onnx.data: changed" in result.stderr


def test_chat_one_shot_and_interactive(package):
    one_shot = slmops("chat", package, "hello there", "--max-new-tokens", 8)
    assert one_shot.returncode == 0, one_shot.stderr[-2000:]
    assert one_shot.stdout.endswith("\n")
    interactive = slmops("chat", package, "--max-new-tokens", 8, stdin="hello\nhow are you\n\n")
    assert interactive.returncode == 0, interactive.stderr[-2000:]
    assert interactive.stdout.count("> ") == 3  # two questions, then the empty line ends it
    assert "type a message" in interactive.stderr


def test_chat_with_a_message_longer_than_the_context(package):
    result = slmops("chat", package, "ORD-12 " * 400)
    assert result.returncode == 2 and "the model's context is 256" in result.stderr


def test_chat_refuses_a_budget_that_cannot_fit_the_context(package):
    result = slmops("chat", package, "hi", "--max-new-tokens", 256)
    assert result.returncode == 2 and result.stdout == ""
    assert "--max-new-tokens 256 cannot fit the model's context of 256 tokens with a message" in result.stderr


def test_chat_on_a_folder_without_a_model(tmp_path):
    result = slmops("chat", tmp_path, "hi")
    assert result.returncode == 2 and "no genai_config.json" in result.stderr


def test_model_card_names_what_made_the_model(task):
    params = DEFAULT_PARAMS
    row = {
        "runtime": "r",
        "parameters": 1000,
        "size_mb": 1.0,
        "weights_mb": 0.5,
        "exact_match": 0.9,
        "schema_valid": 1.0,
        "json_valid": 1.0,
        "latency_p50_ms": 1.0,
        "latency_p90_ms": 1.0,
        "latency_p95_ms": 1.0,
        "ttft_p50_ms": 1.0,
        "decode_tokens_per_s": 10.0,
        "peak_rss_mb": 50.0,
        "n": 300,
    }
    metrics = {
        "variants": {"teacher": {**row, "parameters": 5000}, "quantized": row},
        "accuracy_kept": 0.97,
        "latency_saved": 0.9,
        "memory_saved": 0.8,
    }
    card = model_card(
        "tiny-slm",
        2,
        task,
        params,
        metrics,
        {"backend": "bootstrap", "weights_sha256": "ab" * 32},
        {"accepted": 3991, "prompts": 4000, "rejected": 9, "rejected_by": {"schema": 7, "content_filter": 2}},
        "abc1234",
    )
    assert card.startswith("# tiny-slm (version 2)")
    assert "git revision `abc1234`" in card and "1,000-parameter student" in card and "5,000-parameter teacher" in card
    assert task.instruction.strip() in card
    assert (
        "3,991 answers accepted of 4,000 prompts (9 rejected by the answer parser: 7 schema, 2 content_filter)" in card
    )
    assert "ab" * 32 in card
    assert "finetune:\n  method: lora" in card and "| quantized | r | 1,000 |" in card


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("name: support-triage-slm", "name: Support Triage!", "package.name"),
        ("max_output_tokens: 64", "max_output_tokens: 0", "package.verify.max_output_tokens"),
        ("version: 1", "version: one", "package.version"),
    ],
)
def test_package_stage_rejects_bad_params(project, old, new, expected):
    params = (project / "params.yaml").read_text()
    assert old in params
    (project / "params.yaml").write_text(params.replace(old, new))
    result = run_stage(project, "package")
    assert result.returncode == 2 and expected in result.stderr
    assert not (project / "models/foundry").exists()


def test_package_stage_without_reports_says_what_to_run(project):
    result = run_stage(project, "package")
    assert result.returncode == 2 and "reports/metrics.json: missing; run `dvc repro`" in result.stderr
