"""Running a training stage in several processes (torchrun, data parallel through the Hugging Face Trainer).

A stage keeps `cmd: python -m stages.<name>` in dvc.yaml (a changed cmd would change its hash) and re-launches
itself under torchrun when params ask for more than one process; every process then runs the same `main()`, the
Trainer shards the batches, and only the main process (global rank 0) writes outputs.

In an Azure ML `dvc repro` job asked to train on several nodes (azureml.yaml's distribution.nodes > 1, passed
as slmops.azureml.TRAINING_MARKER), the stage instead submits itself as a multi-node training job and brings
its outputs back (slmops.azureml.train_remotely); on each node torchrun starts it again, as a launcher would.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import torch

from slmops import azureml
from slmops.core.config import Training
from slmops.core.errors import InputError

CHECKPOINTS = Path(".slmops/checkpoints")  # outside DVC's outputs, which a rerun deletes first
# Another folder for them, one that outlives this machine: in an Azure ML job, its mounted output `checkpoints`
# (slmops.azureml), where a preempted low-priority job's restart and every node of a multi-node job find them.
CHECKPOINTS_ENV = azureml.CHECKPOINTS_VARIABLE


def launched() -> bool:
    """True in a process a launcher started (torchrun, Azure ML's per-process launch): LOCAL_RANK is set."""
    return "LOCAL_RANK" in os.environ


def process_count(training: Training) -> int:
    """Processes of the training run, all nodes together (the world size).

    Started by a launcher: its WORLD_SIZE. Asked to train on Azure ML nodes (slmops.azureml.TRAINING_MARKER):
    distribution.nodes x processes_per_node there. Otherwise training.processes on this machine: an int, or auto
    (visible CUDA devices, 1 without CUDA). InputError when this machine would run more processes than it has
    CUDA devices (nccl needs one device per process), or the marker is bad."""
    if launched():
        return int(os.environ.get("WORLD_SIZE", "1"))
    remote = azureml.training_config()
    if remote is not None:
        return remote.distribution.nodes * remote.distribution.processes_per_node
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    count = max(devices, 1) if training.processes == "auto" else training.processes
    if devices and count > devices:
        raise InputError(
            f"training.processes: {count} processes but {devices} CUDA device(s) here; give at most {devices}, or auto"
        )
    return count


def check_batch_split(batch_size: int, training: Training, where: str) -> None:
    """InputError unless `batch_size` (examples per optimisation step) splits evenly over the processes of the
    run, all nodes together (process_count), and the accumulation steps of `training`; `where` names the key,
    e.g. distill.train.batch_size."""
    parts = process_count(training) * training.gradient_accumulation_steps
    if batch_size % parts:
        processes = (
            "the launcher's WORLD_SIZE"
            if launched()
            else "azureml.yaml's distribution.nodes x processes_per_node"
            if azureml.training_config()
            else "training.processes"
        )
        raise InputError(
            f"{where}: {batch_size} examples per step do not split over {processes} x "
            f"training.gradient_accumulation_steps = {parts}; make it a multiple of {parts}"
        )


def is_main_process() -> bool:
    """True in the one process that writes outputs: global rank 0 (torchrun's RANK), or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def relaunched(module: str, training: Training) -> bool:
    """Run stage `module` elsewhere when asked and this process was not started by a launcher; True when it did
    (its outputs are then written, and the caller returns).

    With TRAINING_MARKER set (an Azure ML `dvc repro` job, distribution.nodes > 1): as a multi-node Azure ML
    training job (slmops.azureml.train_remotely); a failed or cancelled job exits EXIT_JOB_FAILED (3), nothing
    written; SIGTERM or Ctrl-C while it runs cancels it. Otherwise, when N > 1 processes are asked for: again
    under `torchrun --standalone --nproc_per_node N`; a failed process ends this one with that process's exit
    code (2 for bad input), after torchrun has stopped the others."""
    if launched():
        return False
    remote = azureml.training_config()
    if remote is not None:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # DVC stopping: cancel the job too
        try:
            azureml.train_remotely(module, remote)
        except azureml.JobDidNotComplete as err:
            print(f"error: {module}: {err}", file=sys.stderr)
            raise SystemExit(azureml.EXIT_JOB_FAILED) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
        return True
    count = process_count(training)
    if count == 1:
        return False
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    print(f"training on {count} processes: torchrun --standalone --nproc_per_node {count} -m {module}", flush=True)
    try:
        torchrun(["--standalone", f"--nproc_per_node={count}", "-m", module])
    except ChildFailedError as err:
        first = min(err.failures.values(), key=lambda failure: failure.timestamp)
        print(f"{module}: process {first.local_rank} failed with exit code {first.exitcode}", file=sys.stderr)
        raise SystemExit(first.exitcode if first.exitcode > 0 else 1) from None
    return True


def checkpoints_root() -> Path:
    """$SLMOPS_CHECKPOINTS when set (CHECKPOINTS_ENV), else .slmops/checkpoints in the working directory."""
    return Path(os.environ.get(CHECKPOINTS_ENV) or CHECKPOINTS)


def checkpoint_dir(stage: str, fingerprint: str) -> Path:
    """Where a stage's run with this fingerprint (slmops.train.trainer.run_fingerprint) keeps its checkpoints."""
    return checkpoints_root() / stage / fingerprint


def remove_checkpoints(stage: str) -> None:
    """Drop every checkpoint of `stage` once its outputs are written (main process only)."""
    shutil.rmtree(checkpoints_root() / stage, ignore_errors=True)
