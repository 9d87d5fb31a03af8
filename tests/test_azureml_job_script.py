"""scripts/azureml-job.sh on a two-stage DVC project (seconds): a copy with no .git, Azurite as the remote.
tests/test_azureml_job.py runs the same script on the project's own pipeline (minutes, e2e)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from test_pipeline_e2e import stages_ran

pytestmark = pytest.mark.slow  # Azurite and DVC runs per test: left out of `make test-fast`

BIN = Path(sys.executable).parent
DVC_YAML = """\
stages:
  build:
    cmd: >-
      mkdir -p model reports && echo ${size} > model/weights.txt && echo '{"size": ${size}}' > reports/build.json
    params: [size]
    outs: [model]
    metrics:
      - reports/build.json:
          cache: false
  report:
    cmd: mkdir -p reports && cat model/weights.txt > reports/report.md
    deps: [model]
    outs:
      - reports/report.md:
          cache: false
          persist: true
"""


def run(cmd, cwd, check=True):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if check:
        assert result.returncode == 0, f"{cmd}: {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def snapshot(dest: Path, azurite: str) -> Path:
    """A DVC project made in git, then copied without .git, as the job's code snapshot is."""
    source = dest.with_name(dest.name + "-git")
    source.mkdir()
    (source / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts/azureml-job.sh", source / "scripts/azureml-job.sh")
    (source / "dvc.yaml").write_text(DVC_YAML)
    (source / "params.yaml").write_text("size: 3\n")
    run(["git", "init", "-q"], source)
    run(["dvc", "init", "-q"], source)
    run(["dvc", "remote", "add", "-d", "blob", "azure://dvc/store"], source)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(".git"))
    run(["dvc", "remote", "modify", "--local", "blob", "connection_string", azurite], dest)
    return dest


def blobs(azurite: str, container: str = "dvc") -> set[str]:
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(azurite).get_container_client(container)
    return {blob.name for blob in client.list_blobs()}


def test_the_job_script_without_git_pulls_reproduces_pushes_and_fills_the_output(azurite, tmp_path):
    first = snapshot(tmp_path / "first", azurite)
    refused = run(["dvc", "status"], first, check=False)  # DVC refuses a tree without git...
    assert refused.returncode != 0 and "is not a git repository" in refused.stderr
    out = tmp_path / "results-1"
    result = run(["bash", "scripts/azureml-job.sh", str(out)], first)  # ...until the script sets core.no_scm
    assert stages_ran(result) == {"build", "report"}
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "dvc.lock",
        "reports/build.json",
        "reports/report.md",
    ]  # dvc.lock and the cache: false outputs, read from dvc.yaml; the model went to the remote
    assert (out / "reports/build.json").read_text().strip() == '{"size": 3}'
    pushed = blobs(azurite)
    assert any(name.startswith("store/files/md5/") for name in pushed)
    assert any(name.startswith("store/runs/") for name in pushed)  # --run-cache

    # What the author commits from the results (dvc.lock, reports) on a new snapshot: pulled, nothing rerun.
    second = snapshot(tmp_path / "second", azurite)
    shutil.copytree(out, second, dirs_exist_ok=True)
    again = run(["bash", "scripts/azureml-job.sh", str(tmp_path / "results-2")], second)
    assert stages_ran(again) == set(), again.stdout
    assert (second / "model/weights.txt").read_text().strip() == "3"
    assert (tmp_path / "results-2/dvc.lock").read_text() == (out / "dvc.lock").read_text()


def test_the_job_script_fails_when_a_stage_fails(azurite, tmp_path):
    project = snapshot(tmp_path / "broken", azurite)
    (project / "params.yaml").write_text("size: [not a number\n")
    result = run(["bash", "scripts/azureml-job.sh", str(tmp_path / "results")], project, check=False)
    assert result.returncode != 0
    assert not (tmp_path / "results/dvc.lock").exists()  # no results from a failed repro
