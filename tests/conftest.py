import contextlib
import importlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

from slmops.core.params import parse_params
from slmops.core.task import answer_key_pieces, load_task, render_answer
from slmops.models.hf import build_llama, train_chat_tokenizer

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PARAMS = parse_params((ROOT / "params.yaml").read_text(), check_paths=False)


def default(section: str, **changes):
    """A section of the shipped params.yaml (dotted path, e.g. "quantize" or "distill.kd") with `changes`,
    validated like params.yaml."""
    value = DEFAULT_PARAMS
    for part in section.split("."):
        value = getattr(value, part)
    return type(value).model_validate({**value.model_dump(), **changes})


# A small teacher shape for whole-pipeline tests: trains in seconds, answers well enough to be labelled.
TINY_TEACHER = {
    "hidden_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "intermediate_size": 96,
    "max_position_embeddings": 256,
    "tie_word_embeddings": True,
}
TINY_LLAMA = default(
    "student.config",
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)


@pytest.fixture(scope="session")
def task():
    return load_task(ROOT / "data/task")


@pytest.fixture(scope="session")
def labelled():
    return [json.loads(line) for line in (ROOT / "data/seed/labelled.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def tokenizer(labelled):
    rows = labelled[:200]
    texts = [r["message"] for r in rows] + [render_answer(r["label"]) for r in rows]
    return train_chat_tokenizer(texts, 400, answer_key_pieces([r["label"] for r in rows]))


@pytest.fixture()
def tiny_model(tokenizer):
    torch.manual_seed(0)
    return build_llama(TINY_LLAMA, tokenizer)


def run_stage(cwd, stage, **env):
    """What `python -m stages.<stage>` in cwd does, with the environment variables `env` set: a CompletedProcess
    (returncode, stdout, stderr).

    In this process (a child would spend seconds importing torch again), except package: Foundry Local's
    manager is one per process, so package runs in a child with the project's code importable and a minimal
    PATH. In process, stdout and stderr are captured, the exit code is SystemExit's (2 for an InputError), and
    an uncaught exception is exit code 1 with its traceback on stderr, as the interpreter does."""
    command = [sys.executable, "-m", f"stages.{stage}"]
    if stage == "package":
        env = {"PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", **env}
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    main = importlib.import_module(f"stages.{stage}").main
    out, err, code = io.StringIO(), io.StringIO(), 0
    previous_dir, previous_env = os.getcwd(), {name: os.environ.get(name) for name in env}
    os.chdir(cwd)
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
                if isinstance(exit_.code, str):
                    print(exit_.code, file=sys.stderr)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(previous_dir)
        for name, value in previous_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        logging.getLogger().handlers.clear()  # configure_logging pointed them at the captured stderr
    return subprocess.CompletedProcess(command, code, out.getvalue(), err.getvalue())


def in_process_measure(*args, **kwargs) -> dict:
    """slmops.eval.benchmark.measure with its child process's code (_child) run in this process on the same JSON
    job (a child would spend seconds importing torch again, four times per evaluate)."""
    from slmops.eval import benchmark

    def run_child(command, input, **_):
        out = io.StringIO()
        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
            patch.setattr(sys, "stdin", io.StringIO(input))
            benchmark._child()
        return subprocess.CompletedProcess(command, 0, out.getvalue(), "")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(benchmark.subprocess, "run", run_child)
        return benchmark.measure(*args, **kwargs)


def in_process_export(command: list[str], what: str, cwd: Path, env: dict | None = None) -> None:
    """slmops.onnx.export._run for its two commands, `python -m onnxruntime_genai.models.builder ...` and
    `python -m olive run ...`, run in this process as their `-m` would run them (a child would spend seconds
    importing torch again); a failure raises as _run's does."""
    import runpy

    assert command[:2] == [sys.executable, "-m"], command
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", [command[2], *command[3:]])
        patch.chdir(cwd)
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        try:
            runpy.run_module(command[2], run_name="__main__", alter_sys=True)
        except SystemExit as exit_:
            if exit_.code not in (None, 0):
                raise RuntimeError(f"{what} failed (exit {exit_.code})") from None


def in_process_children(patch: pytest.MonkeyPatch) -> None:
    """evaluate's speed children and quantize's builder and Olive commands run in this process, for tests that
    run stages to check something else than those children (tests/test_evaluate.py, tests/test_export.py and the
    end-to-end tests run them as the pipeline does)."""
    from slmops.eval import evaluate
    from slmops.onnx import export

    patch.setattr(evaluate, "measure", in_process_measure)
    patch.setattr(export, "_run", in_process_export)


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """A copy of the project's params, schema and data in a temporary working directory."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "data", tmp_path / "data", ignore=shutil.ignore_patterns("synthetic"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_hf_dir(tokenizer, tmp_path_factory):
    """A tiny Llama (random weights) and its tokenizer saved as a Hugging Face folder."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-hf")
    build_llama(TINY_LLAMA, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_onnx(tiny_hf_dir, tmp_path_factory):
    """The tiny model exported by the onnxruntime-genai builder: {precision: folder} for fp32 and int4."""
    from slmops.onnx.export import run_builder

    root = tmp_path_factory.mktemp("tiny-onnx")
    folders = {}
    for precision in ("fp32", "int4"):
        folders[precision] = root / precision
        run_builder(tiny_hf_dir, folders[precision], default("quantize", precision=precision), root)
    return folders


def pytest_collection_modifyitems(items):
    """Every test that needs the builder's export (tiny_onnx, two exports in child processes) is marked slow:
    `make test-fast` (-m "not e2e and not slow") leaves it out.

    Then the modules are ordered longest first (those with an e2e test, then those with a slow one, then the rest;
    each module's own order kept): `make test` hands whole modules to pytest-xdist's workers (--dist loadscope), and
    starting the long ones first keeps one worker from ending alone on a long module."""
    for item in items:
        if "tiny_onnx" in item.fixturenames:
            item.add_marker(pytest.mark.slow)
    rank = {}
    for item in items:
        tier = 0 if item.get_closest_marker("e2e") else 1 if item.get_closest_marker("slow") else 2
        rank[item.module.__name__] = min(tier, rank.get(item.module.__name__, tier))
    items.sort(key=lambda item: rank[item.module.__name__])  # stable: each module's order is kept


def shared(tmp_path_factory, worker_id: str, name: str, produce):
    """produce() run once for the whole test run, its JSON result given to every pytest-xdist worker: the first
    worker to ask runs it under a file lock in the run's common temporary folder, the others wait and read its
    result (pytest-xdist's documented recipe for a session fixture computed once). Without xdist, produce()."""
    if worker_id == "master":
        return produce()
    from filelock import FileLock

    record = tmp_path_factory.getbasetemp().parent / f"{name}.json"
    with FileLock(f"{record}.lock"):
        if not record.is_file():
            record.write_text(json.dumps(produce()))
        return json.loads(record.read_text())


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory, worker_id) -> Path:
    """The end-to-end module's small pipeline run from nothing in a new git repository (test_pipeline_e2e's
    new_pipeline), once for the whole test run. Read-only: tests that change it work on a copy."""

    def produce() -> str:
        from test_pipeline_e2e import new_pipeline

        return str(new_pipeline(tmp_path_factory.mktemp("pipeline")))

    return Path(shared(tmp_path_factory, worker_id, "pipeline_run", produce))


AZURITE = ROOT / "tools/azurite/node_modules/.bin/azurite-blob"
# Azurite's well-known development account (public, documented by Microsoft; not a secret).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory):
    """One Azure Blob service (Azurite) on 127.0.0.1 for the test run (it takes seconds to start); yields its
    connection string. Tests take it through `azurite`, which empties it first."""
    import socket
    import subprocess
    import time

    from azure.storage.blob import BlobServiceClient

    assert AZURITE.is_file(), f"{AZURITE} missing: `make azurite` (or `make test`) installs it with npm"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            str(AZURITE),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--location",
            str(tmp_path_factory.mktemp("azurite")),
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
            "--disableTelemetry",  # otherwise it tries to send usage data off the machine and queues it in /tmp
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                BlobServiceClient.from_connection_string(connection).get_service_properties()
                break
            except Exception:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.3)
        yield connection
    finally:
        server.terminate()  # Azurite closes gracefully and may wait on idle keep-alive connections
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


