"""Multi-node training from the Azure ML `dvc repro` job: with azureml.yaml's distribution.nodes > 1 the job
carries the config in slmops.azureml.TRAINING_MARKER, and distill (or finetune) run by DVC in it submits itself
as a training job, follows it and puts its outputs where dvc.yaml declares them.

The training job runs for real in the fake workspace (tests/fake_azureml.py, TrainingRun): two nodes on this
machine, each a copy of the uploaded code snapshot with the uploaded inputs, `torchrun` once per node over
loopback (gloo on the CPU), its output uploaded to Azurite and downloaded by the real MLClient."""

import json
import shutil
import sys
from pathlib import Path

import pytest
from azure.ai.ml.operations._run_history_constants import RunHistoryConstants
from conftest import ROOT, run_stage
from fake_azureml import FakeAzureML, FakeCredential, route_datastores_to_azurite
from test_parallel import ROWS, WEIGHT_ATOL, assert_same_weights, distill_project, finetune_project, weights

from slmops import azureml

SHA = "c0ffee" + "0" * 34
NODES = 2


def marker(nodes=NODES, processes_per_node=1, max_instances=NODES) -> str:
    """TRAINING_MARKER's value as build_job sets it: the shipped azureml.yaml with `nodes` x `processes_per_node`."""
    config = azureml.load_config(ROOT / "azureml.yaml")
    compute = config.compute.model_copy(update={"max_instances": max_instances})
    distribution = azureml.Distribution(nodes=nodes, processes_per_node=processes_per_node)
    return config.model_copy(update={"compute": compute, "distribution": distribution}).model_dump_json()


def as_job_snapshot(folder: Path) -> Path:
    """`folder` (a stage's working directory from test_parallel) made into what the `dvc repro` job has: the
    project's code, dvc.yaml, .amlignore and the environment's build context beside the data, and DVC without git
    (scripts/azureml-job.sh: core.no_scm)."""
    from dvc.repo import Repo

    for name in ("stages", "slmops", "azureml/env"):
        shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".amlignore"):
        shutil.copy(ROOT / name, folder / name)
    Repo.init(str(folder), no_scm=True).close()
    return folder


@pytest.fixture()
def fake(azurite, tmp_path, monkeypatch):
    """The fake workspace, with the stage's MLClient pointed at it; its training jobs' nodes run in tmp_path."""
    monkeypatch.setattr(RunHistoryConstants, "_WAIT_COMPLETION_POLLING_INTERVAL_MIN", 1)  # poll every second
    monkeypatch.setattr(RunHistoryConstants, "_WAIT_COMPLETION_POLLING_INTERVAL_MAX", 1)
    node_env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    service = FakeAzureML(azurite, None, nodes_dir=tmp_path / "nodes", node_env=node_env)
    route_datastores_to_azurite(monkeypatch, service)
    real_client = azureml.client
    monkeypatch.setattr(azureml, "client", lambda config: real_client(config, FakeCredential(), transport=service))
    return service


def training_body(fake) -> dict:
    [body] = [body for method, path, body in fake.requests if method == "PUT" and "/jobs/" in path]
    return body["properties"]


