"""`slmops azureml submit` and `cancel` against a fake Azure ML workspace (tests/fake_azureml.py): the real
azure-ai-ml MLClient, its REST calls answered on an azure-core transport, blobs (the code snapshot, the build
context, the job's `results` output) in Azurite on 127.0.0.1."""

import json
import shutil
import subprocess

import pytest
from conftest import ROOT
from fake_azureml import FakeAzureML, FakeCredential, route_datastores_to_azurite

from slmops import azureml, cli

pytestmark = pytest.mark.slow  # Azurite (one per run) and a fake workspace per test: left out of `make test-fast`

SECRETS = {
    "TEACHER_API_KEY": "sk-never-in-the-job-6f1d2c",
    "AZURE_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=https;AccountKey=never-in-the-job-93ab",
    "AZURE_CLIENT_SECRET": "never-in-the-job-client-secret-77e0",
}
LOCK = "schema: '2.0'\nstages: {}\n"
SUBSCRIPTION = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """The project's files as git sees them, as the working directory (a quick snapshot to upload)."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    out = tmp_path / "project"
    for name in files:
        if (ROOT / name).is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, out / name)
    # What must never be uploaded, present in the checkout as on a developer's machine.
    (out / ".dvc/config.local").write_text("['remote \"blob\"']\n    connection_string = secret\n")
    (out / ".env").write_text("TEACHER_API_KEY=secret\n")
    (out / "models/student").mkdir(parents=True)
    (out / "models/student/model.safetensors").write_bytes(b"weights")
    config = out / "azureml.yaml"  # a user's own subscription in place of the shipped placeholder
    config.write_text(config.read_text().replace(azureml.PLACEHOLDER_SUBSCRIPTION, SUBSCRIPTION))
    monkeypatch.chdir(out)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AZUREML_GIT_COMMIT", "c0ffee" + "0" * 34)
    monkeypatch.setenv("AZUREML_GIT_BRANCH", "feature/azureml")
    return out


@pytest.fixture()
def results(tmp_path):
    """What scripts/azureml-job.sh leaves in the job's `results` output."""
    out = tmp_path / "results"
    (out / "reports/train/distill/plots/metrics").mkdir(parents=True)
    (out / "dvc.lock").write_text(LOCK)
    (out / "reports/metrics.json").write_text('{"accuracy": 0.9}')
    (out / "reports/train/distill/plots/metrics/loss.tsv").write_text("step\tloss\n1\t2.0\n")
    return out


def fake_service(monkeypatch, azurite, results, status):
    from azure.ai.ml.operations._run_history_constants import RunHistoryConstants

    # The SDK waits 2 s or more between polls of a job; the fake job moves on at once.
    monkeypatch.setattr(RunHistoryConstants, "_WAIT_COMPLETION_POLLING_INTERVAL_MIN", 0)
    monkeypatch.setattr(RunHistoryConstants, "_WAIT_COMPLETION_POLLING_INTERVAL_MAX", 0)
    fake = FakeAzureML(azurite, results, status)
    route_datastores_to_azurite(monkeypatch, fake)
    monkeypatch.setattr(
        cli, "_azureml_client", lambda config: azureml.client(config, FakeCredential(), transport=fake, retry_total=0)
    )
    return fake


def job_body(fake) -> dict:
    return next(body for method, path, body in fake.requests if method == "PUT" and "/jobs/" in path)


