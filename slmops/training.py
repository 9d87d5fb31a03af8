"""Supervised and distillation training of causal LMs with the Hugging Face Trainer.

One dataset shape serves every stage: chat examples whose prompt tokens are masked out of the
loss; distillation examples also carry the teacher's top-k log-probs for each answer token.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments
from transformers.integrations import DVCLiveCallback

from slmops import losses
from slmops.errors import InputError
from slmops.io import atomic_dir

IGNORE = -100


@dataclass
class TrainConfig:
    epochs: float
    batch_size: int
    learning_rate: float
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    seed: int = 0
    logging_steps: int = 10


@dataclass
class KDConfig:
    alpha: float  # weight of cross-entropy; (1 - alpha) goes to the KD term
    loss: str  # forward_kl | reverse_kl | jsd
    temperature: float
    beta: float = 0.5  # JSD only


def encode_chat(tokenizer, messages: list[dict], answer_ids: list[int] | None = None) -> dict:
    """Token ids of a chat whose last message is the answer; labels mask everything before it.

    With `answer_ids` (the teacher's own tokens) those are used as they are, so that stored
    per-token teacher log-probs stay aligned.
    """
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if answer_ids is None:
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise InputError("the tokenizer's chat template renders the prompt differently with and without the answer")
        answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    return {"input_ids": prompt_ids + list(answer_ids), "labels": [IGNORE] * len(prompt_ids) + list(answer_ids)}


def attach_teacher_logprobs(example: dict, topk_ids: np.ndarray, topk_logprobs: np.ndarray) -> dict:
    """Add per-position teacher top-k (ids, log-probs), aligned with the answer tokens of `example`."""
    n_prompt = example["labels"].count(IGNORE)
    if n_prompt + len(topk_ids) != len(example["input_ids"]):
        raise ValueError("teacher log-probs do not cover the answer tokens one to one")
    k = topk_ids.shape[1]
    ids = np.zeros((len(example["input_ids"]), k), dtype=np.int64)
    logprobs = np.zeros((len(example["input_ids"]), k), dtype=np.float32)
    ids[n_prompt:] = topk_ids
    logprobs[n_prompt:] = topk_logprobs
    return {**example, "kd_ids": ids, "kd_logprobs": logprobs}


class Collator:
    """Right-pads a batch; KD arrays are padded with zeros (those positions carry no label)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict]) -> dict:
        width = max(len(ex["input_ids"]) for ex in batch)
        out = {
            "input_ids": torch.full((len(batch), width), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(batch), width), dtype=torch.long),
            "labels": torch.full((len(batch), width), IGNORE, dtype=torch.long),
        }
        has_kd = "kd_ids" in batch[0]
        if has_kd:
            k = batch[0]["kd_ids"].shape[1]
            out["kd_ids"] = torch.zeros((len(batch), width, k), dtype=torch.long)
            out["kd_logprobs"] = torch.zeros((len(batch), width, k), dtype=torch.float32)
        for row, ex in enumerate(batch):
            n = len(ex["input_ids"])
            out["input_ids"][row, :n] = torch.tensor(ex["input_ids"])
            out["attention_mask"][row, :n] = 1
            out["labels"][row, :n] = torch.tensor(ex["labels"])
            if has_kd:
                out["kd_ids"][row, :n] = torch.from_numpy(ex["kd_ids"])
                out["kd_logprobs"][row, :n] = torch.from_numpy(ex["kd_logprobs"])
        return out


class DistillationTrainer(Trainer):
    """Trainer whose loss is alpha * CE + (1 - alpha) * T^2 * KD when the batch has teacher log-probs."""

    def __init__(self, *args, kd: KDConfig | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.kd = kd

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")[:, 1:]
        kd_ids = inputs.pop("kd_ids", None)
        kd_logprobs = inputs.pop("kd_logprobs", None)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        logits = outputs.logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=IGNORE)
        if self.kd is not None and kd_ids is not None and self.kd.alpha < 1.0:
            answer = labels != IGNORE
            kd = losses.kd_loss(
                self.kd.loss, logits[answer], kd_ids[:, 1:][answer], kd_logprobs[:, 1:][answer],
                self.kd.temperature, self.kd.beta,
            )
            loss = self.kd.alpha * loss + (1.0 - self.kd.alpha) * self.kd.temperature**2 * kd
        return (loss, outputs) if return_outputs else loss


def train(model, tokenizer, examples: list[dict], config: TrainConfig, live_dir: str | Path, kd: KDConfig | None = None):
    """Train `model` in place on encoded examples; loss curves go to `live_dir` through dvclive
    (written in full at the end, so a killed run leaves the previous curves)."""
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
            logging_steps=config.logging_steps,
            save_strategy="no",
            report_to="none",
            seed=config.seed,
            data_seed=config.seed,
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
