"""Distillation: build or load the student and turn the teacher's answers into training examples."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig

from slmops.core.config import KD, Student
from slmops.core.errors import InputError
from slmops.core.task import Task, render_answer
from slmops.models.hf import build_llama, end_token_ids, load_model_and_tokenizer, resolve_model, tokenizer_fingerprint
from slmops.train.data import attach_teacher_logprobs, encode_chat
from slmops.train.logprobs import LogProbReader

log = logging.getLogger(__name__)


def make_student(student: Student, teacher_dir: str | Path, seed: int):
    """(model, tokenizer): an existing model from `student.model`, or a new Llama from `student.config`
    that shares the teacher's tokenizer. InputError when the teacher has no tokenizer to share."""
    if student.model:
        folder, _ = resolve_model(student.model, student.revision, "student.model")
        model, tokenizer = load_model_and_tokenizer(folder)
        return model.train(), tokenizer
    if not (Path(teacher_dir) / "tokenizer_config.json").is_file():
        raise InputError(
            f"student.config builds a student on the teacher's tokenizer, but {teacher_dir} has none "
            "(an endpoint teacher, teacher.backend openai, has no local tokenizer); set student.model "
            "to a model folder or hub id, e.g. Qwen/Qwen2.5-0.5B-Instruct"
        )
    teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    if teacher_tokenizer.pad_token is None:  # e.g. Llama 3 and Mistral tokenizers define none; batches need one
        teacher_tokenizer.pad_token = teacher_tokenizer.eos_token
    ends = end_token_ids(teacher_tokenizer, teacher_generation_config(Path(teacher_dir)))
    torch.manual_seed(seed)
    return build_llama(student.config, teacher_tokenizer, ends), teacher_tokenizer


def teacher_generation_config(teacher_dir: Path) -> GenerationConfig | None:
    """The teacher's generation config (its end token ids), where the teacher stage kept one."""
    if not (teacher_dir / "generation_config.json").is_file():
        return None
    return GenerationConfig.from_pretrained(teacher_dir)


def use_logit_kd(kd: KD, meta: dict, student_tokenizer) -> bool:
    """Whether the KD term applies (`meta`: data/synthetic/meta.json); a tokenizer mismatch is an InputError
    unless params ask for CE only."""
    if kd.alpha >= 1.0:
        return False
    if not meta["logprobs_top_k"]:
        raise InputError(
            "distill.kd.alpha < 1 needs teacher log-probs, but synthesize.logprobs_top_k is 0; "
            "set logprobs_top_k > 0 or distill.kd.alpha: 1"
        )
    if tokenizer_fingerprint(student_tokenizer) != meta["tokenizer_sha256"]:
        if kd.on_tokenizer_mismatch == "ce_only":
            log.warning(
                "student and teacher tokenizers differ; training on cross-entropy only "
                "(distill.kd.on_tokenizer_mismatch: ce_only)"
            )
            return False
        raise InputError(
            "distill.kd: student and teacher tokenizers differ, so the teacher's log-probs cannot be matched "
            "token by token; use a student with the teacher's tokenizer, or set "
            "distill.kd.on_tokenizer_mismatch: ce_only"
        )
    return True


def distillation_examples(task: Task, tokenizer, accepted: list[dict], store: LogProbReader | None) -> list[dict]:
    """One encoded example per accepted row; the student always learns the canonical answer (render_answer of the
    label), the text fine-tuning teaches too.

    With a store, a row whose teacher text (`answer`) is exactly that canonical answer is encoded with the
    teacher's own answer tokens and carries their top-k log-probs (kd_ids, kd_logprobs). A row whose text differs
    (a reasoning block, prose or a fence that the answer parser dropped, other spacing) has no log-probs aligned
    with the canonical answer's tokens: it is trained on cross-entropy only."""
    examples = []
    for row in accepted:
        canonical = render_answer(row["label"])
        chat = task.messages(row["message"], canonical)
        if store is None or row["answer"] != canonical:
            examples.append(encode_chat(tokenizer, chat))
            continue
        tokens, topk_ids, topk_logprobs = store.record(row["token_offset"], row["token_count"])
        examples.append(
            attach_teacher_logprobs(encode_chat(tokenizer, chat, answer_ids=tokens), topk_ids, topk_logprobs)
        )
    return examples