def test_submit_streams_checks_the_status_and_brings_the_results_into_the_checkout(
    project, results, azurite, monkeypatch, capsys, tmp_path
):
    fake = fake_service(monkeypatch, azurite, results, "Completed")
    github_output = tmp_path / "github_output"
    monkeypatch.setenv("GITHUB_OUTPUT", str(github_output))

    assert cli.main(["azureml", "submit"]) == 0

    name = next(iter(fake.jobs))
    assert github_output.read_text() == f"job={name}\n"  # for the workflow's cancel step
    assert (project / "dvc.lock").read_text() == LOCK
    assert json.loads((project / "reports/metrics.json").read_text()) == {"accuracy": 0.9}
    assert (project / "reports/train/distill/plots/metrics/loss.tsv").is_file()
    out = capsys.readouterr()
    assert f"dvc repro in job {name}" in out.out  # the job's log, streamed
    assert f"Azure ML job {name}: 3 files of `results` copied into the checkout" in out.err

    props = job_body(fake)["properties"]
    assert (
        props["command"]
        == "SLMOPS_CHECKPOINTS=${{outputs.checkpoints}} bash scripts/azureml-job.sh ${{outputs.results}}"
    )
    assert props["computeId"].endswith("/computes/gpu-cluster")
    assert props["environmentId"].split("/environments/")[1].startswith("CliV2AnonymousEnvironment/versions/")
    assert props["displayName"] == "dvc repro c0ffee00"
    assert props["tags"] == {"git_sha": "c0ffee" + "0" * 34, "git_branch": "feature/azureml"}
    assert props["limits"]["timeout"] in ("PT3H", "PT10800S")
    assert props["outputs"]["results"]["jobOutputType"] == "uri_folder"
    assert (props["outputs"]["checkpoints"]["jobOutputType"], props["outputs"]["checkpoints"]["mode"]) == (
        "uri_folder",
        "ReadWriteMount",
    )
    assert props["resources"]["instanceCount"] == 1 and "distribution" not in props
    assert props["environmentVariables"] == {
        "DVC_NO_ANALYTICS": "1",
        "AZURE_STORAGE_ACCOUNT": "slmopsdvc",
        "AZURE_TOKEN_CREDENTIALS": "ManagedIdentityCredential",
    }
    # The AZUREML_GIT_* overrides reach the job's git properties (HEAD in CI is a merge commit).
    assert props["properties"]["mlflow.source.git.commit"] == "c0ffee" + "0" * 34
    assert props["properties"]["mlflow.source.git.branch"] == "feature/azureml"


def test_no_secret_from_the_environment_reaches_the_service_or_the_snapshot(project, results, azurite, monkeypatch):
    fake = fake_service(monkeypatch, azurite, results, "Completed")
    assert cli.main(["azureml", "submit"]) == 0
    sent = json.dumps([body for _, _, body in fake.requests])
    for value in SECRETS.values():
        assert value not in sent
    uploaded = [b.name for b in fake.blobs.get_container_client("codes").list_blobs()]
    snapshot = {name.split("/", 1)[1] for name in uploaded}  # <folder name>/<path>
    assert "stages/distill.py" in snapshot and "scripts/azureml-job.sh" in snapshot and "dvc.yaml" in snapshot
    assert not [n for n in snapshot if n.startswith((".dvc/config.local", ".env", "models/student", ".git/"))]


def test_a_failed_job_is_an_error_and_the_checkout_is_left_alone(project, results, azurite, monkeypatch, capsys):
    fake = fake_service(monkeypatch, azurite, results, "Failed")
    lock = (project / "dvc.lock").read_text()
    assert cli.main(["azureml", "submit"]) == azureml.EXIT_JOB_FAILED == 3
    err = capsys.readouterr().err
    assert f"error: Azure ML job {next(iter(fake.jobs))} failed" in err and "dvc repro exited 1" in err
    assert (project / "dvc.lock").read_text() == lock


def test_a_cancelled_job_is_an_error_not_a_silent_end(project, results, azurite, monkeypatch, capsys):
    fake = fake_service(monkeypatch, azurite, results, "Canceled")
    lock = (project / "dvc.lock").read_text()
    assert cli.main(["azureml", "submit"]) == 3
    assert f"error: Azure ML job {next(iter(fake.jobs))} ended Canceled, not Completed" in capsys.readouterr().err
    assert (project / "dvc.lock").read_text() == lock


def test_a_cancelled_workflow_cancels_its_job(project, results, azurite, monkeypatch, capsys):
    fake = fake_service(monkeypatch, azurite, results, "Completed")
    config = azureml.load_config()
    name = azureml.submit(cli._azureml_client(config), config, azureml.git_identity())
    assert cli.main(["azureml", "cancel", name]) == 0
    assert fake.cancelled == [name]
    assert ("POST", f"{fake.jobs[name]['id']}/cancel", None) in fake.requests
    assert f"cancelled Azure ML job {name}" in capsys.readouterr().err


def test_a_completed_job_without_a_lock_in_its_results_is_an_error(project, tmp_path, azurite, monkeypatch, capsys):
    empty = tmp_path / "empty-results"
    (empty / "reports").mkdir(parents=True)
    (empty / "reports/metrics.json").write_text("{}")
    fake = fake_service(monkeypatch, azurite, empty, "Completed")
    metrics = (project / "reports/metrics.json").read_text()
    assert cli.main(["azureml", "submit"]) == 3
    name = next(iter(fake.jobs))
    assert f"error: Azure ML job {name}: its `results` output holds no dvc.lock" in capsys.readouterr().err
    assert (project / "reports/metrics.json").read_text() == metrics  # nothing half-copied
