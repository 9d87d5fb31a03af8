"""Batched chat generation with a causal LM, optionally keeping top-k log-probs per answer token."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    batch_size: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    finished: bool  # the model wrote its end token within max_new_tokens
    topk_ids: np.ndarray | None = field(default=None, repr=False)  # (len(token_ids), k) int32
    topk_logprobs: np.ndarray | None = field(default=None, repr=False)  # (len(token_ids), k) float16


@torch.inference_mode()
def generate_answers(model, tokenizer, chats: list[list[dict]], config: GenerationConfig,
                     top_k_logprobs: int = 0, progress: str | None = None) -> list[Answer]:
    """Answer each chat (system + user messages) through the tokenizer's chat template."""
    torch.manual_seed(config.seed)
    tokenizer.padding_side = "left"
    answers: list[Answer] = []
    batches = range(0, len(chats), config.batch_size)
    for start in tqdm(batches, desc=progress, unit="batch", disable=progress is None):
        prompts = [
            tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            for chat in chats[start:start + config.batch_size]
        ]
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        sampling = {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p} if config.do_sample else {"do_sample": False}
        out = model.generate(
            **batch,
            max_new_tokens=config.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            return_dict_in_generate=True,
            output_logits=top_k_logprobs > 0,
            **sampling,
        )
        new_tokens = out.sequences[:, batch["input_ids"].shape[1]:]
        if top_k_logprobs:
            logprobs = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)
            top = logprobs.topk(top_k_logprobs, dim=-1)
        for row, tokens in enumerate(new_tokens.tolist()):
            finished = tokenizer.eos_token_id in tokens
            length = tokens.index(tokenizer.eos_token_id) + 1 if finished else len(tokens)
            tokens = tokens[:length]
            answer = Answer(tokenizer.decode(tokens, skip_special_tokens=True).strip(), tokens, finished)
            if top_k_logprobs:
                answer.topk_ids = top.indices[row, :length].numpy().astype(np.int32)
                answer.topk_logprobs = top.values[row, :length].numpy().astype(np.float16)
            answers.append(answer)
    return answers
