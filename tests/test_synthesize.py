import json

import numpy as np
import pytest
from conftest import default

from slmops.core.errors import InputError
from slmops.core.task import render_answer
from slmops.models.generate import Answer, generate_answers
from slmops.models.hf import tokenizer_fingerprint
from slmops.teacher import labelling as synthesize
from slmops.train.data import IGNORE
from slmops.train.logprobs import LogProbReader
from slmops.train.student import distillation_examples, use_logit_kd

GOOD = {"intent": "order_status", "order_id": None, "product": "laptop", "urgency": "low", "sentiment": "neutral"}


def fake_answers(tokenizer, texts, finished=True):
    answers = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        answers.append(
            Answer(
                text,
                ids,
                finished,
                np.tile(np.array(ids, dtype=np.int32)[:, None], (1, 3)),
                np.full((len(ids), 3), -0.5, dtype=np.float16),
            )
        )
    return answers


def test_malformed_teacher_answers_are_rejected_with_reasons(monkeypatch, tokenizer, task, tmp_path):
    texts = [
        render_answer(GOOD),
        '{"intent": "order_status"',
        render_answer({**GOOD, "urgency": "now"}),
        render_answer(GOOD),
    ]
    answers = fake_answers(tokenizer, texts)
    answers[3].finished = False
    monkeypatch.setattr(synthesize, "generate_answers", lambda *a, **k: answers)
    prompts = [{"id": f"p{i}", "message": f"message {i}"} for i in range(4)]
    teacher = synthesize.LocalTeacher(None, tokenizer, {"backend": "test"}, seed=0, logprobs_top_k=3)
    accepted, rejected, stats = teacher.label(task, prompts, default("synthesize.generation", max_new_tokens=40))
    assert [r["id"] for r in accepted] == ["p0"] and accepted[0]["label"] == GOOD
    reasons = {r["id"]: r["reason"] for r in rejected}
    assert reasons["p1"].startswith("no JSON found (Expecting ',' delimiter")
    assert reasons["p2"].startswith("schema: urgency: 'now' is not one of")
    assert reasons["p3"] == "cut at 40 tokens (finish_reason length)"
    assert stats["accepted"] == 1 and stats["rejected"] == 3 and stats["reject_rate"] == 0.75
    assert stats["rejected_by"] == {"no_json": 1, "schema": 1, "length": 1}

    teacher.save(tmp_path, accepted, rejected)
    rows = [json.loads(line) for line in (tmp_path / "accepted.jsonl").read_text().splitlines()]
    store = LogProbReader(tmp_path)
    tokens, topk_ids, topk_logprobs = store.record(rows[0]["token_offset"], rows[0]["token_count"])
    assert tokens == answers[0].token_ids
    assert topk_ids.shape == (len(tokens), 3) and topk_logprobs.dtype == np.float32
    assert len((tmp_path / "rejected.jsonl").read_text().splitlines()) == 3
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["tokenizer_sha256"] == tokenizer_fingerprint(tokenizer)

    examples = distillation_examples(task, tokenizer, rows, store)
    answer_positions = [i for i, label in enumerate(examples[0]["labels"]) if label != IGNORE]
    assert [examples[0]["input_ids"][i] for i in answer_positions] == tokens
    assert examples[0]["kd_ids"][answer_positions].tolist() == topk_ids.tolist()


def test_a_local_teacher_reads_fenced_and_reasoning_answers_like_an_endpoint_one(
    monkeypatch, tokenizer, task, tmp_path
):
    """An hf teacher's fenced answer or <think> block is a label; the student learns the canonical answer, with
    the teacher's log-probs only where the teacher wrote exactly that (elsewhere they belong to other tokens)."""
    canonical = render_answer(GOOD)
    texts = [
        canonical,
        f"```json\n{canonical}\n```",
        f"<think>order status, calm</think>\n{canonical}",
        f"Sure! {canonical} Anything else?",
        json.dumps(GOOD, separators=(",", ":")),  # the same object, other spacing
        "<think>order status, calm",  # cut while reasoning
    ]
    answers = fake_answers(tokenizer, texts)
    answers[5].finished = False
    monkeypatch.setattr(synthesize, "generate_answers", lambda *a, **k: answers)
    prompts = [{"id": f"p{i}", "message": f"where is my laptop, message {i}"} for i in range(6)]
    teacher = synthesize.LocalTeacher(None, tokenizer, {"backend": "hf"}, seed=0, logprobs_top_k=3)
    accepted, rejected, stats = teacher.label(task, prompts, default("synthesize.generation", max_new_tokens=40))
    assert [r["label"] for r in accepted] == [GOOD] * 5
    assert [r["answer"] for r in accepted] == texts[:5]  # what the teacher wrote, kept as written
    assert (
        rejected[0]["reason"] == "cut at 40 tokens while reasoning (a <think> block left open) (finish_reason length)"
    )
    assert stats["rejected_by"] == {"length": 1}

    teacher.save(tmp_path, accepted, rejected)
    rows = [json.loads(line) for line in (tmp_path / "accepted.jsonl").read_text().splitlines()]
    examples = distillation_examples(task, tokenizer, rows, LogProbReader(tmp_path))
    assert ["kd_ids" in ex for ex in examples] == [True, False, False, False, False]
    canonical_only = distillation_examples(task, tokenizer, rows, None)
    for with_store, without in zip(examples[1:], canonical_only[1:], strict=True):
        assert with_store["input_ids"] == without["input_ids"]  # the canonical answer, re-tokenised
    answer_ids = [
        t for t, label in zip(examples[1]["input_ids"], examples[1]["labels"], strict=True) if label != IGNORE
    ]
    assert tokenizer.decode(answer_ids, skip_special_tokens=True).strip() == canonical


