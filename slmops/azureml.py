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

Multi-node training (distribution.nodes > 1): the `dvc repro` job stays one node, one process; it carries the
config in TRAINING_MARKER, and when DVC runs distill or finetune in it, the stage submits itself as a child
training job (train_remotely: its dvc.yaml deps the snapshot lacks as inputs, its outs as one output), follows
it and puts its outputs where dvc.yaml declares them. slmops.train.parallel.relaunched calls it.

azure-ai-ml is imported inside the functions that need it: it is the `azureml` extra, not a pipeline dependency.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from slmops.core.config import Section
from slmops.core.errors import InputError, validation_problems

CONFIG_FILE = Path("azureml.yaml")
ENV_DIR = Path("azureml/env")
JOB_YAML = Path("azureml/job.yml")
COMPUTE_YAML = Path("azureml/compute.yml")
RESULTS = "results"  # the job's one named output
CHECKPOINTS = "checkpoints"  # a job's mounted output for training checkpoints (slmops.train.parallel.CHECKPOINTS_ENV)
# Training checkpoints go to the mounted output, not the node's disk, so that they outlive a preempted node: Azure
# ML restarts a preempted low-priority job under its name, hence its output paths (not verifiable offline).
CHECKPOINTS_VARIABLE = "SLMOPS_CHECKPOINTS"  # where slmops.train.parallel writes checkpoints when set
JOB_COMMAND = (
    f"{CHECKPOINTS_VARIABLE}=${{{{outputs.{CHECKPOINTS}}}}} bash scripts/azureml-job.sh ${{{{outputs.results}}}}"
)
VAULT_URL = r"^https://[a-zA-Z0-9-]+\.vault\.azure\.net/?$"
UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
GENERATED = "# Generated from azureml.yaml by `python -m slmops.azureml dump`; at submission the commit is filled in.\n"
EXIT_JOB_FAILED = 3  # the Azure ML job failed or was cancelled (1 is a failed gate, 2 bad input)
# In the `dvc repro` job when distribution.nodes > 1: the config (JSON; names and ids only) with which distill and
# finetune submit themselves as multi-node training jobs instead of training in that job.
TRAINING_MARKER = "SLMOPS_AZUREML_TRAINING"
TRAINED = "trained"  # a training job's one named output: its stage's outs, metrics and plots
DOWNLOADS = Path(".slmops/azureml")  # where a training job's output lands before it replaces the stage's outputs


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

    vault_url: str | None = Field(pattern=VAULT_URL, description="https://<vault>.vault.azure.net")
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
    try:
        text = path.read_text()
    except (UnicodeDecodeError, IsADirectoryError) as err:
        raise InputError(f"{path}: not a UTF-8 text file ({err})") from None
    tree = read_yaml(text, str(path))
    if not isinstance(tree, dict):
        raise InputError(f"{path}: no `azureml:` section (the file is empty or not a mapping; see the README)")
    try:
        config = AzureMLFile.model_validate(tree).azureml
    except ValidationError as err:
        raise InputError("invalid Azure ML config\n  " + "\n  ".join(validation_problems(err, path))) from None
    _check_across_keys(config, str(path))
    return config


def _check_across_keys(config: AzureML, where: str) -> None:
    """InputError for keys that are valid alone but not together: more nodes than the cluster may start."""
    nodes, most = config.distribution.nodes, config.compute.max_instances
    if nodes > most:
        raise InputError(
            f"invalid Azure ML config\n  {where}: azureml.distribution.nodes: {nodes} nodes, but "
            f"azureml.compute.max_instances is {most}: the cluster cannot start them; raise max_instances or "
            "lower nodes"
        )


