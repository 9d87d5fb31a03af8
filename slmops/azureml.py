"""Azure ML as a remote executor of the same `dvc repro`: one command job, built and submitted with azure-ai-ml.

DVC stays the one orchestrator. The job runs scripts/azureml-job.sh in a code snapshot of the repository (what
.amlignore leaves), in an anonymous environment built from the project's own pins (azureml/env), on a compute
cluster that scales to zero; it returns dvc.lock and the `cache: false` outputs through one named output,
`results`, and the models through the DVC remote. Where it runs comes from azureml.yaml, which no stage reads:
changing the workspace or the VM size reruns nothing.

    python -m slmops.azureml requirements     rewrite azureml/env/requirements.txt from pyproject.toml
    python -m slmops.azureml dump             rewrite azureml/job.yml and azureml/compute.yml from azureml.yaml
    python -m slmops.azureml uncached-outputs the `cache: false` outputs of dvc.yaml, one path a line
    python -m slmops.azureml secret VAULT_URL NAME   a Key Vault secret's value (in the job, with its identity)
    python -m slmops.azureml oidc-token FILE  a fresh GitHub OIDC token in FILE (AZURE_FEDERATED_TOKEN_FILE)

azure-ai-ml is imported inside the functions that need it: it is the `azureml` extra, not a pipeline dependency.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from slmops.core.config import Section
from slmops.core.errors import InputError

CONFIG_FILE = Path("azureml.yaml")
ENV_DIR = Path("azureml/env")
JOB_YAML = Path("azureml/job.yml")
COMPUTE_YAML = Path("azureml/compute.yml")
RESULTS = "results"  # the job's one named output
JOB_COMMAND = "bash scripts/azureml-job.sh ${{outputs.results}}"
UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
GENERATED = "# Generated from azureml.yaml by `python -m slmops.azureml dump`; at submission the commit is filled in.\n"
EXIT_JOB_FAILED = 3  # the Azure ML job failed or was cancelled (1 is a failed gate, 2 bad input)


# --- azureml.yaml -------------------------------------------------------------------------------------------


class Workspace(Section):
    """The Azure ML workspace jobs are submitted to."""

    subscription_id: str = Field(pattern=UUID, description="Azure subscription id (a GUID).")
    resource_group: str = Field(min_length=1, description="Resource group of the workspace.")
    name: str = Field(min_length=1, description="Workspace name.")


class Compute(Section):
    """The AmlCompute cluster the job runs on; it scales to zero when idle (min_instances is always 0)."""

    name: str = Field(pattern=r"^[a-zA-Z][a-zA-Z0-9-]{1,31}$", description="Cluster name (2-32 characters).")
    size: str = Field(min_length=1, description="VM size (instance type), e.g. Standard_NC4as_T4_v3.")
    tier: Literal["dedicated", "low_priority"] = Field(
        description="low_priority is cheaper and can be preempted (the job then restarts)."
    )
    max_instances: int = Field(ge=1, description="Most nodes the cluster scales up to.")
    idle_time_before_scale_down_s: int = Field(ge=60, description="Seconds an idle node waits before release.")


class Storage(Section):
    """The DVC remote on Azure Blob, reached from the job with the compute's managed identity (no key)."""

    account: str = Field(pattern=r"^[a-z0-9]{3,24}$", description="Storage account of the DVC remote.")
    identity_client_id: str | None = Field(
        pattern=UUID, description="Client id of the compute's user-assigned identity; null: system-assigned."
    )


class TeacherKey(Section):
    """Where the job reads an endpoint teacher's key: a Key Vault secret, with the compute's identity."""

    vault_url: str | None = Field(
        pattern=r"^https://[a-zA-Z0-9-]+\.vault\.azure\.net/?$", description="https://<vault>.vault.azure.net"
    )
    secret: str | None = Field(pattern=r"^[a-zA-Z0-9-]{1,127}$", description="Secret name in that vault.")
    env: str | None = Field(
        pattern=r"^[A-Z_][A-Z0-9_]*$", description="The variable the teacher reads (teacher.openai.api_key_env)."
    )

    @model_validator(mode="after")
    def _all_or_none(self) -> TeacherKey:
        given = [v is not None for v in (self.vault_url, self.secret, self.env)]
        if any(given) and not all(given):
            raise ValueError("vault_url, secret and env: give all three or none")
        return self


