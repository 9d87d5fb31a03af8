"""scripts/azureml-job.sh, the Azure ML side, run for real: in a copy of the project without .git (as the job's
code snapshot), on a small params override, with Azurite as the DVC remote. The first job is conftest's job_run
(shared with tests/test_pipeline_e2e.py, which compares its outputs with its own run's)."""

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import JOB_CONTAINER
from test_azureml_job_script import blobs
from test_pipeline_e2e import (
    accuracy_only,
    model_file_hashes,
    read_json,
    small_project,
    stages_ran,
    without_timing,
)

from slmops import azureml

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


def snapshot(dest: Path, azurite: str, container: str) -> Path:
    """The project's files without .git, the small params, and the Azurite remote in `container` (its key in
    config.local, as the job's identity would be: never in a committed file)."""
    small_project(dest)
    run(["dvc", "remote", "add", "-d", "blob", f"azure://{container}/store"], dest)
    run(["dvc", "remote", "modify", "--local", "blob", "connection_string", azurite], dest)
    return dest


def run(cmd, cwd):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(cwd)}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"{cmd}: {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def test_the_job_script_pulls_reproduces_pushes_and_fills_the_results_output(job_run, azurite_server, tmp_path):
    first, out, result = job_run
    assert not (first / ".git").exists()
    assert stages_ran(result) == {"teacher", "synthesize", "distill", "finetune", "quantize", "evaluate", "package"}
    assert (first / ".dvc/config.local").read_text().count("no_scm = true") == 1

    # Every cache: false output of dvc.yaml, and dvc.lock, in the named output; the models in the remote.
    assert filecmp.cmp(out / "dvc.lock", first / "dvc.lock", shallow=False)
    outputs = azureml.uncached_outputs(first)
    for path in outputs:
        assert (out / path).exists(), f"{path} missing from the results output"
        if (first / path).is_file():
            assert filecmp.cmp(out / path, first / path, shallow=False)
    assert json.loads((out / "reports/metrics.json").read_text()) == json.loads(
        (first / "reports/metrics.json").read_text()
    )
    assert not (out / "models").exists()
    pushed = blobs(azurite_server, JOB_CONTAINER)
    assert any(name.startswith("store/files/md5/") for name in pushed)
    # No run-cache entry: DVC keeps none for a stage with a `persist: true` output (dvc/stage/cache.py, _can_hash),
    # and every stage here has one; a later job restores through the dvc.lock the author commits, as below.
    assert not any(name.startswith("store/runs/") for name in pushed)

    # A second job, on a new snapshot holding what the author commits from the first (dvc.lock and the reports):
    # it pulls the models from the remote and reruns nothing.
    second = snapshot(tmp_path / "second", azurite_server, JOB_CONTAINER)
    shutil.copytree(out, second, dirs_exist_ok=True)
    out2 = tmp_path / "results-2"
    again = run(["bash", "scripts/azureml-job.sh", str(out2)], second)
    assert stages_ran(again) == set(), again.stdout[-3000:]
    assert filecmp.cmp(out2 / "dvc.lock", out / "dvc.lock", shallow=False)
    package = yaml.safe_load((second / "params.yaml").read_text())["package"]["name"]
    assert (second / "models/foundry" / package / "manifest.json").is_file()  # pulled, not rebuilt


def test_same_seed_same_metrics(pipeline_run, job_run):
    """Two runs from nothing on the same seed and data: the end-to-end `dvc repro` (conftest's pipeline_run) and the
    Azure ML job script's, in another folder, on the same files and params."""
    repo = pipeline_run
    other = job_run[0]
    assert (other / "params.yaml").read_text() == (repo / "params.yaml").read_text()
    names = ("teacher", "synthesize", "distill", "finetune", "quantize", "metrics", "package")
    first = {name: read_json(repo / f"reports/{name}.json") for name in names}
    second = {name: read_json(other / f"reports/{name}.json") for name in first}
    assert model_file_hashes(other) == model_file_hashes(repo)
    for name in ("synthesize", "quantize"):
        assert without_timing(second.pop(name)) == without_timing(first.pop(name))
    # the model card in the package quotes latencies, so the package's byte count may differ
    assert {**second.pop("package"), "bytes": 0} == {**first.pop("package"), "bytes": 0}
    assert accuracy_only(second.pop("metrics")) == accuracy_only(first.pop("metrics"))
    assert second == first