def training_config() -> AzureML | None:
    """The config the `dvc repro` job passed in TRAINING_MARKER (multi-node training asked for), else None.
    InputError (exit 2) names the variable and the bad key."""
    text = os.environ.get(TRAINING_MARKER)
    if not text:
        return None
    where = f"environment variable {TRAINING_MARKER}"
    try:
        config = AzureML.model_validate_json(text)
    except ValidationError as err:
        raise InputError(
            "invalid Azure ML config\n  " + "\n  ".join(validation_problems(err, where, ("azureml",)))
        ) from None
    _check_across_keys(config, where)
    return config


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
    """requirements.txt of the job's image: the pipeline's pinned dependencies and the `azureml` extra (with
    distribution.nodes > 1 the job's training stages submit child jobs with azure-ai-ml), exactly as
    pyproject.toml has them."""
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    header = "# Generated from pyproject.toml by `python -m slmops.azureml requirements`; do not edit.\n"
    pins = [*project["dependencies"], *project["optional-dependencies"]["azureml"]]
    return header + "".join(f"{dep}\n" for dep in pins)


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
    several `dvc repro` on the same stages at once. Multi-GPU training happens inside a stage (torchrun); with
    distribution.nodes > 1 the job carries TRAINING_MARKER (the config) and AZUREML_GIT_COMMIT / _BRANCH (the
    snapshot has no .git), and its training stages submit themselves as multi-node jobs (train_remotely).
    No `name`: Azure ML generates a unique one; the commit is in display_name and tags."""
    from azure.ai.ml import Output, command
    from azure.ai.ml.constants import AssetTypes

    variables = job_environment_variables(config)
    if config.distribution.nodes > 1:
        variables.update(
            {TRAINING_MARKER: config.model_dump_json(), "AZUREML_GIT_COMMIT": git.sha, "AZUREML_GIT_BRANCH": git.branch}
        )
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
        outputs={RESULTS: Output(type=AssetTypes.URI_FOLDER), CHECKPOINTS: checkpoints_output()},
        environment_variables=variables,
        timeout=config.timeout_s,
    )


def checkpoints_output():
    """The output training checkpoints are written to: mounted read-write (rw_mount), so that each save lands in
    the datastore as it is written, not at the end of a job that may be preempted first."""
    from azure.ai.ml import Output
    from azure.ai.ml.constants import AssetTypes, InputOutputModes

    return Output(type=AssetTypes.URI_FOLDER, mode=InputOutputModes.RW_MOUNT)


@dataclass(frozen=True)
class StageFiles:
    """A training stage's files as dvc.yaml declares them (paths relative to the repository root)."""

    inputs: tuple[str, ...]  # deps the code snapshot lacks (.amlignore leaves them out): the job's Inputs
    outputs: tuple[str, ...]  # outs, metrics and plots: what the job's output `trained` brings back


def stage_files(module: str, root: str | Path = ".") -> StageFiles:
    """The files of the dvc.yaml stage whose cmd is `python -m <module>`, read from DVC's own index (templating
    resolved): its deps that the root ignore file keeps out of the code snapshot, judged file by file with the
    SDK's own matcher (so they must travel as job inputs), and all its outputs. InputError when no stage runs
    `module` or a dep is missing."""
    from azure.ai.ml._utils._asset_utils import get_ignore_file
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    root = Path(root)
    with Repo(str(root)) as repo:
        stages = [stage for stage in repo.index.stages if stage.cmd == f"python -m {module}"]
        if len(stages) != 1:
            raise InputError(f"{root / 'dvc.yaml'}: no stage has cmd `python -m {module}`")
        deps = [str(dep.def_path) for dep in stages[0].deps if not isinstance(dep, ParamsDependency)]
        outs = tuple(str(out.def_path) for out in stages[0].outs)
    missing = [dep for dep in deps if not (root / dep).exists()]
    if missing:  # dvc repro runs a stage only once its deps exist
        raise InputError(f"{root / 'dvc.yaml'}: deps {missing} of the stage running {module} are missing")
    ignore = get_ignore_file(root)

    def excluded(path: Path) -> bool:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        return any(ignore.is_file_excluded(file.resolve()) for file in files)

    return StageFiles(inputs=tuple(dep for dep in deps if excluded(root / dep)), outputs=outs)