class Distribution(Section):
    """A multi-node training launch (training_job): torchrun once per node, one process per GPU."""

    nodes: int = Field(ge=1, description="Nodes (instance count).")
    processes_per_node: int = Field(ge=1, description="Processes (GPUs) per node, started by torchrun.")


class AzureML(Section):
    workspace: Workspace
    experiment: str = Field(min_length=1, description="Experiment the jobs are grouped under.")
    compute: Compute
    timeout_s: int = Field(ge=60, description="Time limit of the job in seconds (limits.timeout).")
    storage: Storage
    teacher_key: TeacherKey
    distribution: Distribution


class AzureMLFile(Section):
    azureml: AzureML


def load_config(path: str | Path = CONFIG_FILE) -> AzureML:
    """The validated `azureml:` section of `path`. InputError (exit 2) names the file and every bad key."""
    from slmops.core.params import read_yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: Azure ML config not found (see the README, section Azure ML)")
    tree = read_yaml(path.read_text(), str(path))
    try:
        return AzureMLFile.model_validate(tree).azureml
    except ValidationError as err:
        problems = [
            f"{path}: {'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors()
        ]
        raise InputError("invalid Azure ML config\n  " + "\n  ".join(problems)) from None


# --- git identity of the submission --------------------------------------------------------------------------


@dataclass(frozen=True)
class Git:
    sha: str
    branch: str


DUMP_GIT = Git(sha="0" * 40, branch="main")  # the placeholder commit of the committed azureml/job.yml


