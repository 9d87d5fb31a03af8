"""The teacher labels prompts: it answers each, and each answer is read by the one answer parser
(slmops.core.answers.parse_answer: finish_reason, reasoning dropped, JSON found, schema checked).

What the student learns from: an accepted row keeps the teacher's raw text (`answer`) and the object parsed from
it (`label`); distillation trains on the canonical answer rendered from the label (slmops.core.task.render_answer),
the same text fine-tuning trains on. The teacher's per-token log-probs are used only for rows whose raw text is
that canonical answer (slmops.train.student.distillation_examples).

Two teachers share one interface (`answer`, `label`, `save`): a local model in PyTorch (bootstrap or hf
backend), batched through its chat template and able to keep its top-k log-probs; and an endpoint
(openai backend), asked concurrently through the response cache, with usage and cost counted.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from slmops.core.answers import Parsed, local_finish_reason, parse_answer, visible_text
from slmops.core.config import Generate, GenerationSettings, Params
from slmops.core.errors import InputError
from slmops.core.files import write_json, write_jsonl
from slmops.core.task import Task, read_labelled
from slmops.models.generate import Answer, generate_answers
from slmops.models.hf import tokenizer_fingerprint
from slmops.teacher.endpoint import Endpoint, Usage, complete_enough, served_endpoint
from slmops.teacher.local import load_teacher
from slmops.teacher.selfinstruct import drop_near_duplicates, parse_written, writing_chats
from slmops.train.logprobs import write_store


def _stats(prompts: list[dict], accepted: list[dict], rejected: list[dict], start: float) -> dict:
    return {
        "prompts": len(prompts),
        "accepted": len(accepted),
        "rejected": len(rejected),
        "reject_rate": len(rejected) / len(prompts),
        "rejected_by": dict(Counter(r["kind"] for r in rejected).most_common()),
        "timing": {"wall_seconds": round(time.perf_counter() - start, 2)},
    }


def _sort(prompt: dict, text: str | None, parsed: Parsed, accepted: list, rejected: list) -> None:
    """Append the row to accepted (with its label) or rejected (with the parser's reason and its kind)."""
    row = {"id": prompt.get("id"), "message": prompt["message"], "answer": text}
    if parsed.label is None:
        rejected.append({**row, "reason": parsed.reason, "kind": parsed.kind})
    else:
        accepted.append({**row, "label": parsed.label})


class LocalTeacher:
    """A teacher model in PyTorch (bootstrap or hf backend); `identity`: its teacher.json record."""

    def __init__(self, model, tokenizer, identity: dict, seed: int, logprobs_top_k: int):
        self.model, self.tokenizer, self.identity = model, tokenizer, identity
        self.seed, self.top_k = seed, logprobs_top_k
        self.kept: list[Answer] = []  # answers of the accepted rows, for the log-prob store

    @classmethod
    def load(cls, folder: str | Path, seed: int, logprobs_top_k: int) -> LocalTeacher:
        """The teacher the teacher stage pinned in `folder`; InputError when its weights changed since."""
        return cls(*load_teacher(folder), seed, logprobs_top_k)

    def answer(self, chats: list[list[dict]], settings: GenerationSettings, desc: str) -> list[str | None]:
        answers = generate_answers(self.model, self.tokenizer, chats, settings, self.seed, progress=desc)
        return [visible_text(a.text) for a in answers]

    def label(self, task: Task, prompts: list[dict], settings: GenerationSettings) -> tuple[list, list, dict]:
        """(accepted, rejected, stats). Rejected rows carry the parser's reason; an answer without the end token
        within max_new_tokens is cut (finish_reason length)."""
        start = time.perf_counter()
        answers = generate_answers(
            self.model,
            self.tokenizer,
            [task.messages(p["message"]) for p in prompts],
            settings,
            self.seed,
            top_k_logprobs=self.top_k,
            progress="teacher answering",
        )
        accepted, rejected = [], []
        for prompt, answer in zip(prompts, answers, strict=True):
            finish_reason = local_finish_reason(answer.finished)
            parsed = parse_answer(task, answer.text, finish_reason, max_tokens=settings.max_new_tokens)
            _sort(prompt, answer.text, parsed, accepted, rejected)
            if parsed.label is not None:
                self.kept.append(answer)
        return (
            accepted,
            rejected,
            {**_stats(prompts, accepted, rejected, start), "answer_tokens": sum(len(a.token_ids) for a in answers)},
        )

    def save(self, out: Path, accepted: list[dict], rejected: list[dict]) -> None:
        write_synthetic(out, accepted, rejected, self.kept, self.tokenizer, self.top_k, self.identity)


class EndpointTeacher:
    """A teacher behind an OpenAI-compatible endpoint, with the model the endpoint stage recorded."""

    def __init__(self, params: Params):
        if params.synthesize.logprobs_top_k:
            raise InputError(
                "synthesize.logprobs_top_k: an endpoint's log-probs are over its own tokens, which a "
                "student cannot match; set it to 0 with teacher.backend openai (and distill.kd.alpha: 1)"
            )
        self.endpoint: Endpoint = served_endpoint(params.teacher)
        self.requests, self.seed = params.synthesize.requests, params.seed
        self.response_format, self.prices = params.teacher.openai.response_format, params.teacher.openai.prices
        self.usage = Usage()

    def answer(self, chats: list[list[dict]], settings: GenerationSettings, desc: str) -> list[str | None]:
        replies, _ = complete_enough(
            self.endpoint, settings.openai_kwargs(self.seed), chats, self.requests, self.usage, desc
        )
        return [visible_text(reply["content"], reply["finish_reason"]) if reply else None for reply in replies]

    def label(self, task: Task, prompts: list[dict], settings: GenerationSettings) -> tuple[list, list, dict]:
        """(accepted, rejected, stats). Fails when fewer requests than synthesize.requests.min_success_ratio
        succeed; the answers received stay cached either way."""
        start = time.perf_counter()
        body = settings.openai_kwargs(self.seed, self.response_format)
        chats = [task.messages(p["message"]) for p in prompts]
        replies, failures = complete_enough(self.endpoint, body, chats, self.requests, self.usage, "teacher answering")
        accepted, rejected = [], []
        for prompt, reply, failure in zip(prompts, replies, failures, strict=True):
            if failure is not None:
                failed = Parsed(found=False, reason=f"request failed: {failure}", kind="request_failed")
                _sort(prompt, None, failed, accepted, rejected)
                continue
            parsed = parse_answer(
                task, reply["content"], reply["finish_reason"], reply.get("reasoning_content"), body["max_tokens"]
            )
            _sort(prompt, reply["content"], parsed, accepted, rejected)
        return (
            accepted,
            rejected,
            {**_stats(prompts, accepted, rejected, start), "usage": self.usage.summary(self.prices.model_dump())},
        )

    def save(self, out: Path, accepted: list[dict], rejected: list[dict]) -> None:
        write_synthetic(out, accepted, rejected, [], None, 0, self.endpoint.identity())


def teacher_for(params: Params, folder: str | Path = "models/teacher") -> LocalTeacher | EndpointTeacher:
    """The teacher that params.teacher.backend names."""
    if params.teacher.backend == "openai":
        return EndpointTeacher(params)
    return LocalTeacher.load(folder, params.seed, params.synthesize.logprobs_top_k)


def write_synthetic(
    out: Path, accepted: list[dict], rejected: list[dict], answers, tokenizer, top_k: int, teacher: dict
) -> None:
    """accepted.jsonl, rejected.jsonl, meta.json and, with top_k > 0, the log-prob store (slmops.train.logprobs)."""
    if top_k and accepted:
        offsets = write_store(
            out, [a.token_ids for a in answers], [a.topk_ids for a in answers], [a.topk_logprobs for a in answers]
        )
        for row, answer, offset in zip(accepted, answers, offsets, strict=True):
            row["token_offset"], row["token_count"] = offset, len(answer.token_ids)
    write_jsonl(out / "accepted.jsonl", accepted)
    write_jsonl(out / "rejected.jsonl", rejected)
    fingerprint = tokenizer_fingerprint(tokenizer) if tokenizer is not None else None
    write_json(out / "meta.json", {"logprobs_top_k": top_k, "tokenizer_sha256": fingerprint, "teacher": teacher})


def write_new_prompts(answer_all, generate: Generate, seed_messages: list[str], existing: list[str], seed: int):
    """(new prompt rows, stats): the teacher writes prompts from seed examples (self-instruct, Wang et al. 2023,
    arXiv:2212.10560); near-duplicates of existing prompts or of each other are dropped.
    `answer_all(chats)` returns the teacher's texts (None for a failed request)."""
    chats = writing_chats(seed_messages, generate.requests, generate.prompts_per_request, generate.examples, seed)
    written = [prompt for text in answer_all(chats) if text for prompt in parse_written(text)]
    kept, dropped = drop_near_duplicates(written, existing, generate.max_similarity)
    rows = [{"id": f"written-{i:05d}", "message": message} for i, message in enumerate(kept)]
    return rows, {
        "requests": len(chats),
        "written": len(written),
        "near_duplicates_dropped": dropped,
        "kept": len(kept),
    }


def with_written_prompts(
    teacher: LocalTeacher | EndpointTeacher, params: Params, task: Task, prompts: list[dict]
) -> tuple[list[dict], list[dict], dict]:
    """(prompts to label, prompts the teacher wrote, stats): the same prompts when synthesize.mode is label;
    with generate_and_label, new prompts written from seed examples of data.labelled."""
    if params.synthesize.mode == "label":
        return prompts, [], {}
    seeds = [r["message"] for r in read_labelled(params.data.labelled, task)]
    generate = params.synthesize.generate
    settings = GenerationSettings.at_temperature(
        generate.max_tokens, generate.temperature, params.synthesize.generation.batch_size
    )
    written, stats = write_new_prompts(
        lambda chats: teacher.answer(chats, settings, "teacher writing prompts"),
        generate,
        seeds,
        seeds + [p["message"] for p in prompts],
        params.seed,
    )
    return prompts + written, written, {"generate": stats}