def test_a_batch_mixing_examples_with_and_without_logprobs_masks_kd_to_those_with(tokenizer, task, tiny_model):
    import torch

    from slmops.train.data import Collator, attach_teacher_logprobs, encode_chat
    from slmops.train.trainer import DistillationTrainer

    chat = task.messages("where is my laptop", render_answer(GOOD))
    plain = encode_chat(tokenizer, chat)
    answer_len = sum(label != IGNORE for label in plain["labels"])
    ids = np.tile(np.arange(3, dtype=np.int32), (answer_len, 1))
    with_kd = attach_teacher_logprobs(plain, ids, np.full((answer_len, 3), -1.1, dtype=np.float32))
    batch = Collator(tokenizer.pad_token_id)([plain, with_kd])
    assert batch["kd_mask"][0].sum() == 0 and batch["kd_mask"][1].sum() == answer_len
    assert torch.equal(batch["kd_mask"][1], batch["labels"][1] != IGNORE)

    def loss_of(inputs, alpha):
        trainer = DistillationTrainer.__new__(DistillationTrainer)
        trainer.kd = default("distill.kd", alpha=alpha)
        return trainer.compute_loss(tiny_model, {k: v.clone() for k, v in inputs.items()}).item()

    mixed = loss_of(batch, 0.5)
    alone = {k: v[1:] for k, v in batch.items()}  # the KD term averages over the same positions alone
    ce_both = loss_of({k: v for k, v in batch.items() if not k.startswith("kd_")}, 0.5)
    ce_alone = loss_of({k: v for k, v in alone.items() if not k.startswith("kd_")}, 0.5)
    kd_term = (loss_of(alone, 0.5) - 0.5 * ce_alone) / (0.5 * 4.0)
    assert mixed == pytest.approx(0.5 * ce_both + 0.5 * 4.0 * kd_term, rel=1e-5)
    without_any = Collator(tokenizer.pad_token_id)([plain, plain])
    assert "kd_mask" not in without_any and loss_of(without_any, 0.5) == pytest.approx(ce_both, rel=1e-6)


def test_batched_generation_with_logprobs(tiny_model, tokenizer, task):
    chats = [task.messages("where is my laptop"), task.messages("refund please, order ORD-12, this is urgent")]
    config = default("synthesize.generation", max_new_tokens=6, batch_size=2)
    answers = generate_answers(tiny_model.eval(), tokenizer, chats, config, top_k_logprobs=4)
    assert len(answers) == 2
    for answer in answers:
        assert 1 <= len(answer.token_ids) <= 6
        assert answer.topk_ids.shape == (len(answer.token_ids), 4)
        # greedy: the chosen token is the most likely one
        assert answer.topk_ids[:, 0].tolist() == answer.token_ids
        assert (np.diff(answer.topk_logprobs.astype(np.float32), axis=1) <= 0).all()
    # batching does not change greedy answers
    alone = generate_answers(
        tiny_model, tokenizer, chats[:1], default("synthesize.generation", max_new_tokens=6, batch_size=1)
    )
    assert alone[0].token_ids == answers[0].token_ids


def test_kd_needs_logprobs_and_a_shared_tokenizer(tokenizer, labelled):
    from slmops.models.hf import train_chat_tokenizer

    kd = default("distill.kd", alpha=0.5, on_tokenizer_mismatch="error")
    meta = {"logprobs_top_k": 4, "tokenizer_sha256": tokenizer_fingerprint(tokenizer)}
    assert use_logit_kd(kd, meta, tokenizer) is True
    assert use_logit_kd(kd.model_copy(update={"alpha": 1.0}), meta, tokenizer) is False
    with pytest.raises(InputError, match="synthesize.logprobs_top_k is 0"):
        use_logit_kd(kd, {**meta, "logprobs_top_k": 0}, tokenizer)
    other = train_chat_tokenizer([r["message"] for r in labelled[:50]], 400)
    with pytest.raises(InputError, match="student and teacher tokenizers differ"):
        use_logit_kd(kd, meta, other)
    assert use_logit_kd(kd.model_copy(update={"on_tokenizer_mismatch": "ce_only"}), meta, other) is False