def uploaded_snapshot(fake) -> set[str]:
    return {b.name.split("/", 1)[1] for b in fake.blobs.get_container_client("codes").list_blobs()}  # <folder>/<path>


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_distill_trains_on_two_nodes_and_its_outputs_land_where_dvc_yaml_declares_them(
    fake, tmp_path, tiny_hf_dir, labelled, tokenizer
):
    one = distill_project(tmp_path / "one", tiny_hf_dir, labelled, tokenizer, 1)
    two = as_job_snapshot(distill_project(tmp_path / "two", tiny_hf_dir, labelled, tokenizer, 1))
    assert run_stage(one, "distill").returncode == 0

    result = run_stage(two, "distill", SLMOPS_AZUREML_TRAINING=marker(), AZUREML_GIT_COMMIT=SHA)

    assert result.returncode == 0, result.stderr[-3000:]
    [name] = fake.runs
    job = training_body(fake)
    assert job["distribution"] == {"distributionType": "PyTorch", "processCountPerInstance": 1}
    assert job["resources"]["instanceCount"] == NODES
    assert job["displayName"] == f"stages.distill x2 nodes {SHA[:8]}"
    assert azureml.TRAINING_MARKER not in job["environmentVariables"]  # the child trains, it does not submit again
    # The deps .amlignore keeps out of the snapshot go as inputs (uploaded); the rest of the stage is in it.
    assert {k: v["jobInputType"] for k, v in job["inputs"].items()} == {
        "models_teacher": "uri_folder",
        "data_synthetic": "uri_folder",
    }
    assert all("/paths/LocalUpload/" in v["uri"] for v in job["inputs"].values())
    assert {k: v["jobOutputType"] for k, v in job["outputs"].items()} == {
        "trained": "uri_folder",
        "checkpoints": "uri_folder",
    }
    # every node reads the checkpoints on a resume: one read-write mounted output for all of them
    assert job["outputs"]["checkpoints"]["mode"] == "ReadWriteMount"
    assert job["command"].count("SLMOPS_CHECKPOINTS=${{outputs.checkpoints}} torchrun ") == 1
    snapshot = uploaded_snapshot(fake)
    assert "stages/distill.py" in snapshot and "params.yaml" in snapshot and "data/task/task.yaml" in snapshot
    assert not [n for n in snapshot if n.startswith(("models/", "data/synthetic/", ".dvc/tmp", ".slmops/"))]
    assert "torchrun --nnodes 2 --nproc_per_node 1 --node_rank $NODE_RANK" in job["command"]

    # Written once, by global rank 0 (on node 0), into the one output, at the paths dvc.yaml declares.
    run = fake.runs[name]
    logs = [run.log(rank) for rank in range(NODES)]
    assert [log.count("wrote models/student") for log in logs] == [1, 0], logs
    assert f"({NODES} process(es))" in logs[0]
    declared = azureml.stage_files("stages.distill", two).outputs
    assert set(declared) == {"models/student", "reports/distill.json", "reports/train/distill/plots/metrics"}
    returned = tree(run.outputs["trained"])
    assert {path for path in returned if not any(path.startswith(d) for d in declared)} == set()
    assert not (run.folder / "node-1/models/student").exists() and not (run.folder / "node-1/reports").exists()
    for path in declared:
        assert (two / path).exists(), path
    assert tree(two / "models/student") == tree(run.outputs["trained"] / "models/student")
    assert not list((two / azureml.DOWNLOADS).iterdir())  # the download folder is gone

    metrics = {f: json.loads((f / "reports/distill.json").read_text()) for f in (one, two)}
    assert metrics[one]["world_size"] == 1 and metrics[two]["world_size"] == NODES
    assert metrics[two]["steps"] == metrics[one]["steps"] == 12 and metrics[two]["logit_kd_examples"] == ROWS // 2
    assert metrics[two]["train_loss"] == pytest.approx(metrics[one]["train_loss"], rel=1e-4)
    # Two nodes split each batch of 8 and all-reduce over gloo: the one-process run's weights up to the order of
    # float additions (test_parallel.py's tolerance for two processes on one machine).
    assert_same_weights(weights(one / "models/student"), weights(two / "models/student"), WEIGHT_ATOL)
    assert "submitted Azure ML training job" in result.stderr and "from Azure ML job" in result.stderr


@pytest.mark.slow
def test_a_failed_training_job_exits_3_and_writes_nothing(fake, tmp_path, tiny_hf_dir, labelled, tokenizer):
    folder = as_job_snapshot(distill_project(tmp_path / "p", tiny_hf_dir, labelled, tokenizer, 1))
    # Every node's command fails (an image without torchrun): at once, where a failing stage would first spend
    # seconds per node importing torch; the stage's side of a Failed job is the same.
    fake.node_env["PATH"] = "/usr/bin:/bin"

    result = run_stage(folder, "distill", SLMOPS_AZUREML_TRAINING=marker(), AZUREML_GIT_COMMIT=SHA)

    assert result.returncode == azureml.EXIT_JOB_FAILED == 3, result.stderr[-3000:]
    [name] = fake.runs
    assert f"error: stages.distill: Azure ML job {name} failed" in result.stderr
    assert fake.runs[name].status() == "Failed" and "torchrun: command not found" in fake.runs[name].log(0)
    assert not (folder / "models/student").exists() and not (folder / "reports").exists()
    assert not (folder / azureml.DOWNLOADS).exists()  # nothing downloaded


