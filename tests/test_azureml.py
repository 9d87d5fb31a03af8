"""The Azure ML job, environment, compute and distribution objects, built with azure-ai-ml and validated offline;
the committed azureml/*.yml and requirements current; the config's errors; the code snapshot's contents."""

import json
import re
import subprocess

import pytest
import yaml
from azure.ai.ml import load_compute, load_job
from conftest import ROOT

from slmops import azureml, cli
from slmops.core.errors import InputError

GIT = azureml.Git(sha="1234567" + "0" * 33, branch="feature")


@pytest.fixture()
def config():
    return azureml.load_config(ROOT / "azureml.yaml")


def as_json(value):
    return json.loads(json.dumps(value, default=str))


def write_config(tmp_path, **changes):
    tree = yaml.safe_load((ROOT / "azureml.yaml").read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = tree["azureml"]
        for part in parents:
            node = node[part]
        node[key] = value
    path = tmp_path / "azureml.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_the_job_validates_and_round_trips_through_yaml(config, tmp_path):
    node = azureml.build_job(config, GIT, ROOT)
    result = node._validate()
    assert result.passed, result.error_messages
    job = node._to_job()
    assert job._validate() is None  # raises ValidationException when invalid
    job.dump(tmp_path / "job.yml")
    loaded = load_job(tmp_path / "job.yml")
    assert as_json(loaded._to_job()._to_dict()) == as_json(job._to_dict())


def test_the_job_is_one_process_on_a_cluster_with_a_time_limit_and_one_named_output(config):
    job = azureml.build_job(config, GIT, ROOT)._to_job()
    assert job.distribution is None  # several `dvc repro` on the same stages at once otherwise
    assert job.resources.instance_count == 1
    assert job.compute == "gpu-cluster" and job.limits.timeout == 10800
    assert list(job.outputs) == ["results", "checkpoints"] and job.outputs["results"].type == "uri_folder"
    # training checkpoints on a read-write mounted output: a preempted job's restart resumes from them
    assert (job.outputs["checkpoints"].type, job.outputs["checkpoints"].mode) == ("uri_folder", "rw_mount")
    assert job.command == "SLMOPS_CHECKPOINTS=${{outputs.checkpoints}} bash scripts/azureml-job.sh ${{outputs.results}}"
    assert job.name is None  # Azure ML generates a unique name; the commit is in display_name and tags
    assert job.display_name == "dvc repro 12345670" and job.tags == {"git_sha": GIT.sha, "git_branch": "feature"}
    env = job.environment
    assert env.name == "CliV2AnonymousEnvironment" and env.build.path == str(ROOT / "azureml/env")


def test_the_environment_is_named_by_its_content(config, tmp_path):
    """Anonymous: its version is a hash of the build context, so an unchanged one is built once, a changed one anew."""
    import shutil

    first = azureml.environment(ROOT).version
    assert azureml.environment(ROOT).version == first
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "azureml/env", copy / "azureml/env")
    assert azureml.environment(copy).version == first
    (copy / "azureml/env/requirements.txt").write_text("torch==0.0.1\n")
    assert azureml.environment(copy).version != first


def test_job_environment_variables_hold_names_and_ids_only(config, tmp_path):
    path = write_config(
        tmp_path,
        **{
            "storage.identity_client_id": "11111111-2222-3333-4444-555555555555",
            "teacher_key.vault_url": "https://slmops-kv.vault.azure.net",
            "teacher_key.secret": "teacher-api-key",
            "teacher_key.env": "TEACHER_API_KEY",
        },
    )
    variables = azureml.build_job(azureml.load_config(path), GIT, ROOT).environment_variables
    assert variables == {
        "DVC_NO_ANALYTICS": "1",
        "AZURE_STORAGE_ACCOUNT": "slmopsdvc",
        "AZURE_TOKEN_CREDENTIALS": "ManagedIdentityCredential",
        "AZURE_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
        "TEACHER_KEY_VAULT_URL": "https://slmops-kv.vault.azure.net",
        "TEACHER_KEY_SECRET": "teacher-api-key",
        "TEACHER_KEY_ENV": "TEACHER_API_KEY",
    }


def test_the_compute_scales_to_zero_and_round_trips(config, tmp_path):
    compute = azureml.compute(config)
    assert compute.min_instances == 0 and compute.max_instances == 1 and compute.tier == "dedicated"
    assert compute.size == "Standard_NC4as_T4_v3" and compute.idle_time_before_scale_down == 900
    compute.dump(tmp_path / "compute.yml")
    assert as_json(load_compute(tmp_path / "compute.yml")._to_dict()) == as_json(compute._to_dict())