def input_name(path: str) -> str:
    """A job input's name for a repository path: models/teacher -> models_teacher (letters, digits, _)."""
    return re.sub(r"\W", "_", path).lower()


def training_command(config: AzureML, module: str, files: StageFiles | None = None) -> str:
    """The command each node of a training job runs (per-node launch: torchrun starts processes_per_node workers).

    Checkpoints go to the job's mounted output `checkpoints`, which every node reads on a resume. With `files`:
    first each input is linked where dvc.yaml has it (the snapshot lacks it); after training, node 0
    (global rank 0 is on it, and only rank 0 writes) copies the outputs, at their repository paths, into `trained`.
    """
    dist = config.distribution
    launch = (
        f"{CHECKPOINTS_VARIABLE}=${{{{outputs.{CHECKPOINTS}}}}} "
        f"torchrun --nnodes {dist.nodes} --nproc_per_node {dist.processes_per_node} --node_rank $NODE_RANK "
        f"--master_addr $MASTER_ADDR --master_port $MASTER_PORT -m {module}"
    )
    if files is None:
        return launch
    place = [
        f"rm -rf {shlex.quote(path)} && mkdir -p {shlex.quote(str(Path(path).parent))} && "
        f"ln -s ${{{{inputs.{input_name(path)}}}}} {shlex.quote(path)}"
        for path in files.inputs
    ]
    outputs = " ".join(shlex.quote(path) for path in files.outputs)
    collect = f'if [ "$NODE_RANK" = 0 ]; then cp -R --parents {outputs} ${{{{outputs.{TRAINED}}}}}/; fi'
    return " && ".join([*place, launch, collect])


