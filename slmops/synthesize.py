"""The teacher answers unlabelled prompts; each answer is checked against the task's answer schema."""

from __future__ import annotations

import time
from pathlib import Path

from slmops.generation import GenerationConfig, generate_answers
from slmops.logprobs import write_store
from slmops.modeling import tokenizer_fingerprint
from slmops.task import Task, check_answer
from slmops.io import write_json, write_jsonl


def label_prompts(model, tokenizer, task: Task, prompts: list[dict], config: GenerationConfig, top_k: int):
    """(accepted, rejected, answers of accepted, stats). Rejected rows carry the reason."""
    start = time.perf_counter()
    answers = generate_answers(model, tokenizer, [task.messages(p["message"]) for p in prompts], config,
                               top_k_logprobs=top_k, progress="teacher answering")
    accepted, rejected, kept = [], [], []
    for prompt, answer in zip(prompts, answers):
        label, reason = check_answer(task, answer.text)
        if not answer.finished:
            label, reason = None, f"no end token within {config.max_new_tokens} new tokens"
        row = {"id": prompt.get("id"), "message": prompt["message"], "answer": answer.text}
        if label is None:
            rejected.append({**row, "reason": reason})
        else:
            accepted.append({**row, "label": label})
            kept.append(answer)
    stats = {
        "prompts": len(prompts),
        "accepted": len(accepted),
        "rejected": len(rejected),
        "reject_rate": len(rejected) / len(prompts),
        "answer_tokens": sum(len(a.token_ids) for a in answers),
        "timing": {"wall_seconds": round(time.perf_counter() - start, 2)},
    }
    return accepted, rejected, kept, stats


def write_synthetic(out: Path, accepted: list[dict], rejected: list[dict], answers, tokenizer, top_k: int, teacher: dict) -> None:
    """accepted.jsonl, rejected.jsonl, meta.json and, with top_k > 0, the log-prob store."""
    if top_k and accepted:
        offsets = write_store(out, [a.token_ids for a in answers], [a.topk_ids for a in answers],
                              [a.topk_logprobs for a in answers])
        for row, answer, offset in zip(accepted, answers, offsets):
            row["token_offset"], row["token_count"] = offset, len(answer.token_ids)
    write_jsonl(out / "accepted.jsonl", accepted)
    write_jsonl(out / "rejected.jsonl", rejected)
    write_json(out / "meta.json", {"logprobs_top_k": top_k, "tokenizer_sha256": tokenizer_fingerprint(tokenizer), "teacher": teacher})
