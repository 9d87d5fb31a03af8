"""Training in several processes (torchrun, gloo on CPU), gradient accumulation, checkpoints and resume."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, TINY_LLAMA, default
from safetensors.torch import load_file
from transformers import TrainingArguments

from slmops.core.task import render_answer
from slmops.models.hf import build_llama, tokenizer_fingerprint
from slmops.train.data import IGNORE, Collator, attach_teacher_logprobs, encode_chat
from slmops.train.logprobs import write_store
from slmops.train.trainer import DistillationTrainer

ROWS = 32  # examples per stage run: 4 steps per epoch at batch 8, 12 in 3 epochs (curves log every 10)
TOP_K = 4


def kd_examples(tokenizer, task, labelled, count, kd_rows):
    """`count` encoded examples of different lengths; those at `kd_rows` carry random teacher top-k log-probs."""
    rng = np.random.default_rng(0)
    examples = []
    for i, row in enumerate(labelled[:count]):
        example = encode_chat(tokenizer, task.messages(row["message"], render_answer(row["label"])))
        if i in kd_rows:
            n = sum(label != IGNORE for label in example["labels"])
            ids = rng.integers(0, len(tokenizer), size=(n, TOP_K))
            logprobs = np.log(rng.dirichlet(np.ones(TOP_K), size=n))
            example = attach_teacher_logprobs(example, ids, logprobs)
        examples.append(example)
    return examples


def one_sgd_step(tokenizer, examples, batch_size, accumulation, tmp_path):
    """Weight change of one plain SGD step (lr 1, no clipping) over all `examples`."""
    torch.manual_seed(0)
    model = build_llama(TINY_LLAMA, tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = TrainingArguments(
        output_dir=str(tmp_path / f"out-{batch_size}-{accumulation}"),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=1.0,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        weight_decay=0.0,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
        seed=0,
    )
    kd = default("distill.kd", alpha=0.5, loss="forward_kl", temperature=2.0)
    DistillationTrainer(
        model=model, args=args, train_dataset=examples, data_collator=Collator(tokenizer.pad_token_id), kd=kd
    ).train()
    return torch.cat([(model.state_dict()[k] - before[k]).flatten() for k in before])


def test_accumulation_gives_the_update_of_one_big_batch(tokenizer, task, labelled, tmp_path):
    """The step's CE and KD are normalised by the token counts of all its micro-batches: 2 x batch 2 moves the
    weights as far as 1 x batch 4 (the per-batch mean moved them 2.00x as far), for examples of different
    lengths, one with teacher log-probs (so one micro-batch has none: CE keeps its alpha weight there)."""
    examples = kd_examples(tokenizer, task, labelled, 4, kd_rows={0})
    assert len({len(e["input_ids"]) for e in examples}) > 1
    big = one_sgd_step(tokenizer, examples, 4, 1, tmp_path)
    accumulated = one_sgd_step(tokenizer, examples, 2, 2, tmp_path)
    assert big.norm() > 0
    assert (accumulated.norm() / big.norm()).item() == pytest.approx(1.0, abs=1e-4)
    torch.testing.assert_close(accumulated, big, rtol=1e-4, atol=1e-6)


def stage_env():
    return {
        "PYTHONPATH": str(ROOT),
        "PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin",
        "OMP_NUM_THREADS": "1",
    }


def run_stage(cwd, stage, code=None):
    """`python -m stages.<stage>` in cwd (or `python -c code`); the completed process."""
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", f"stages.{stage}"]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=stage_env(), timeout=300)


def set_params(folder, **sections):
    params = yaml.safe_load((folder / "params.yaml").read_text())
    for dotted, value in sections.items():
        *path, key = dotted.split(".")
        node = params
        for part in path:
            node = node[part]
        node[key] = value
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def copy_project(folder):
    """params.yaml and data/ (but the synthetic set) of the project in `folder`."""
    folder.mkdir()
    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    shutil.copytree(ROOT / "data", folder / "data", ignore=shutil.ignore_patterns("synthetic"))


SMALL_TRAIN = {
    "epochs": 3,
    "batch_size": 8,
    "learning_rate": 0.01,
    "weight_decay": 0.0,
    "warmup_ratio": 0.0,
    "group_by_length": False,
}


def finetune_project(folder, tiny_hf_dir, labelled, processes, checkpoint_steps=0):
    """A working directory for stages.finetune: params, task, ROWS labelled rows, models/student (tiny)."""
    copy_project(folder)
    (folder / "data/seed/labelled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labelled[:ROWS]))
    shutil.copytree(tiny_hf_dir, folder / "models/student")
    set_params(
        folder,
        **{
            "finetune.method": "lora",
            "finetune.train": SMALL_TRAIN,
            "training.processes": processes,
            "training.checkpoint_steps": checkpoint_steps,
        },
    )
    return folder


def distill_project(folder, tiny_hf_dir, labelled, tokenizer, processes):
    """A working directory for stages.distill: a teacher folder with the tiny tokenizer, synthetic answers of
    which every other one carries teacher top-k log-probs, a tiny student shape, logit KD on."""
    copy_project(folder)
    shutil.copytree(tiny_hf_dir, folder / "models/teacher")
    synthetic = folder / "data/synthetic"
    synthetic.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows, tokens, ids, logprobs = [], [], [], []
    for i, row in enumerate(labelled[:ROWS]):
        canonical = render_answer(row["label"])
        answer_ids = tokenizer(canonical, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        tokens.append(answer_ids)
        ids.append(rng.integers(0, len(tokenizer), size=(len(answer_ids), TOP_K)))
        logprobs.append(np.log(rng.dirichlet(np.ones(TOP_K), size=len(answer_ids))))
        answer = canonical if i % 2 == 0 else canonical + " "  # odd rows: text differs, CE only
        rows.append(
            {"message": row["message"], "answer": answer, "label": row["label"], "token_count": len(answer_ids)}
        )
    for row, offset in zip(rows, write_store(synthetic, tokens, ids, logprobs), strict=True):
        row["token_offset"] = offset
    (synthetic / "accepted.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = {"logprobs_top_k": TOP_K, "tokenizer_sha256": tokenizer_fingerprint(tokenizer)}
    (synthetic / "meta.json").write_text(json.dumps(meta))
    set_params(
        folder,
        **{
            "student.config": TINY_LLAMA.model_dump(),
            "distill.train": SMALL_TRAIN,
            "distill.kd.alpha": 0.5,
            "training.processes": processes,
            "training.checkpoint_steps": 0,
        },
    )
    return folder


def weights(folder):
    return load_file(folder / "model.safetensors")


def assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"largest weight difference {worst} > {atol}"


def assert_ran_on(result, processes):
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote models/") == 1, result.stdout  # the main process alone writes
    assert f"({processes} process(es))" in result.stdout
    if processes > 1:
        assert f"torchrun --standalone --nproc_per_node {processes}" in result.stdout


def no_temporaries(folder):
    return [p.name for p in (folder / "models").iterdir() if ".tmp-" in p.name or ".old-" in p.name]


# Two processes split each step's batch of 8 and all-reduce the gradients: the same examples per step (accelerate
# shards one seeded sampler), the same normalised loss; only the order of float additions differs.
WEIGHT_ATOL = 1e-5
LOSS_RTOL = 1e-4


def test_distill_on_two_processes_matches_one(tmp_path, tiny_hf_dir, labelled, tokenizer):
    one = distill_project(tmp_path / "one", tiny_hf_dir, labelled, tokenizer, 1)
    two = distill_project(tmp_path / "two", tiny_hf_dir, labelled, tokenizer, 2)
    assert_ran_on(run_stage(one, "distill"), 1)
    assert_ran_on(run_stage(two, "distill"), 2)
    metrics = {name: json.loads((f / "reports/distill.json").read_text()) for name, f in [("1", one), ("2", two)]}
    assert metrics["1"]["world_size"] == 1 and metrics["2"]["world_size"] == 2
    assert metrics["2"]["logit_kd"] and metrics["2"]["logit_kd_examples"] == ROWS // 2
    assert metrics["1"]["steps"] == metrics["2"]["steps"] == 12
    assert metrics["2"]["train_loss"] == pytest.approx(metrics["1"]["train_loss"], rel=LOSS_RTOL)
    assert_same_weights(weights(one / "models/student"), weights(two / "models/student"), WEIGHT_ATOL)
    assert (two / "reports/train/distill/plots/metrics/loss.tsv").is_file()
    assert no_temporaries(two) == [] and not (two / ".slmops/checkpoints/distill").exists()


def test_finetune_on_two_processes_matches_one(tmp_path, tiny_hf_dir, labelled):
    one = finetune_project(tmp_path / "one", tiny_hf_dir, labelled, 1)
    two = finetune_project(tmp_path / "two", tiny_hf_dir, labelled, 2)
    assert_ran_on(run_stage(one, "finetune"), 1)
    assert_ran_on(run_stage(two, "finetune"), 2)
    metrics = [json.loads((f / "reports/finetune.json").read_text()) for f in (one, two)]
    assert [m["world_size"] for m in metrics] == [1, 2] and metrics[0]["steps"] == metrics[1]["steps"] == 12
    assert metrics[1]["train_loss"] == pytest.approx(metrics[0]["train_loss"], rel=LOSS_RTOL)
    assert_same_weights(weights(one / "models/finetuned"), weights(two / "models/finetuned"), WEIGHT_ATOL)
    assert no_temporaries(two) == []


def test_a_batch_that_does_not_split_over_the_processes_is_refused_before_any_work(tmp_path, tiny_hf_dir, labelled):
    folder = finetune_project(tmp_path / "p", tiny_hf_dir, labelled, 3)
    result = run_stage(folder, "finetune")
    assert result.returncode == 2
    assert "finetune.train.batch_size: 8 examples per step do not split over training.processes" in result.stderr
    assert "torchrun" not in result.stdout and not (folder / "models/finetuned").exists()


# Kills the stage from inside at a fixed step, so that the test does not race the training.
KILLED_AT_STEP = """
import os, signal
from slmops.train.trainer import DistillationTrainer
step = DistillationTrainer.training_step
def dying(self, *args, **kwargs):
    if self.state.global_step == {step}:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, *args, **kwargs)
