"""Supervised and distillation training of causal LMs with the Hugging Face Trainer.

One dataset shape serves every stage: chat examples whose prompt tokens are masked out of the
loss; distillation examples also carry the teacher's top-k log-probs for each answer token.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments
from transformers.integrations import DVCLiveCallback

from slmops.core.config import KD, Train
from slmops.core.files import atomic_dir
from slmops.train import losses
from slmops.train.data import IGNORE, Collator


class DistillationTrainer(Trainer):
    """Trainer whose loss is alpha * CE + (1 - alpha) * T^2 * KD when the batch has teacher log-probs; the KD
    term averages over the answer positions that have them (kd_mask)."""

    def __init__(self, *args, kd: KD | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.kd = kd

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")[:, 1:]
        kd_ids = inputs.pop("kd_ids", None)
        kd_logprobs = inputs.pop("kd_logprobs", None)
        kd_mask = inputs.pop("kd_mask", None)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        logits = outputs.logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE)
        answer = (labels != IGNORE) & kd_mask[:, 1:] if kd_mask is not None else None
        if self.kd is not None and answer is not None and answer.any() and self.kd.alpha < 1.0:
            kd = losses.kd_loss(
                self.kd.loss,
                logits[answer],
                kd_ids[:, 1:][answer],
                kd_logprobs[:, 1:][answer],
                self.kd.temperature,
                self.kd.beta,
            )
            loss = self.kd.alpha * loss + (1.0 - self.kd.alpha) * self.kd.temperature**2 * kd
        return (loss, outputs) if return_outputs else loss


LOGGING_STEPS = 10


def train(
    model, tokenizer, examples: list[dict], config: Train, seed: int, live_dir: str | Path, kd: KD | None = None
) -> dict:
    """Train `model` in place on encoded examples (slmops.train.data); returns {train_loss, steps}.

    Loss curves go to `live_dir` through dvclive, written in full at the end, so a killed run leaves the previous
    curves. With `kd`, batches that carry teacher log-probs add the KD term (DistillationTrainer)."""
    from dvclive import Live

    with tempfile.TemporaryDirectory(prefix="slmops-trainer-") as scratch, atomic_dir(live_dir) as live_tmp:
        args = TrainingArguments(
            output_dir=scratch,
            num_train_epochs=config.epochs,
            per_device_train_batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            weight_decay=config.weight_decay,
            warmup_steps=config.warmup_ratio,  # transformers 5 reads a value below 1 as a fraction of all steps
            lr_scheduler_type="cosine",
            logging_steps=LOGGING_STEPS,
            save_strategy="no",
            report_to="none",
            seed=seed,
            data_seed=seed,
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
            remove_unused_columns=False,
        )
        live = Live(dir=str(live_tmp), save_dvc_exp=False, dvcyaml=None)
        trainer = DistillationTrainer(
            model=model,
            args=args,
            train_dataset=examples,
            data_collator=Collator(tokenizer.pad_token_id),
            callbacks=[DVCLiveCallback(live=live)],
            kd=kd,
        )
        result = trainer.train()
    return {"train_loss": result.training_loss, "steps": result.global_step}
