"""Parity of an ONNX export with its PyTorch model: next-token logits at every answer position.

fp32 exports must match logits (max |difference| about 1e-5 measured); quantized ones must agree on the
greedy next token at most positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Parity:
    prompts: int
    positions: int
    max_abs_logit_diff: float
    greedy_agreement: float

    def failure(self, precision: str, max_abs_logit_diff: float, min_greedy_agreement: float) -> str | None:
        """Why the export fails the check, or None. fp32 must match logits; others the greedy tokens."""
        figures = (
            f"max |logit difference| {self.max_abs_logit_diff:.3g}, greedy next-token agreement "
            f"{self.greedy_agreement:.1%} over {self.positions} positions of {self.prompts} prompts"
        )
        if precision == "fp32" and self.max_abs_logit_diff > max_abs_logit_diff:
            return f"fp32 export differs from PyTorch: {figures} (allowed: {max_abs_logit_diff:g})"
        if precision != "fp32" and self.greedy_agreement < min_greedy_agreement:
            return f"{precision} export disagrees with PyTorch: {figures} (required: {min_greedy_agreement:.1%})"
        return None


@torch.inference_mode()
def check_parity(torch_model, onnx_model, prompts: list[list[int]], answers: list[list[int]]) -> Parity:
    """Compare next-token logits of PyTorch and the ONNX model at every answer position (teacher-forced)."""
    torch_model.eval()
    max_diff, agree, positions = 0.0, 0, 0
    for prompt, answer in zip(prompts, answers, strict=False):
        ids = torch.tensor([prompt + answer])
        expected = torch_model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float().numpy()
        actual = onnx_model.next_token_logits(prompt, answer)
        if actual.shape != expected.shape:
            raise RuntimeError(
                f"ONNX logits have shape {actual.shape}, PyTorch {expected.shape}: "
                "the export has a different vocabulary or LM head"
            )
        max_diff = max(max_diff, float(np.abs(actual - expected).max()))
        agree += int((actual.argmax(-1) == expected.argmax(-1)).sum())
        positions += len(answer)
    return Parity(len(prompts), positions, max_diff, agree / positions if positions else 0.0)


def parity_inputs(torch_model, tokenizer, chats: list[list[dict]], max_new_tokens: int):
    """(prompt ids, PyTorch greedy answer ids) per chat: the positions the parity check compares."""
    from slmops.core.config import GenerationSettings
    from slmops.models.generate import generate_answers

    answers = generate_answers(torch_model, tokenizer, chats, GenerationSettings.greedy(max_new_tokens, batch_size=32))
    prompts = [
        tokenizer(
            tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False), add_special_tokens=False
        )["input_ids"]
        for chat in chats
    ]
    return prompts, [a.token_ids for a in answers]
