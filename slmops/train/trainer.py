"""Supervised and distillation training of causal LMs with the Hugging Face Trainer.

One dataset shape serves every stage: chat examples whose prompt tokens are masked out of the
loss; distillation examples also carry the teacher's top-k log-probs for each answer token.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import DVCLiveCallback

from slmops.core.config import KD, Train
from slmops.core.files import atomic_dir
from slmops.train import losses
from slmops.train.data import IGNORE, Collator


class DistillationTrainer(Trainer):
    """Trainer whose loss is alpha * CE + (1 - alpha) * T^2 * KD when the batch has teacher log-probs.

    CE averages over the answer tokens of the whole optimisation step and KD over the answer positions that have
    teacher log-probs (kd_mask), counted over every micro-batch of gradient accumulation and every process, so
    that accumulation and data parallelism give the update of one big batch."""

    loss_is_scaled_for_ga = True  # compute_loss divides by the step's counts; the Trainer must not divide again

    def __init__(self, *args, kd: KD | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.kd = kd
        self.kd_items_in_batch = None

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The step's micro-batches, and its answer-token count over all of them and all processes (the
        `num_items_in_batch` that compute_loss divides by); the count of KD positions goes to kd_items_in_batch."""
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        counts = torch.zeros(2, dtype=torch.long, device=device)
        for batch in batches:
            answer = batch["labels"][:, 1:] != IGNORE
            counts[0] += answer.sum().to(device)
            if "kd_mask" in batch:
                counts[1] += (answer & batch["kd_mask"][:, 1:]).sum().to(device)
        if self.args.world_size > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        self.kd_items_in_batch = counts[1]
        return batches, counts[0]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Loss of this micro-batch's share of the step: sums over its tokens divided by the step's counts (times
        the process count, as DDP averages gradients over processes). Without `num_items_in_batch` (a batch on
        its own), means over this batch."""
        labels = inputs.pop("labels")[:, 1:]
        kd_ids = inputs.pop("kd_ids", None)
        kd_logprobs = inputs.pop("kd_logprobs", None)
        kd_mask = inputs.pop("kd_mask", None)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        logits = outputs.logits[:, :-1]
        tokens = labels != IGNORE
        answer = tokens & kd_mask[:, 1:] if kd_mask is not None else None
        if num_items_in_batch is None:
            ce_items, kd_items, processes = tokens.sum(), answer.sum() if answer is not None else None, 1
        else:
            ce_items, kd_items, processes = num_items_in_batch, self.kd_items_in_batch, self.accelerator.num_processes
        ce_sum = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
        )
        loss = ce_sum / ce_items.clamp(min=1)
        # alpha weighs CE in every micro-batch of a step that has KD positions, also in those that have none
        if self.kd is not None and kd_items is not None and kd_items > 0 and self.kd.alpha < 1.0:
            kd_sum = logits.new_zeros(())
            if answer is not None and answer.any():
                kd_mean = losses.kd_loss(
                    self.kd.loss,
                    logits[answer],
                    kd_ids[:, 1:][answer],
                    kd_logprobs[:, 1:][answer],
                    self.kd.temperature,
                    self.kd.beta,
                )
                kd_sum = kd_mean * answer.sum()
            loss = self.kd.alpha * loss + (1.0 - self.kd.alpha) * self.kd.temperature**2 * kd_sum / kd_items
        loss = loss * processes
        return (loss, outputs) if return_outputs else loss


LOGGING_STEPS = 10


def run_fingerprint(model, examples: list[dict], *settings) -> str:
    """sha256 (hex) of a training run's inputs: the model's starting weights, the encoded examples and `settings`
    (pydantic sections or JSON-able values). Equal on every process of a run; names its checkpoint folder."""
    digest = hashlib.sha256()
    for value in settings:
        value = value.model_dump() if hasattr(value, "model_dump") else value
        digest.update(json.dumps(value, sort_keys=True).encode())
    for example in examples:
        for key in sorted(example):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(example[key]).tobytes())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


def last_checkpoint(folder: Path | None) -> Path | None:
    """The newest complete checkpoint-<step> in `folder` (trainer_state.json is written last), or None."""
    if folder is None or not folder.is_dir():
        return None
    complete = [c for c in folder.glob("checkpoint-*") if (c / "trainer_state.json").is_file()]
    return max(complete, key=lambda c: int(c.name.rsplit("-", 1)[1]), default=None)


class CurvesCallback(DVCLiveCallback):
    """dvclive's Trainer callback that, in a run resumed from a checkpoint, first writes the steps logged before
    it (the checkpoint's log history), so the curves are the whole run's."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        super().on_train_begin(args, state, control, model=model, **kwargs)
        for entry in state.log_history:
            self.on_log(args, state, control, logs={k: v for k, v in entry.items() if k != "step"})


class LogLastStep(TrainerCallback):
    """Log the last step too: the Trainer adds the loss of steps after the last log to `train_loss` from the
    main process alone, which under several processes is that process's share, not the step's loss."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == state.max_steps:
            control.should_log = True


def train(
    model,
    tokenizer,
    examples: list[dict],
    config: Train,
    seed: int,
    live_dir: str | Path,
    kd: KD | None = None,
    *,
    accumulation: int = 1,
    checkpoints: Path | None = None,
    checkpoint_steps: int = 0,
) -> dict:
    """Train `model` in place on encoded examples (slmops.train.data); returns {train_loss, steps, world_size,
    resumed_from_step}.

    `config.batch_size` examples make one optimisation step, split over the processes of the run (torchrun's
    WORLD_SIZE) and `accumulation` micro-batches; ValueError if they do not divide it (stages check it first
    with slmops.train.parallel.check_batch_split). With `checkpoints` and `checkpoint_steps` > 0, a checkpoint is
    saved there every `checkpoint_steps` steps and the newest complete one is resumed from (optimizer, schedule,
    random states and data position), so the result is the uninterrupted run's.

    Loss curves go to `live_dir` through dvclive, from the main process only, written in full at the end, so a
    killed run leaves the previous curves. With `kd`, batches that carry teacher log-probs add the KD term
    (DistillationTrainer)."""
    from dvclive import Live

    processes = int(os.environ.get("WORLD_SIZE", "1"))
    main_process = int(os.environ.get("RANK", "0")) == 0
    if config.batch_size % (processes * accumulation):
        raise ValueError(f"batch size {config.batch_size} does not split over {processes} x {accumulation}")
    saving = checkpoints is not None and checkpoint_steps > 0
    resume = last_checkpoint(checkpoints) if saving else None
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="slmops-trainer-"))
        callbacks = [LogLastStep()]
        if main_process:  # the others write nothing; each would otherwise replace the curves
            live_tmp = stack.enter_context(atomic_dir(live_dir))
            callbacks.append(CurvesCallback(live=Live(dir=str(live_tmp), save_dvc_exp=False, dvcyaml=None)))
        args = TrainingArguments(
            output_dir=str(checkpoints) if saving else scratch,
            num_train_epochs=config.epochs,
            per_device_train_batch_size=config.batch_size // (processes * accumulation),
            gradient_accumulation_steps=accumulation,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            warmup_steps=config.warmup_ratio,  # transformers 5 reads a value below 1 as a fraction of all steps
            lr_scheduler_type="cosine",
            train_sampling_strategy="group_by_length" if config.group_by_length else "random",
            logging_steps=LOGGING_STEPS,
            save_strategy="steps" if saving else "no",
            save_steps=checkpoint_steps if saving else 500,
            save_total_limit=2,  # the newest may be half-written when the process is killed while saving
            report_to="none",
            seed=seed,
            data_seed=seed,
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
            remove_unused_columns=False,
        )
        trainer = DistillationTrainer(
            model=model,
            args=args,
            train_dataset=examples,
            data_collator=Collator(tokenizer.pad_token_id),
            callbacks=callbacks,
            kd=kd,
        )
        if resume is not None and main_process:
            print(f"resuming from {resume}", flush=True)
        result = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    return {
        "train_loss": result.training_loss,
        "steps": result.global_step,
        "world_size": processes,
        "resumed_from_step": int(resume.name.rsplit("-", 1)[1]) if resume is not None else 0,
    }