def test_a_multi_node_training_job_launches_torchrun_once_per_node(config, tmp_path):
    two_by_four = config.model_copy(update={"distribution": azureml.Distribution(nodes=2, processes_per_node=4)})
    node = azureml.training_job(two_by_four, "stages.distill", GIT, ROOT)
    assert node._validate().passed, node._validate().error_messages
    job = node._to_job()
    assert job._validate() is None
    assert job.resources.instance_count == 2
    assert job.distribution.type == "pytorch" and job.distribution.process_count_per_instance == 1
    # checkpoints on the job's read-write mounted output, which every node reads on a resume after preemption
    assert job.command.startswith(
        "SLMOPS_CHECKPOINTS=${{outputs.checkpoints}} torchrun --nnodes 2 --nproc_per_node 4 --node_rank $NODE_RANK "
    )
    assert job.outputs["checkpoints"].mode == "rw_mount"
    assert job.command.endswith("-m stages.distill")
    job.dump(tmp_path / "train.yml")
    dumped = yaml.safe_load((tmp_path / "train.yml").read_text())
    assert dumped["distribution"] == {"type": "pytorch", "process_count_per_instance": 1}
    assert as_json(load_job(tmp_path / "train.yml")._to_job()._to_dict()) == as_json(job._to_dict())


def test_a_multi_node_config_marks_the_dvc_repro_job_for_its_training_stages(config, tmp_path):
    """nodes > 1: the one-node job carries the config (names and ids) and the commit, which its training stages
    need to submit themselves (the snapshot has no .git); with one node, neither."""
    assert azureml.TRAINING_MARKER not in azureml.build_job(config, GIT, ROOT).environment_variables
    path = write_config(tmp_path, **{"compute.max_instances": 4, "distribution.nodes": 4})
    multi = azureml.load_config(path)
    job = azureml.build_job(multi, GIT, ROOT)._to_job()
    assert job.distribution is None and job.resources.instance_count == 1  # still one `dvc repro`
    variables = job.environment_variables
    assert variables["AZUREML_GIT_COMMIT"] == GIT.sha and variables["AZUREML_GIT_BRANCH"] == "feature"
    assert azureml.AzureML.model_validate_json(variables[azureml.TRAINING_MARKER]) == multi
    assert variables.items() >= azureml.job_environment_variables(multi).items()


def test_a_stage_training_job_places_its_inputs_and_returns_its_outputs(config, tmp_path):
    multi = config.model_copy(update={"distribution": azureml.Distribution(nodes=2, processes_per_node=4)})
    subprocess.run(["cp", "-R", str(ROOT / "azureml"), str(tmp_path / "azureml")], check=True)  # the image
    (tmp_path / "models/teacher").mkdir(parents=True)
    (tmp_path / "data/synthetic").mkdir(parents=True)
    files = azureml.StageFiles(
        inputs=("models/teacher", "data/synthetic"), outputs=("models/student", "reports/distill.json")
    )
    node = azureml.training_job(multi, "stages.distill", GIT, tmp_path, files)
    assert node._validate().passed, node._validate().error_messages
    job = node._to_job()
    assert job._validate() is None  # every ${{inputs.X}} / ${{outputs.Y}} of the command is declared
    assert {name: (i.type, i.path) for name, i in job.inputs.items()} == {
        "models_teacher": ("uri_folder", str(tmp_path / "models/teacher")),
        "data_synthetic": ("uri_folder", str(tmp_path / "data/synthetic")),
    }
    assert sorted(job.outputs) == ["checkpoints", "trained"] and job.outputs["trained"].type == "uri_folder"
    assert job.command == (
        "rm -rf models/teacher && mkdir -p models && ln -s ${{inputs.models_teacher}} models/teacher && "
        "rm -rf data/synthetic && mkdir -p data && ln -s ${{inputs.data_synthetic}} data/synthetic && "
        "SLMOPS_CHECKPOINTS=${{outputs.checkpoints}} torchrun --nnodes 2 --nproc_per_node 4 --node_rank $NODE_RANK "
        "--master_addr $MASTER_ADDR "
        "--master_port $MASTER_PORT -m stages.distill && "
        'if [ "$NODE_RANK" = 0 ]; then cp -R --parents models/student reports/distill.json ${{outputs.trained}}/; fi'
    )
    job.dump(tmp_path / "train.yml")
    assert as_json(load_job(tmp_path / "train.yml")._to_job()._to_dict()) == as_json(job._to_dict())