def git_identity(root: str | Path = ".") -> Git:
    """The commit and branch the job is tagged with: AZUREML_GIT_COMMIT / AZUREML_GIT_BRANCH (set in CI, where
    HEAD is a merge commit), else git's. The same variables give the job its git properties in azure-ai-ml."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return result.stdout.strip() if result.returncode == 0 else ""

    sha = os.environ.get("AZUREML_GIT_COMMIT") or git("rev-parse", "HEAD")
    if not sha:
        raise InputError(f"{Path(root).resolve()}: not a git checkout and AZUREML_GIT_COMMIT is not set")
    return Git(sha=sha, branch=os.environ.get("AZUREML_GIT_BRANCH") or git("rev-parse", "--abbrev-ref", "HEAD"))


# --- the environment: a pip-only Docker build context from pyproject.toml's pins ------------------------------


def requirements_text(pyproject: str | Path = "pyproject.toml") -> str:
    """requirements.txt of the job's image: the pipeline's pinned dependencies, exactly as pyproject.toml has them."""
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    header = "# Generated from pyproject.toml by `python -m slmops.azureml requirements`; do not edit.\n"
    return header + "".join(f"{dep}\n" for dep in project["dependencies"])


def environment(root: str | Path = "."):
    """The anonymous Environment (no name: registered under a hash of the build context, built once per change)."""
    from azure.ai.ml.entities import BuildContext, Environment

    return Environment(build=BuildContext(path=str(Path(root) / ENV_DIR)))


# --- compute, job, distribution ------------------------------------------------------------------------------


def compute(config: AzureML):
    """The AmlCompute cluster (scales to zero). An admin creates it once: az ml compute create -f azureml/compute.yml"""
    from azure.ai.ml.entities import AmlCompute

    return AmlCompute(
        name=config.compute.name,
        size=config.compute.size,
        tier=config.compute.tier,
        min_instances=0,
        max_instances=config.compute.max_instances,
        idle_time_before_scale_down=config.compute.idle_time_before_scale_down_s,
    )


def job_environment_variables(config: AzureML) -> dict[str, str]:
    """Names and ids only: the job definition, environment variables included, is readable by every workspace
    reader, so no key or token ever goes here (the teacher's key is read from Key Vault inside the job)."""
    variables = {
        "DVC_NO_ANALYTICS": "1",
        "AZURE_STORAGE_ACCOUNT": config.storage.account,
        # The compute's managed identity and nothing else: no minutes lost walking the credential chain.
        "AZURE_TOKEN_CREDENTIALS": "ManagedIdentityCredential",
    }
    if config.storage.identity_client_id:
        variables["AZURE_CLIENT_ID"] = config.storage.identity_client_id
    key = config.teacher_key
    if key.vault_url:
        variables.update(TEACHER_KEY_VAULT_URL=key.vault_url, TEACHER_KEY_SECRET=key.secret, TEACHER_KEY_ENV=key.env)
    return variables


def build_job(config: AzureML, git: Git, root: str | Path = "."):
    """The one command job running `dvc repro` (scripts/azureml-job.sh) in a snapshot of `root`.

    One node, one process, never `distribution`: Azure ML would start the command once per process, and
    several `dvc repro` on the same stages at once. Multi-GPU training happens inside a stage (torchrun).
    No `name`: Azure ML generates a unique one; the commit is in display_name and tags."""
    from azure.ai.ml import Output, command
    from azure.ai.ml.constants import AssetTypes

    return command(
        code=str(root),
        command=JOB_COMMAND,
        environment=environment(root),
        compute=config.compute.name,
        instance_count=1,
        experiment_name=config.experiment,
        display_name=f"dvc repro {git.sha[:8]}",
        description="dvc pull, dvc repro, dvc push (scripts/azureml-job.sh); results: dvc.lock and reports",
        tags={"git_sha": git.sha, "git_branch": git.branch},
        outputs={RESULTS: Output(type=AssetTypes.URI_FOLDER)},
        environment_variables=job_environment_variables(config),
        timeout=config.timeout_s,
    )


def training_job(config: AzureML, module: str, git: Git, root: str | Path = "."):
    """A multi-node training job for one stage module (e.g. stages.distill), launched per node with torchrun.

    Per-node launch (process_count_per_instance=1, torchrun starts processes_per_node workers on each node)
    rather than Azure ML's per-process launch: the stage's code then runs the same under `torchrun` on a
    laptop, a GPU runner and Azure ML, and torchrun restarts workers and owns the rendezvous. Azure ML sets
    MASTER_ADDR, MASTER_PORT and NODE_RANK on each node. The node count is passed as a literal."""
    from azure.ai.ml import PyTorchDistribution, command

    dist = config.distribution
    launch = (
        f"torchrun --nnodes {dist.nodes} --nproc_per_node {dist.processes_per_node} --node_rank $NODE_RANK "
        f"--master_addr $MASTER_ADDR --master_port $MASTER_PORT -m {module}"
    )
    return command(
        code=str(root),
        command=launch,
        environment=environment(root),
        compute=config.compute.name,
        instance_count=dist.nodes,
        distribution=PyTorchDistribution(process_count_per_instance=1),
        experiment_name=config.experiment,
        display_name=f"{module} x{dist.nodes} nodes {git.sha[:8]}",
        tags={"git_sha": git.sha, "git_branch": git.branch},
        environment_variables=job_environment_variables(config),
        timeout=config.timeout_s,
    )


def job_yaml(job, root: str | Path = ".") -> str:
    """The job (a `command()` node) as `az ml job create -f` reads it, code and build paths relative to `root`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.yml"
        job._to_job().dump(path)  # the CommandJob: load_job reads it back (a node's own dump it cannot)
        text = path.read_text()
    absolute = str(Path(root).resolve())
    return text.replace(f"{absolute}/", "").replace(absolute, ".")


def compute_yaml(config: AzureML) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "compute.yml"
        compute(config).dump(path)
        return path.read_text()


# --- the job side's helpers ----------------------------------------------------------------------------------


def uncached_outputs(root: str | Path = ".") -> list[str]:
    """Every `cache: false` output of dvc.yaml (outs, metrics, plots), as DVC resolves it (templating included):
    `dvc push` does not carry these, so the job returns them through its `results` output."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return sorted({str(out.def_path) for out in repo.index.outs if not out.use_cache})


def read_secret(vault_url: str, name: str, credential=None, **kwargs) -> str:
    """A Key Vault secret's current value, read with `credential` or azure_credential() (in the job: the compute's
    managed identity). InputError naming the vault and the secret when it is missing, disabled, or not readable by
    that identity (Key Vault answers 403 without the role Key Vault Secrets User). `kwargs` go to SecretClient."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
    from azure.keyvault.secrets import SecretClient

    client = SecretClient(vault_url=vault_url, credential=credential or azure_credential(), **kwargs)
    try:
        value = client.get_secret(name).value
    except ResourceNotFoundError:
        raise InputError(f"Key Vault {vault_url}: no secret named {name!r} (teacher_key.secret)") from None
    except HttpResponseError as err:
        reason = f"{err.status_code}: {err.reason}"
        raise InputError(f"Key Vault {vault_url}: secret {name!r} not readable ({reason})") from None
    if not value:
        raise InputError(f"Key Vault {vault_url}: secret {name!r} is empty")
    return value


# --- credentials ---------------------------------------------------------------------------------------------

# The audience GitHub's OIDC token is asked for: Entra ID's federated credentials expect it (azure/login's default).
GITHUB_OIDC_AUDIENCE = "api://AzureADTokenExchange"
GITHUB_OIDC = ("ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN", "AZURE_CLIENT_ID", "AZURE_TENANT_ID")


def github_oidc_token(timeout_s: float = 30) -> str:
    """A fresh OIDC token (a JWT) from the GitHub Actions job's token service (a job with `id-token: write`
    has ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN), for GITHUB_OIDC_AUDIENCE.

    Raises InputError when the variables are missing, or the service refuses or answers without a token.
    Source: GitHub's "About security hardening with OpenID Connect" (the request) and azure/login (the audience)."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    url, bearer = os.environ.get(GITHUB_OIDC[0]), os.environ.get(GITHUB_OIDC[1])
    if not url or not bearer:
        raise InputError(f"{GITHUB_OIDC[0]} and {GITHUB_OIDC[1]} are not set: not a GitHub job with id-token: write")
    query = urllib.parse.urlencode({"audience": GITHUB_OIDC_AUDIENCE})
    request = urllib.request.Request(f"{url}&{query}" if "?" in url else f"{url}?{query}")
    request.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            token = json.loads(response.read()).get("value")
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise InputError(f"GitHub's OIDC token service ({GITHUB_OIDC[0]}) failed: {err}") from None
    if not isinstance(token, str) or not token:
        raise InputError(f"GitHub's OIDC token service ({GITHUB_OIDC[0]}) answered without a token")
    return token


