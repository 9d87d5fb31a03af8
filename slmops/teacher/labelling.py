"""The teacher answers unlabelled prompts; each answer is checked against the task's answer schema."""

from __future__ import annotations

import time
from pathlib import Path

from slmops.core.files import write_json, write_jsonl
from slmops.core.task import Task, check_answer
from slmops.models.generate import GenerationConfig, generate_answers
from slmops.models.hf import tokenizer_fingerprint
from slmops.teacher.endpoint import Endpoint, Requests, Settings, Usage, check_success_ratio, complete_all, unfence
from slmops.teacher.selfinstruct import drop_near_duplicates, parse_written, writing_chats
from slmops.train.logprobs import write_store


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
    fingerprint = tokenizer_fingerprint(tokenizer) if tokenizer is not None else None
    write_json(out / "meta.json", {"logprobs_top_k": top_k, "tokenizer_sha256": fingerprint, "teacher": teacher})


def label_with_endpoint(endpoint: Endpoint, task: Task, prompts: list[dict], settings: Settings,
                        requests: Requests, usage: Usage):
    """(accepted, rejected, stats) from an endpoint teacher. Fails when fewer requests than
    synthesize.requests.min_success_ratio succeed; the answers received stay cached either way."""
    start = time.perf_counter()
    chats = [task.messages(p["message"]) for p in prompts]
    replies, failures = complete_all(endpoint, settings, chats, requests, usage)
    check_success_ratio(failures, requests.min_success_ratio, requests.cache)
    accepted, rejected = [], []
    for prompt, reply, failure in zip(prompts, replies, failures):
        row = {"id": prompt.get("id"), "message": prompt["message"]}
        if failure is not None:
            rejected.append({**row, "answer": None, "reason": f"request failed: {failure}"})
            continue
        text = unfence(reply["content"])
        label, reason = check_answer(task, text)
        if reply["finish_reason"] == "length":
            label, reason = None, f"cut at {settings.max_tokens} tokens (finish_reason length)"
        if label is None:
            rejected.append({**row, "answer": text, "reason": reason})
        else:
            accepted.append({**row, "answer": text, "label": label})
    stats = {"prompts": len(prompts), "accepted": len(accepted), "rejected": len(rejected),
             "reject_rate": len(rejected) / len(prompts), "timing": {"wall_seconds": round(time.perf_counter() - start, 2)}}
    return accepted, rejected, stats


def write_new_prompts(answer_all, generate: dict, seed_messages: list[str], existing: list[str], seed: int):
    """(new prompt rows, stats): the teacher writes prompts from seed examples (self-instruct); near-duplicates
    of existing prompts or of each other are dropped. `answer_all(chats)` returns the teacher's texts."""
    chats = writing_chats(seed_messages, generate["requests"], generate["prompts_per_request"], generate["examples"], seed)
    written = [prompt for text in answer_all(chats) if text for prompt in parse_written(text)]
    kept, dropped = drop_near_duplicates(written, existing, generate["max_similarity"])
    rows = [{"id": f"written-{i:05d}", "message": message} for i, message in enumerate(kept)]
    return rows, {"requests": len(chats), "written": len(written), "near_duplicates_dropped": dropped, "kept": len(kept)}