def training_job(config: AzureML, module: str, git: Git, root: str | Path = ".", files: StageFiles | None = None):
    """A multi-node training job for one stage module (e.g. stages.distill), launched per node with torchrun.

    Per-node launch (process_count_per_instance=1, torchrun starts processes_per_node workers on each node)
    rather than Azure ML's per-process launch: the stage's code then runs the same under `torchrun` on a
    laptop, a GPU runner and Azure ML, and torchrun restarts workers and owns the rendezvous. Azure ML sets
    MASTER_ADDR, MASTER_PORT and NODE_RANK on each node. The node count is passed as a literal.

    With `files` (stage_files), each input path under `root` is a uri_folder (uri_file) Input the SDK uploads,
    and the one output `trained` receives the stage's outputs (training_command)."""
    from azure.ai.ml import Input, Output, PyTorchDistribution, command
    from azure.ai.ml.constants import AssetTypes

    dist = config.distribution
    inputs, outputs = {}, {CHECKPOINTS: checkpoints_output()}
    if files is not None:
        for path in files.inputs:
            local = Path(root, path).resolve()
            kind = AssetTypes.URI_FOLDER if local.is_dir() else AssetTypes.URI_FILE
            inputs[input_name(path)] = Input(type=kind, path=str(local))
        outputs[TRAINED] = Output(type=AssetTypes.URI_FOLDER)
    return command(
        code=str(root),
        command=training_command(config, module, files),
        inputs=inputs,
        outputs=outputs,
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
    managed identity), waiting at most 30 s for each connection and answer (azure-core's default is 300 s).

    InputError naming the vault and the secret when the URL is not a vault's, the vault is unreachable, the identity
    cannot sign in, or the secret is missing, disabled, empty or not readable by that identity (Key Vault answers 403
    without the role Key Vault Secrets User). `kwargs` go to SecretClient."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
    )
    from azure.keyvault.secrets import SecretClient

    if not re.match(VAULT_URL, vault_url):
        raise InputError(f"Key Vault {vault_url!r}: not a vault URL (https://<vault>.vault.azure.net)")
    options = {"connection_timeout": 30, "read_timeout": 30, "retry_total": 3, **kwargs}
    client = SecretClient(vault_url=vault_url, credential=credential or azure_credential(), **options)
    try:
        value = client.get_secret(name).value
    except ResourceNotFoundError:
        raise InputError(f"Key Vault {vault_url}: no secret named {name!r} (teacher_key.secret)") from None
    except ClientAuthenticationError as err:  # before HttpResponseError, of which it is a kind
        raise InputError(f"Key Vault {vault_url}: sign-in failed for secret {name!r}: {err.message}") from None
    except HttpResponseError as err:
        reason = f"{err.status_code}: {err.reason}"
        raise InputError(f"Key Vault {vault_url}: secret {name!r} not readable ({reason})") from None
    except ServiceRequestError as err:
        raise InputError(f"Key Vault {vault_url}: unreachable ({err.message})") from None
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

    Raises InputError when the variables are missing, or the service is unreachable, refuses or answers without a
    token. Source: GitHub's "About security hardening with OpenID Connect" (the request) and azure/login (the
    audience)."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    url, bearer = os.environ.get(GITHUB_OIDC[0]), os.environ.get(GITHUB_OIDC[1])
    if not url or not bearer:
        raise InputError(f"{GITHUB_OIDC[0]} and {GITHUB_OIDC[1]} are not set: not a GitHub job with id-token: write")
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "audience"]
    query.append(("audience", GITHUB_OIDC_AUDIENCE))
    url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query), fragment=""))
    try:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {bearer}"})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise InputError(f"GitHub's OIDC token service ({GITHUB_OIDC[0]}) failed: {err}") from None
    token = answer.get("value") if isinstance(answer, dict) else None
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
    """A fresh GitHub OIDC token in `path`, mode 600 whatever was there before (written to a new file in the same
    folder, then renamed over it), for AZURE_FEDERATED_TOKEN_FILE: a process outside this one (`dvc pull` after
    a long job) then signs in with WorkloadIdentityCredential. InputError when `path` cannot be written."""
    token, path = github_oidc_token(), Path(path)
    try:
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 600
        with os.fdopen(descriptor, "w") as out:
            out.write(token)
        os.replace(temporary, path)
    except OSError as err:
        raise InputError(f"{path}: cannot write the token there ({err.strerror})") from None


# --- submit, follow, fetch ------------------------------------------------------------------------------------


PLACEHOLDER_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"  # the shipped azureml.yaml's


def check_workspace(config: AzureML, where: str | Path = CONFIG_FILE) -> None:
    """InputError when azureml.yaml still names the shipped placeholder subscription (nothing to submit to)."""
    if config.workspace.subscription_id == PLACEHOLDER_SUBSCRIPTION:
        raise InputError(
            f"{where}: azureml.workspace.subscription_id is the placeholder {PLACEHOLDER_SUBSCRIPTION}; set your "
            "subscription, resource group and workspace (README, section Azure ML)"
        )


@contextmanager
def workspace_answers(config: AzureML):
    """Azure ML's refusals of the request, as InputError naming what to check (exit 2): 401/403, the identity
    lacks its role on the workspace; 404, the workspace, the compute or the job named does not exist."""
    from azure.core.exceptions import HttpResponseError

    ws = config.workspace
    try:
        yield
    except HttpResponseError as err:
        where = f"workspace {ws.name} (resource group {ws.resource_group}, subscription {ws.subscription_id})"
        first = (err.message or "").strip().splitlines()[:1]
        if err.status_code in (401, 403):
            raise InputError(
                f"Azure ML refused the request ({err.status_code}) on {where}: the identity needs the role AzureML "
                f"Data Scientist there. {' '.join(first)}"
            ) from None
        if err.status_code == 404:
            raise InputError(
                f"Azure ML found no such resource ({err.status_code}) in {where}: check azureml.yaml's workspace "
                f"and compute.name, or the job's name. {' '.join(first)}"
            ) from None
        raise