JOB_CONTAINER = "job"  # the DVC remote of job_run, kept for the whole test run (`azurite` leaves it alone)


@pytest.fixture()
def azurite(azurite_server):
    """The Azure Blob service (Azurite) as a new one: every container an earlier test left deleted (but job_run's),
    then an empty container `dvc`; yields its connection string."""
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(azurite_server)
    for container in service.list_containers():
        if container.name != JOB_CONTAINER:
            service.delete_container(container.name)
    service.create_container("dvc")
    assert {c.name for c in service.list_containers()} - {JOB_CONTAINER} == {"dvc"}
    return azurite_server


@pytest.fixture(scope="session")
def job_run(azurite_server, tmp_path_factory):
    """scripts/azureml-job.sh run once, on the end-to-end module's small pipeline in a copy of the project without
    .git, with Azurite's container `job` as the DVC remote: (snapshot folder, results output folder, the script's
    CompletedProcess). tests/test_azureml_job.py checks the job; tests/test_pipeline_e2e.py compares its outputs
    with its own repository's (two runs from nothing on the same seed: the same models and figures)."""
    from azure.storage.blob import BlobServiceClient
    from test_azureml_job import run, snapshot

    BlobServiceClient.from_connection_string(azurite_server).create_container(JOB_CONTAINER)
    root = tmp_path_factory.mktemp("job")
    first, out = snapshot(root / "first", azurite_server, JOB_CONTAINER), root / "results-1"
    return first, out, run(["bash", "scripts/azureml-job.sh", str(out)], first)


# --- answers of the committed run, and a copy with chosen records flipped (slmops report's paired tests) ----


def committed_answers(variant: str = "quantized") -> list[dict]:
    """A real run's answers to the 300 eval records (the default's, committed at bcffc1a), kept under tests/data so
    that rerunning the pipeline does not move the figures the report tests assert."""
    path = ROOT / f"tests/data/answers/{variant}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def flipped(records: list[dict], right_to_wrong: int, wrong_to_right: int, task) -> list[dict]:
    """`records` with the first `right_to_wrong` right answers made wrong (intent changed) and the first
    `wrong_to_right` wrong ones replaced by their label."""
    from slmops.core.task import score
    from slmops.report.paired import parsed_answer

    out, spoiled, mended = [], 0, 0
    for record in records:
        right = score(task, [parsed_answer(task, record)], [record["label"]])["exact_match"] == 1.0
        answer = record["answer"]
        if right and spoiled < right_to_wrong:
            label = {
                **record["label"],
                "intent": "cancel_order" if record["label"]["intent"] != "cancel_order" else "change_address",
            }
            answer, spoiled = json.dumps(label), spoiled + 1
        elif not right and mended < wrong_to_right:
            answer, mended = json.dumps(record["label"]), mended + 1
        out.append({**record, "answer": answer})
    assert (spoiled, mended) == (right_to_wrong, wrong_to_right)
    return out