def azure_credential(**kwargs):
    """The identity Azure calls are made with.

    In a GitHub Actions job with `id-token: write` and AZURE_CLIENT_ID / AZURE_TENANT_ID set: a
    ClientAssertionCredential that asks GitHub for a fresh OIDC token each time it needs a new Entra ID token.
    The Azure CLI's login by azure/login holds one OIDC token, which expires within minutes, so the CLI cannot
    renew its access token after about an hour and a longer wait fails with AADSTS700024 (Azure/login#180, #372).
    Elsewhere: DefaultAzureCredential (AZURE_TOKEN_CREDENTIALS picks one: ManagedIdentityCredential in the job,
    AzureCliCredential after `az login`). `kwargs` go to the credential (a test's transport)."""
    if all(os.environ.get(name) for name in GITHUB_OIDC):
        from azure.identity import ClientAssertionCredential

        tenant, client_id = os.environ["AZURE_TENANT_ID"], os.environ["AZURE_CLIENT_ID"]
        return ClientAssertionCredential(tenant, client_id, github_oidc_token, **kwargs)
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(**kwargs)


def write_oidc_token(path: str | Path) -> None:
    """A fresh GitHub OIDC token in `path` (mode 600), for AZURE_FEDERATED_TOKEN_FILE: a process outside this one
    (`dvc pull` after a long job) then signs in with WorkloadIdentityCredential."""
    token, path = github_oidc_token(), Path(path)
    path.touch(mode=0o600)
    path.write_text(token)