@pytest.mark.slow
def test_a_stage_stopped_while_its_job_runs_cancels_the_job(
    fake, tmp_path, tiny_hf_dir, labelled, tokenizer, monkeypatch
):
    """DVC stopped (Ctrl-C; SIGTERM is turned into the same): the nodes must not go on running, billed."""
    folder = as_job_snapshot(distill_project(tmp_path / "p", tiny_hf_dir, labelled, tokenizer, 1))

    def interrupted(ml_client, name):
        raise KeyboardInterrupt

    monkeypatch.setattr(azureml, "follow", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_stage(folder, "distill", SLMOPS_AZUREML_TRAINING=marker(), AZUREML_GIT_COMMIT=SHA)
    [name] = fake.runs
    assert fake.cancelled == [name]
    assert all(process.poll() is not None for process in fake.runs[name].processes)
    assert not (folder / "models/student").exists()


@pytest.mark.slow
def test_finetune_trains_on_two_nodes_like_one_process(fake, tmp_path, tiny_hf_dir, labelled):
    one = finetune_project(tmp_path / "one", tiny_hf_dir, labelled, 1)
    two = as_job_snapshot(finetune_project(tmp_path / "two", tiny_hf_dir, labelled, 1))
    assert run_stage(one, "finetune").returncode == 0

    result = run_stage(two, "finetune", SLMOPS_AZUREML_TRAINING=marker(), AZUREML_GIT_COMMIT=SHA)

    assert result.returncode == 0, result.stderr[-3000:]
    job = training_body(fake)
    assert list(job["inputs"]) == ["models_student"]  # data/seed and the task are in the snapshot
    for path in ("models/finetuned", "models/adapter/finetune.json", "reports/finetune.json"):
        assert (two / path).exists(), path
    metrics = [json.loads((f / "reports/finetune.json").read_text()) for f in (one, two)]
    assert [m["world_size"] for m in metrics] == [1, NODES] and metrics[0]["steps"] == metrics[1]["steps"] == 12
    assert metrics[1]["train_loss"] == pytest.approx(metrics[0]["train_loss"], rel=1e-4)
    assert_same_weights(weights(one / "models/finetuned"), weights(two / "models/finetuned"), WEIGHT_ATOL)


def test_a_batch_that_does_not_split_over_the_nodes_is_refused_before_submitting(
    tmp_path, tiny_hf_dir, labelled, tokenizer, monkeypatch
):
    folder = distill_project(tmp_path / "p", tiny_hf_dir, labelled, tokenizer, 1)
    monkeypatch.setattr(azureml, "client", lambda config: pytest.fail("submitted"))
    result = run_stage(folder, "distill", SLMOPS_AZUREML_TRAINING=marker(nodes=3, max_instances=3))
    assert result.returncode == 2
    assert (
        "distill.train.batch_size: 8 examples per step do not split over azureml.yaml's distribution.nodes x "
        "processes_per_node x training.gradient_accumulation_steps = 3" in result.stderr
    )


def test_a_bad_marker_exits_2_naming_the_variable_and_key(tmp_path, tiny_hf_dir, labelled, tokenizer):
    folder = distill_project(tmp_path / "p", tiny_hf_dir, labelled, tokenizer, 1)
    bad = json.loads(marker())
    bad["distribution"]["nodes"] = 0
    result = run_stage(folder, "distill", SLMOPS_AZUREML_TRAINING=json.dumps(bad))
    assert result.returncode == 2
    assert (
        "environment variable SLMOPS_AZUREML_TRAINING: azureml.distribution.nodes: Input should be greater than or "
        "equal to 1" in result.stderr
    )
    assert not (folder / "models/student").exists()