class JobDidNotComplete(Exception):
    """The Azure ML job ended Failed or Canceled (or in any state but Completed)."""


ARM_SCOPE = "https://management.azure.com/.default"  # Azure Resource Manager, where workspaces and jobs live


def signed_in(credential, scope: str = ARM_SCOPE) -> None:
    """InputError naming the cause unless `credential` gets a token for `scope`: checked before anything is
    uploaded or submitted (azure-ai-ml would otherwise fail mid-submission, with its own exception around it)."""
    from azure.core.exceptions import ClientAuthenticationError

    try:
        credential.get_token(scope)
    except ClientAuthenticationError as err:
        raise InputError(
            "Azure sign-in failed (on a laptop: `az login`; in GitHub Actions: id-token: write with AZURE_CLIENT_ID "
            f"and AZURE_TENANT_ID; in an Azure ML job: the compute's managed identity):\n  {err.message}"
        ) from None


def client(config: AzureML, credential=None, **kwargs):
    """MLClient on the workspace, with `credential` or else azure_credential(), once it has signed in
    (signed_in: InputError otherwise)."""
    from azure.ai.ml import MLClient

    credential = credential or azure_credential()
    signed_in(credential)
    ws = config.workspace
    return MLClient(credential, ws.subscription_id, ws.resource_group, ws.name, **kwargs)


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


def fetch_trained(ml_client, name: str, outputs: Sequence[str], root: str | Path = ".") -> None:
    """Download a training job's output `trained` and move each of `outputs` (repository paths) into place,
    replacing what is there. JobDidNotComplete, and nothing moved, when any of them is missing from it."""
    root = Path(root)
    (root / DOWNLOADS).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root / DOWNLOADS) as tmp:
        ml_client.jobs.download(name, output_name=TRAINED, download_path=tmp)
        trained = Path(tmp) / "named-outputs" / TRAINED
        missing = [path for path in outputs if not (trained / path).exists()]
        if missing:
            raise JobDidNotComplete(f"Azure ML job {name}: its `{TRAINED}` output lacks {missing}")
        for path in outputs:
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            old = Path(tmp) / "replaced" / path
            if target.exists():
                old.parent.mkdir(parents=True, exist_ok=True)
                target.rename(old)
            (trained / path).rename(target)


def train_remotely(module: str, config: AzureML, root: str | Path = ".") -> str:
    """Run stage `module` as a multi-node training job and bring its outputs back; the job's name.

    In the `dvc repro` job (TRAINING_MARKER set), with the compute's managed identity: the stage's deps the code
    snapshot lacks go up as inputs, the job trains on distribution.nodes x processes_per_node processes, and its
    outputs land where dvc.yaml declares them, for DVC to cache. JobDidNotComplete when the job fails, is
    cancelled or returns too little (nothing is written then); InputError for a stage dvc.yaml does not know.
    Interrupted while it runs (KeyboardInterrupt), the job is cancelled."""
    root = Path(root)
    files = stage_files(module, root)
    git = git_identity(root)
    ml_client = client(config)
    with workspace_answers(config):
        name = ml_client.jobs.create_or_update(training_job(config, module, git, root, files)).name
        dist = config.distribution
        print(
            f"{module}: submitted Azure ML training job {name} ({dist.nodes} nodes x {dist.processes_per_node} "
            f"processes; inputs {list(files.inputs)})",
            file=sys.stderr,
            flush=True,
        )
        try:
            follow(ml_client, name)
        except KeyboardInterrupt:  # the stage stopped (Ctrl-C, SIGTERM): its nodes must not run on, billed
            cancel(ml_client, name)
            raise
        fetch_trained(ml_client, name, files.outputs, root)
    print(f"{module}: {', '.join(files.outputs)} from Azure ML job {name}", file=sys.stderr, flush=True)
    return name


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
    if args in (["-h"], ["--help"]):
        print(__doc__)
    elif args == ["requirements"]:
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
