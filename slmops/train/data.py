"""Training examples: chats encoded with their prompt tokens masked out of the loss, optionally carrying the
teacher's top-k log-probs per answer token, and the collator that pads them into batches."""

from __future__ import annotations

import numpy as np
import torch

from slmops.core.errors import InputError
from slmops.core.task import Task, render_answer

IGNORE = -100


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
        answer_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
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
    """Right-pads a batch; KD arrays are padded with zeros. `kd_mask` (batch, width) marks the answer positions
    that carry teacher log-probs: none of an example without them (slmops.train.student.distillation_examples)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict]) -> dict:
        width = max(len(ex["input_ids"]) for ex in batch)
        out = {
            "input_ids": torch.full((len(batch), width), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(batch), width), dtype=torch.long),
            "labels": torch.full((len(batch), width), IGNORE, dtype=torch.long),
        }
        with_kd = [ex for ex in batch if "kd_ids" in ex]
        if with_kd:
            k = with_kd[0]["kd_ids"].shape[1]
            out["kd_ids"] = torch.zeros((len(batch), width, k), dtype=torch.long)
            out["kd_logprobs"] = torch.zeros((len(batch), width, k), dtype=torch.float32)
            out["kd_mask"] = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, ex in enumerate(batch):
            n = len(ex["input_ids"])
            out["input_ids"][row, :n] = torch.tensor(ex["input_ids"])
            out["attention_mask"][row, :n] = 1
            out["labels"][row, :n] = torch.tensor(ex["labels"])
            if "kd_ids" in ex:
                out["kd_ids"][row, :n] = torch.from_numpy(ex["kd_ids"])
                out["kd_logprobs"][row, :n] = torch.from_numpy(ex["kd_logprobs"])
                out["kd_mask"][row, :n] = out["labels"][row, :n] != IGNORE
        return out


def sft_examples(task: Task, tokenizer, rows: list[dict]) -> list[dict]:
    """Encoded chat examples (message in, canonical JSON answer out) from labelled rows."""
    return [encode_chat(tokenizer, task.messages(r["message"], render_answer(r["label"]))) for r in rows]
