"""The GitHub workflows: valid against GitHub's schema, no zizmor finding of medium severity or above,
least privilege, pinned actions; and the pipeline script they call."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

WORKFLOWS = sorted((ROOT / ".github/workflows").glob("*.yml"))
BIN = Path(sys.executable).parent


def tool(name, *args):
    return subprocess.run([str(BIN / name), *map(str, args)], capture_output=True, text=True)


def test_workflows_match_githubs_schema():
    result = tool("check-jsonschema", "--builtin-schema", "vendor.github-workflows", *WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_nothing_of_medium_severity_or_above():
    result = tool("zizmor", "--offline", "--min-severity", "medium", ROOT / ".github/workflows")
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_would_catch_a_template_injection(tmp_path):
    """The check above can fail: the same command on a workflow that injects a pull-request title."""
    bad = tmp_path / ".github/workflows/bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "on: pull_request\npermissions: {}\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
        '      - run: echo "${{ github.event.pull_request.title }}"\n'
    )
    result = tool("zizmor", "--offline", "--min-severity", "medium", bad.parent)
    assert result.returncode != 0 and "template-injection" in result.stdout


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege_and_pinned_actions(path):
    text = path.read_text()
    workflow = yaml.safe_load(text)
    triggers = workflow[True]  # PyYAML reads the key `on` as True
    assert "pull_request_target" not in triggers
    assert "permissions" in workflow
    assert workflow["concurrency"]["cancel-in-progress"] is True
    for uses in re.findall(r"uses:\s*(\S+)", text):
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", uses), f"{uses} is not pinned to a commit"
    for step in (
        s for job in workflow["jobs"].values() for s in job["steps"] if "actions/checkout" in s.get("uses", "")
    ):
        assert step["with"]["persist-credentials"] is False


def test_pipeline_workflow_runner_comes_from_a_variable_and_secrets_skip_forks():
    workflow = yaml.safe_load((ROOT / ".github/workflows/pipeline.yml").read_text())
    jobs = workflow["jobs"]
    runner_jobs = {name: job for name, job in jobs.items() if name != "azureml"}
    assert all(job["runs-on"] == "${{ vars.PIPELINE_RUNNER || 'ubuntu-latest' }}" for job in runner_jobs.values())
    assert all("vars.PIPELINE_BACKEND != 'azureml'" in job["if"] for job in runner_jobs.values())
    assert jobs["pull-request"]["permissions"] == {"contents": "read", "pull-requests": "write"}
    assert jobs["main"]["permissions"] == {"contents": "read"}
    env = next(s for s in jobs["pull-request"]["steps"] if "env" in s)["env"]
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "TEACHER_API_KEY"):
        assert "github.event.pull_request.head.repo.full_name == github.repository" in env[name]
    run_steps = [s["run"] for job in runner_jobs.values() for s in job["steps"] if "run" in s]
    assert run_steps == ['scripts/pipeline.sh pr "$BASE_REF"', "scripts/pipeline.sh main"]


def test_the_azureml_backend_logs_in_by_oidc_on_its_own_job_and_cancels_its_job():
    workflow = yaml.safe_load((ROOT / ".github/workflows/pipeline.yml").read_text())
    assert "id-token" not in str(workflow["permissions"])
    job = workflow["jobs"]["azureml"]
    assert "vars.PIPELINE_BACKEND == 'azureml'" in job["if"]
    assert "github.event.pull_request.head.repo.full_name == github.repository" in job["if"]  # no fork
    assert job["permissions"] == {"contents": "read", "pull-requests": "write", "id-token": "write"}
    assert [name for name, other in workflow["jobs"].items() if "id-token" in other["permissions"]] == ["azureml"]
    steps = job["steps"]
    login = next(s for s in steps if s.get("uses", "").startswith("azure/login@"))
    assert set(login["with"]) == {"client-id", "tenant-id", "subscription-id"}  # OIDC: no client secret
    assert all(value.startswith("${{ vars.") for value in login["with"].values())
    submit = next(s for s in steps if s.get("id") == "pipeline")
    assert submit["env"]["PIPELINE_BACKEND"] == "azureml"
    # slmops and DVC sign in with fresh GitHub OIDC tokens for this identity (tests/test_azureml_identity.py)
    identity = {"AZURE_CLIENT_ID": "${{ vars.AZURE_CLIENT_ID }}", "AZURE_TENANT_ID": "${{ vars.AZURE_TENANT_ID }}"}
    assert identity.items() <= submit["env"].items() and "AZURE_TOKEN_CREDENTIALS" not in submit["env"]
    assert "secrets." not in str(submit)
    cancel = next(s for s in steps if "cancel" in s.get("run", ""))
    assert cancel["if"] == "cancelled() && steps.pipeline.outputs.job != ''"
    assert cancel["run"] == '.venv/bin/slmops azureml cancel "$JOB"'
    assert cancel["env"] == {"JOB": "${{ steps.pipeline.outputs.job }}", **identity}
    assert steps.index(login) < steps.index(submit) < steps.index(cancel)


def test_pipeline_script_has_an_azureml_backend():
    script = (ROOT / "scripts/pipeline.sh").read_text()
    assert 'backend="${PIPELINE_BACKEND:-runner}"' in script
    assert "slmops azureml submit" in script and "dvc pull package" in script
    assert subprocess.run(["bash", "-n", ROOT / "scripts/azureml-job.sh"]).returncode == 0


@pytest.mark.parametrize(
    ("args", "backend", "message"),
    [
        ([], "runner", "usage: scripts/pipeline.sh pr BASE_REF | main (not '')"),
        (["mian"], "runner", "usage: scripts/pipeline.sh pr BASE_REF | main (not 'mian')"),
        (["pr"], "azureml", "usage: scripts/pipeline.sh pr BASE_REF | main: pr needs the base branch"),
        (["pr", "main"], "azure-ml", "PIPELINE_BACKEND must be runner or azureml, not 'azure-ml'"),
    ],
)
def test_pipeline_script_refuses_bad_arguments_before_any_work(args, backend, message, tmp_path):
    """Exit 2 before `make install`, let alone a whole Azure ML job: no `make` on PATH here, so any work fails
    otherwise with another message."""
    assert subprocess.run(["bash", "-n", ROOT / "scripts/pipeline.sh"]).returncode == 0
    env = {"PATH": "/usr/bin:/bin", "PIPELINE_BACKEND": backend, "HOME": str(tmp_path)}
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("bash", "dirname"):
        (bare / tool).symlink_to(shutil.which(tool))
    env["PATH"] = str(bare)
    result = subprocess.run(["bash", ROOT / "scripts/pipeline.sh", *args], capture_output=True, text=True, env=env)
    assert (result.returncode, result.stderr.strip()) == (2, message)


def base_package(rev, out, **env):
    import os

    return subprocess.run(
        ["bash", ROOT / "scripts/base_package.sh", rev, out],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **env},
    )


def test_base_package_of_an_unknown_revision_fails_and_the_pipeline_falls_back_to_context(tmp_path):
    result = base_package("no-such-revision", tmp_path / "base", SLMOPS_REBUILD_BASE="0")
    assert result.returncode == 1 and result.stdout == ""
    assert "models/foundry at no-such-revision is in neither the DVC cache nor the remote" in result.stderr
    script = (ROOT / "scripts/pipeline.sh").read_text()
    assert 'slmops bench compare "$base_package" "$head_package" --out reports/pr/speed.json' in script
    assert 'slmops report --base "$base_rev" "${speed[@]}"' in script
