"""Batched chat generation with a causal LM, optionally keeping top-k log-probs per answer token."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from slmops.core.config import GenerationSettings
from slmops.models.hf import end_token_ids


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    finished: bool  # the model wrote its end token within max_new_tokens
    topk_ids: np.ndarray | None = field(default=None, repr=False)  # (len(token_ids), k) int32
    topk_logprobs: np.ndarray | None = field(default=None, repr=False)  # (len(token_ids), k) float16


@torch.inference_mode()
def generate_answers(
    model,
    tokenizer,
    chats: list[list[dict]],
    settings: GenerationSettings,
    seed: int = 0,
    top_k_logprobs: int = 0,
    progress: str | None = None,
) -> list[Answer]:
    """Answer each chat (system + user messages) through the tokenizer's chat template, settings.batch_size
    chats at a time (left-padded). With top_k_logprobs = k, each answer keeps its k most likely tokens and their
    log-probs at every position: arrays of shape (answer tokens, k). A progress bar when `progress` names it."""
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    ends = end_token_ids(tokenizer, model.generation_config)
    answers: list[Answer] = []
    batches = range(0, len(chats), settings.batch_size)
    for start in tqdm(batches, desc=progress, unit="batch", disable=progress is None):
        prompts = [
            tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            for chat in chats[start : start + settings.batch_size]
        ]
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        out = model.generate(
            **batch,
            **settings.hf_kwargs(),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=ends,
            return_dict_in_generate=True,
            output_logits=top_k_logprobs > 0,
        )
        new_tokens = out.sequences[:, batch["input_ids"].shape[1] :]
        if top_k_logprobs:
            logprobs = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)
            top = logprobs.topk(top_k_logprobs, dim=-1)
        for row, tokens in enumerate(new_tokens.tolist()):
            length = next((i + 1 for i, token in enumerate(tokens) if token in ends), len(tokens))
            finished = length > 0 and tokens[length - 1] in ends
            tokens = tokens[:length]
            answer = Answer(tokenizer.decode(tokens, skip_special_tokens=True).strip(), tokens, finished)
            if top_k_logprobs:
                answer.topk_ids = top.indices[row, :length].numpy().astype(np.int32)
                answer.topk_logprobs = top.values[row, :length].numpy().astype(np.float16)
            answers.append(answer)
    return answers
