"""Running a training stage in several processes (torchrun, data parallel through the Hugging Face Trainer).

A stage keeps `cmd: python -m stages.<name>` in dvc.yaml (a changed cmd would change its hash) and re-launches
itself under torchrun when params ask for more than one process; every process then runs the same `main()`, the
Trainer shards the batches, and only the main process (global rank 0) writes outputs.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch

from slmops.core.config import Training
from slmops.core.errors import InputError

CHECKPOINTS = Path(".slmops/checkpoints")  # outside DVC's outputs, which a rerun deletes first


def process_count(training: Training) -> int:
    """Processes asked for: an int, or auto (visible CUDA devices, 1 without CUDA). InputError when there are
    more processes than CUDA devices (nccl needs one device per process)."""
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    count = max(devices, 1) if training.processes == "auto" else training.processes
    if devices and count > devices:
        raise InputError(
            f"training.processes: {count} processes but {devices} CUDA device(s) here; give at most {devices}, or auto"
        )
    return count


def check_batch_split(batch_size: int, training: Training, where: str) -> None:
    """InputError unless `batch_size` (examples per optimisation step) splits evenly over the processes and the
    accumulation steps of `training`; `where` names the key, e.g. distill.train.batch_size."""
    parts = process_count(training) * training.gradient_accumulation_steps
    if batch_size % parts:
        raise InputError(
            f"{where}: {batch_size} examples per step do not split over training.processes x "
            f"training.gradient_accumulation_steps = {parts}; make it a multiple of {parts}"
        )


def is_main_process() -> bool:
    """True in the one process that writes outputs: global rank 0 (torchrun's RANK), or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def relaunched(module: str, training: Training) -> bool:
    """Run `python -m <module>` again under `torchrun --standalone --nproc_per_node N` when N > 1 processes are
    asked for and this process was not started by a launcher; True when it did (the caller then returns).

    A failed process ends this one with that process's exit code (2 for bad input), after torchrun has stopped
    the others."""
    count = process_count(training)
    if count == 1 or "LOCAL_RANK" in os.environ:
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


def checkpoint_dir(stage: str, fingerprint: str) -> Path:
    """Where a stage's run with this fingerprint (slmops.train.trainer.run_fingerprint) keeps its checkpoints."""
    return CHECKPOINTS / stage / fingerprint


def remove_checkpoints(stage: str) -> None:
    """Drop every checkpoint of `stage` once its outputs are written (main process only)."""
    shutil.rmtree(CHECKPOINTS / stage, ignore_errors=True)