# --- submit, follow, fetch ------------------------------------------------------------------------------------


class JobDidNotComplete(Exception):
    """The Azure ML job ended Failed or Canceled (or in any state but Completed)."""


def client(config: AzureML, credential=None, **kwargs):
    """MLClient on the workspace, with `credential` or else azure_credential()."""
    from azure.ai.ml import MLClient

    ws = config.workspace
    return MLClient(credential or azure_credential(), ws.subscription_id, ws.resource_group, ws.name, **kwargs)


def submit(ml_client, config: AzureML, git: Git, root: str | Path = ".") -> str:
    """Submit the job; its generated name (also written to $GITHUB_OUTPUT as `job`, for the cancel step)."""
    name = ml_client.jobs.create_or_update(build_job(config, git, root)).name
    print(f"submitted Azure ML job {name}", file=sys.stderr)
    if os.environ.get("GITHUB_OUTPUT"):
        with open(os.environ["GITHUB_OUTPUT"], "a") as out:
            out.write(f"job={name}\n")
    return name


def follow(ml_client, name: str) -> None:
    """Stream the job's logs until it ends; JobDidNotComplete unless its final status is Completed.

    jobs.stream raises only for Failed and returns quietly for Canceled, so the status is read afterwards."""
    from azure.ai.ml.exceptions import JobException

    try:
        ml_client.jobs.stream(name)
    except JobException as err:
        raise JobDidNotComplete(f"Azure ML job {name} failed:\n{err.message}") from None
    status = ml_client.jobs.get(name).status
    status = getattr(status, "value", status)  # a JobStatus enum or a plain string, by SDK version
    if status != "Completed":
        raise JobDidNotComplete(f"Azure ML job {name} ended {status}, not Completed")


def fetch_results(ml_client, name: str, root: str | Path = ".") -> list[str]:
    """Download the job's `results` output and copy it over the checkout; the paths copied (relative)."""
    root = Path(root)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        ml_client.jobs.download(name, output_name=RESULTS, download_path=tmp)
        results = Path(tmp) / "named-outputs" / RESULTS
        if not (results / "dvc.lock").is_file():
            raise JobDidNotComplete(f"Azure ML job {name}: its `{RESULTS}` output holds no dvc.lock")
        copied = sorted(str(p.relative_to(results)) for p in results.rglob("*") if p.is_file())
        shutil.copytree(results, root, dirs_exist_ok=True)
    return copied


def cancel(ml_client, name: str) -> None:
    """Cancel the job (the workflow's `if: cancelled()` step) and wait for the service to accept it."""
    ml_client.jobs.begin_cancel(name).result()
    print(f"cancelled Azure ML job {name}", file=sys.stderr)


def run(ml_client, config: AzureML, git: Git, root: str | Path = ".") -> str:
    """Submit, stream, check the status, bring `results` into the checkout; the job's name."""
    name = submit(ml_client, config, git, root)
    follow(ml_client, name)
    copied = fetch_results(ml_client, name, root)
    print(f"Azure ML job {name}: {len(copied)} files of `{RESULTS}` copied into the checkout", file=sys.stderr)
    return name


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        return _main(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _main(args: list[str]) -> int:
    if args == ["requirements"]:
        (ENV_DIR / "requirements.txt").write_text(requirements_text())
    elif args == ["dump"]:
        config = load_config()
        JOB_YAML.write_text(GENERATED + job_yaml(build_job(config, DUMP_GIT)))
        COMPUTE_YAML.write_text(GENERATED + compute_yaml(config))
    elif args == ["uncached-outputs"]:
        print("\n".join(uncached_outputs()))
    elif len(args) == 3 and args[0] == "secret":
        print(read_secret(args[1], args[2]))
    elif len(args) == 2 and args[0] == "oidc-token":
        write_oidc_token(args[1])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