def test_stage_files_are_read_from_dvc_yaml(tmp_path):
    """The deps .amlignore keeps out of the snapshot (built by upstream stages) and the outs, metrics and plots,
    as DVC resolves dvc.yaml; a missing dep or an unknown module is an input error."""
    from dvc.repo import Repo

    for name in ("dvc.yaml", "params.yaml", ".amlignore"):
        subprocess.run(["cp", str(ROOT / name), str(tmp_path / name)], check=True)
    Repo.init(str(tmp_path), no_scm=True).close()
    with pytest.raises(InputError, match=r"deps \['stages/finetune.py'.*running stages.finetune are missing"):
        azureml.stage_files("stages.finetune", tmp_path)
    for dep in (
        "stages/finetune.py",
        "slmops/__init__.py",
        "slmops/azureml.py",
        "slmops/core/x.py",
        "slmops/train/data.py",
    ):
        (tmp_path / dep).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / dep).write_text("")
    for dep in ("lora", "losses", "parallel", "trainer"):
        (tmp_path / f"slmops/train/{dep}.py").write_text("")
    subprocess.run(["cp", "-R", str(ROOT / "data"), str(tmp_path / "data")], check=True)
    (tmp_path / "models/student").mkdir(parents=True)
    (tmp_path / "models/student/model.safetensors").write_bytes(b"weights")
    assert azureml.stage_files("stages.finetune", tmp_path) == azureml.StageFiles(
        inputs=("models/student",),
        outputs=(
            "models/finetuned",
            "models/adapter",
            "reports/finetune.json",
            "reports/train/finetune/plots/metrics",
        ),
    )
    with pytest.raises(InputError, match="no stage has cmd `python -m stages.nothing`"):
        azureml.stage_files("stages.nothing", tmp_path)


def test_committed_job_and_compute_yaml_are_current(config):
    """Reviewers read azureml/job.yml to see what runs: `python -m slmops.azureml dump` rewrites it."""
    expected_job = azureml.GENERATED + azureml.job_yaml(azureml.build_job(config, azureml.DUMP_GIT, ROOT), ROOT)
    assert (ROOT / "azureml/job.yml").read_text() == expected_job, "stale: python -m slmops.azureml dump"
    assert (ROOT / "azureml/compute.yml").read_text() == azureml.GENERATED + azureml.compute_yaml(config)
    assert str(ROOT) not in expected_job  # paths relative: the same file on every machine
    assert yaml.safe_load(expected_job)["code"] == "."