DistillationTrainer.training_step = dying
from stages.finetune import main
main()
"""


def test_a_killed_finetune_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_run(
    tmp_path, tiny_hf_dir, labelled
):
    whole = finetune_project(tmp_path / "whole", tiny_hf_dir, labelled, 1, checkpoint_steps=2)
    killed = finetune_project(tmp_path / "killed", tiny_hf_dir, labelled, 1, checkpoint_steps=2)
    assert_ran_on(run_stage(whole, "finetune"), 1)

    first = run_stage(killed, None, code=KILLED_AT_STEP.format(step=5))
    assert first.returncode == -9, first.stderr[-3000:]
    assert not (killed / "models/finetuned").exists()
    saved = sorted(p.name for p in (killed / ".slmops/checkpoints/finetune").glob("*/checkpoint-*"))
    assert saved == ["checkpoint-2", "checkpoint-4"]  # the newest two are kept

    second = run_stage(killed, "finetune")
    assert_ran_on(second, 1)
    assert "resuming from .slmops/checkpoints/finetune/" in second.stdout
    assert second.stdout.split("resuming from ")[1].split("\n")[0].endswith("/checkpoint-4")
    metrics = json.loads((killed / "reports/finetune.json").read_text())
    reference = json.loads((whole / "reports/finetune.json").read_text())
    assert metrics["resumed_from_step"] == 4 and reference["resumed_from_step"] == 0
    assert metrics["steps"] == reference["steps"] == 12
    # same machine, same seed: optimizer, schedule, random states and data position come back with the checkpoint
    assert_same_weights(weights(whole / "models/finetuned"), weights(killed / "models/finetuned"), 0.0)
    # the curve has the whole run's points; the point logged over the steps around the resume (5-10) averages
    # only those after it (the Trainer keeps no running loss in a checkpoint), the later ones are the same
    curves = [(f / "reports/train/finetune/plots/metrics/loss.tsv").read_text().splitlines() for f in (killed, whole)]
    assert len(curves[0]) == len(curves[1]) == 3 and curves[0][-1] == curves[1][-1]
    assert not (killed / ".slmops/checkpoints/finetune").exists()  # removed after success


def test_process_count_auto_and_more_processes_than_gpus(monkeypatch):
    from slmops.core.errors import InputError
    from slmops.train.parallel import process_count

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process_count(default("training", processes="auto")) == 1
    assert process_count(default("training", processes=3)) == 3  # gloo: any count on a CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert process_count(default("training", processes="auto")) == 2
    with pytest.raises(InputError, match=r"training.processes: 4 processes but 2 CUDA device\(s\) here"):
        process_count(default("training", processes=4))


def test_the_world_of_a_launcher_or_of_azure_ml_nodes_decides_the_batch_split(monkeypatch):
    """Under torchrun (one or several nodes) the processes are its WORLD_SIZE, all nodes together, whatever
    training.processes says; in an Azure ML `dvc repro` job asked for nodes, nodes x processes_per_node."""
    from slmops import azureml
    from slmops.core.errors import InputError
    from slmops.train.parallel import check_batch_split, is_main_process, process_count

    training = default("training", processes=1)
    monkeypatch.setenv("LOCAL_RANK", "0")  # what torchrun sets in each worker: rank 3 of 2 nodes x 2 processes
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert process_count(training) == 4 and not is_main_process()
    check_batch_split(8, training, "distill.train.batch_size")
    with pytest.raises(InputError, match="6 examples per step do not split over the launcher's WORLD_SIZE x"):
        check_batch_split(6, training, "distill.train.batch_size")
    for name in ("LOCAL_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name)
    config = azureml.load_config(ROOT / "azureml.yaml")
    nodes = config.model_copy(
        update={
            "compute": config.compute.model_copy(update={"max_instances": 3}),
            "distribution": azureml.Distribution(nodes=3, processes_per_node=2),
        }
    )
    monkeypatch.setenv(azureml.TRAINING_MARKER, nodes.model_dump_json())
    assert process_count(training) == 6 and is_main_process()


@pytest.mark.parametrize(
    ("value", "message"), [(0, "0 processes; give 1 or more, or auto"), ("all", "Input should be 'auto'")]
)
def test_a_bad_process_count_is_refused_with_the_key(value, message):
    from slmops.core.errors import InputError
    from slmops.core.params import parse_params

    text = (ROOT / "params.yaml").read_text().replace("  processes: 1 ", f"  processes: {value} ")
    with pytest.raises(InputError) as err:
        parse_params(text, "params.yaml", check_paths=False)
    assert "training.processes" in str(err.value) and message in str(err.value)


def test_checkpoints_go_where_slmops_checkpoints_says(monkeypatch, tmp_path):
    """In an Azure ML job, SLMOPS_CHECKPOINTS is its mounted output `checkpoints` (slmops.azureml.JOB_COMMAND)."""
    from slmops.train.parallel import checkpoint_dir, remove_checkpoints

    assert checkpoint_dir("distill", "abc") == Path(".slmops/checkpoints/distill/abc")
    monkeypatch.setenv("SLMOPS_CHECKPOINTS", str(tmp_path / "mounted"))
    assert checkpoint_dir("distill", "abc") == tmp_path / "mounted/distill/abc"
    checkpoint_dir("distill", "abc").mkdir(parents=True)
    remove_checkpoints("distill")
    assert list((tmp_path / "mounted").iterdir()) == []
