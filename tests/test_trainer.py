import numpy as np
import torch
from conftest import TINY_LLAMA, default

from slmops.core.task import render_answer
from slmops.models.hf import build_llama
from slmops.train.data import IGNORE, Collator, attach_teacher_logprobs, encode_chat
from slmops.train.trainer import DistillationTrainer, train


def test_encode_chat_masks_the_prompt_and_keeps_the_answer(tokenizer, task, labelled):
    row = labelled[0]
    example = encode_chat(tokenizer, task.messages(row["message"], render_answer(row["label"])))
    answer = [t for t, label in zip(example["input_ids"], example["labels"], strict=False) if label != IGNORE]
    assert tokenizer.decode(answer) == render_answer(row["label"]) + "<|end|>"
    n_prompt = example["labels"].count(IGNORE)
    assert tokenizer.decode(example["input_ids"][:n_prompt]).endswith("<|assistant|>")


def test_encode_chat_uses_given_answer_tokens_verbatim(tokenizer, task):
    example = encode_chat(tokenizer, task.messages("hello", "x"), answer_ids=[5, 6, 7])
    assert example["input_ids"][-3:] == [5, 6, 7] and example["labels"][-3:] == [5, 6, 7]


def test_collator_pads_and_aligns_teacher_logprobs(tokenizer, task):
    a = attach_teacher_logprobs(
        encode_chat(tokenizer, task.messages("hi", "x"), answer_ids=[10, 11]),
        np.array([[10, 3], [11, 4]]),
        np.array([[-0.1, -2.0], [-0.2, -3.0]]),
    )
    b = attach_teacher_logprobs(
        encode_chat(tokenizer, task.messages("a longer message here", "x"), answer_ids=[12]),
        np.array([[12, 3]]),
        np.array([[-0.3, -1.0]]),
    )
    batch = Collator(tokenizer.pad_token_id)([a, b])
    width = max(len(a["input_ids"]), len(b["input_ids"]))
    assert batch["input_ids"].shape == (2, width) and batch["kd_ids"].shape == (2, width, 2)
    n = len(a["input_ids"])
    assert batch["kd_ids"][0, n - 2 : n].tolist() == [[10, 3], [11, 4]]
    assert batch["labels"][0, n - 2 : n].tolist() == [10, 11]
    assert batch["attention_mask"][0, n:].sum() == 0 and (batch["labels"][0, n:] == IGNORE).all()


def test_training_lowers_the_loss(tiny_model, tokenizer, task, labelled, tmp_path):
    rows = labelled[:32]
    examples = [encode_chat(tokenizer, task.messages(r["message"], render_answer(r["label"]))) for r in rows]
    collate = Collator(tokenizer.pad_token_id)

    def loss_of(model):
        batch = collate(examples)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE
        ).item()

    before = loss_of(tiny_model)
    config = default("distill.train", epochs=3, batch_size=8, learning_rate=1e-2, warmup_ratio=0.0)
    stats = train(tiny_model, tokenizer, examples, config, 0, tmp_path / "live")
    assert stats["steps"] == 12
    assert loss_of(tiny_model) < before - 1.0
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").is_file()


def test_kd_moves_the_student_toward_the_teachers_distribution(tokenizer, task, labelled, tmp_path):
    """The teacher puts 0.45 on the answer token and 0.45 on token 0; CE alone pushes token 0 down, KD up."""
    rows = labelled[:32]
    examples = [encode_chat(tokenizer, task.messages(r["message"], render_answer(r["label"]))) for r in rows]
    teacher_probs = np.array([0.45, 0.45, 0.05, 0.05])
    with_kd = []
    for ex in examples:
        answer = [t for t in ex["labels"] if t != IGNORE]
        ids = np.array([[t, 0, 1, 2] for t in answer])
        with_kd.append(attach_teacher_logprobs(ex, ids, np.tile(np.log(teacher_probs), (len(answer), 1))))
    batch = Collator(tokenizer.pad_token_id)(with_kd)

    def teacher_kl_and_p0(model) -> tuple[float, float]:
        """Over the answer positions: mean KL(teacher || student), both on the teacher's top-k (which is what top-k
        KD can match), and the student's mean share of token 0 in it."""
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        mask = batch["labels"][:, 1:] != IGNORE
        student = torch.log_softmax(logits, -1).gather(-1, batch["kd_ids"][:, 1:])[mask]
        teacher = batch["kd_logprobs"][:, 1:][mask]
        kl = (teacher.exp() * (teacher - torch.log_softmax(student, -1))).sum(-1).mean().item()
        return kl, torch.softmax(student, -1)[:, 1].mean().item()

    config = default("distill.train", epochs=3, batch_size=8, learning_rate=1e-2, warmup_ratio=0.0)
    results = {}
    for name, kd in [("ce", None), ("kd", default("distill.kd", alpha=0.0, loss="forward_kl", temperature=1.0))]:
        torch.manual_seed(0)
        model = build_llama(TINY_LLAMA, tokenizer)
        before = teacher_kl_and_p0(model)
        train(model, tokenizer, with_kd if kd else examples, config, 0, tmp_path / name, kd=kd)
        results[name] = before, teacher_kl_and_p0(model)
    (kl_before, p0_before), (kl_kd, p0_kd) = results["kd"]
    assert kl_kd < 0.2 * kl_before  # KD alone pulls the student toward the teacher's distribution
    assert p0_kd > 0.35 and results["ce"][1][1] < 0.15  # the mass the teacher gives token 0: KD learns it, CE not


def test_distillation_loss_mixes_ce_and_kd(tiny_model, tokenizer, task):
    example = attach_teacher_logprobs(
        encode_chat(tokenizer, task.messages("hi", "x"), answer_ids=[10, 11]),
        np.array([[10, 3], [11, 4]]),
        np.array([[-0.1, -2.4], [-0.2, -1.7]]),
    )
    batch = Collator(tokenizer.pad_token_id)([example])
    trainer = DistillationTrainer.__new__(DistillationTrainer)
    trainer.kd = None
    ce = trainer.compute_loss(tiny_model, dict(batch)).item()
    trainer.kd = default("distill.kd", alpha=1.0, loss="forward_kl", temperature=2.0)
    assert trainer.compute_loss(tiny_model, dict(batch)).item() == ce
    trainer.kd = default("distill.kd", alpha=0.0, loss="forward_kl", temperature=2.0)
    kd_only = trainer.compute_loss(tiny_model, dict(batch)).item()
    trainer.kd = default("distill.kd", alpha=0.25, loss="forward_kl", temperature=2.0)
    mixed = trainer.compute_loss(tiny_model, dict(batch)).item()
    assert mixed == __import__("pytest").approx(0.25 * ce + 0.75 * kd_only, rel=1e-5)