def test_the_image_requirements_are_the_pipeline_pins(config):
    text = (ROOT / "azureml/env/requirements.txt").read_text()
    assert text == azureml.requirements_text(ROOT / "pyproject.toml"), "stale: python -m slmops.azureml requirements"
    pins = [line for line in text.splitlines() if not line.startswith("#")]
    assert all(re.fullmatch(r"[\w.\-\[\]]+==[\w.]+", pin) for pin in pins), pins
    assert "torch==2.13.0" in pins and "dvc-azure==3.1.1" in pins and "azure-keyvault-secrets==4.12.0" in pins
    assert "azure-ai-ml==1.35.2" in pins  # the job's training stages submit multi-node jobs
    assert "COPY requirements.txt" in (ROOT / "azureml/env/Dockerfile").read_text()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"workspace.subscription_id": "my-sub"}, "azureml.workspace.subscription_id: String should match pattern"),
        ({"compute.tier": "spot"}, "azureml.compute.tier: Input should be 'dedicated' or 'low_priority'"),
        ({"timeout_s": "3h"}, "azureml.timeout_s: Input should be a valid integer"),
        ({"teacher_key.secret": "key"}, "azureml.teacher_key: vault_url, secret and env: give all three or none"),
        ({"compute.min_instances": 1}, "azureml.compute.min_instances: Extra inputs are not permitted"),
        ({"storage.account": "Not_An_Account"}, "azureml.storage.account: String should match pattern"),
        (
            {"distribution.nodes": 2},
            "azureml.distribution.nodes: 2 nodes, but azureml.compute.max_instances is 1: the cluster cannot start",
        ),
    ],
)
def test_a_bad_config_names_the_file_and_key_and_exits_2(tmp_path, capsys, change, message):
    path = write_config(tmp_path, **change)
    with pytest.raises(InputError, match=re.escape(f"{path}: {message}")):
        azureml.load_config(path)
    assert cli.main(["azureml", "submit", "--config", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_config_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="azureml.yaml: Azure ML config not found"):
        azureml.load_config(tmp_path / "azureml.yaml")


def test_no_stage_reads_the_azureml_config():
    """Changing where it runs must rerun nothing: no stage's deps or params name azureml.yaml, azureml/ or its keys
    (slmops/azureml.py, code distill and finetune run on several nodes, is a dep of theirs)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        deps = [dep if isinstance(dep, str) else next(iter(dep)) for dep in stage.get("deps", [])]
        assert not [d for d in deps if d == "azureml.yaml" or d.startswith("azureml/")], name
        params = [p if isinstance(p, str) else next(iter(p)) for p in stage.get("params", [])]
        assert not [p for p in params if "azureml" in str(p)], name
    assert "azureml" not in yaml.safe_load((ROOT / "params.yaml").read_text())


def test_the_code_snapshot_holds_no_secret_and_no_artifact(tmp_path):
    """What the SDK's own walker would upload from a checkout holding a DVC cache, local DVC config, .env files,
    built models and synthetic data: none of them, and every file git tracks that the job needs."""
    from azure.ai.ml._utils._asset_utils import get_ignore_file, get_upload_files_from_folder

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(checkout)], check=True)
    subprocess.run(["cp", str(ROOT / ".amlignore"), str(checkout / ".amlignore")], check=True)
    planted = [
        ".dvc/config.local",
        ".dvc/cache/files/md5/ab/cdef",
        ".dvc/tmp/lock",
        ".env",
        ".env.local",
        "models/student/model.safetensors",
        "models/foundry/tiny/model.onnx",
        "data/synthetic/train.jsonl",
        ".slmops/base-package/x",
        ".venv/bin/python",
        "reports/pr/report.md",
    ]
    for name in planted:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_text("secret or artifact")
    uploaded = {rel for _, rel in get_upload_files_from_folder(checkout, ignore_file=get_ignore_file(checkout))}
    assert not [name for name in uploaded if name.startswith(".git/")]
    assert not uploaded & set(planted)
    needed = {"dvc.yaml", "dvc.lock", "params.yaml", "scripts/azureml-job.sh", "stages/distill.py", ".dvc/config"}
    assert needed <= uploaded
    assert uploaded - {".amlignore"} <= set(tracked) | {".amlignore"}  # nothing git does not track


def test_the_cache_false_outputs_come_from_dvc_yaml():
    outputs = azureml.uncached_outputs(ROOT)
    plain = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    declared = {
        next(iter(entry)) if isinstance(entry, dict) else entry
        for stage in plain["stages"].values()
        for kind in ("outs", "metrics", "plots")
        for entry in stage.get(kind, [])
        if isinstance(entry, dict) and next(iter(entry.values())).get("cache") is False
    }
    assert set(outputs) == declared  # DVC's own reading of dvc.yaml, templating resolved
    assert "data/endpoint.json" in outputs and "reports/metrics.json" in outputs
    assert "models/student" not in outputs


def test_pipeline_sh_pulls_and_pushes_with_a_managed_identity_only(tmp_path):
    """has_credentials: a connection string, a key, a client id, or a managed identity (AZURE_TOKEN_CREDENTIALS or
    Azure ML's IDENTITY_ENDPOINT / MSI_ENDPOINT) with an account."""
    script = (ROOT / "scripts/pipeline.sh").read_text()
    function = re.search(r"^has_credentials\(\) \{.*?^\}", script, re.S | re.M)
    assert function, "has_credentials() not found in scripts/pipeline.sh"

    def has(**env):
        run = subprocess.run(["bash", "-c", f"{function.group(0)}\nhas_credentials"], env=env)
        return run.returncode == 0

    assert not has()
    assert not has(AZURE_STORAGE_ACCOUNT="slmopsdvc")  # an account and no way in
    assert has(AZURE_STORAGE_ACCOUNT="slmopsdvc", AZURE_TOKEN_CREDENTIALS="ManagedIdentityCredential")
    assert has(AZURE_STORAGE_ACCOUNT="slmopsdvc", IDENTITY_ENDPOINT="http://169.254.169.254/x")
    assert has(AZURE_STORAGE_ACCOUNT="slmopsdvc", MSI_ENDPOINT="http://169.254.169.254/x")
    assert has(AZURE_STORAGE_CONNECTION_STRING="x") and has(AZURE_STORAGE_KEY="x") and has(AZURE_CLIENT_ID="x")
