import math

import pytest
import torch

from slmops.train import losses


def distributions(student_logits, teacher_logprobs, ids):
    return losses.topk_log_distributions(
        torch.tensor(student_logits), torch.tensor(ids), torch.tensor(teacher_logprobs), 1.0
    )


def test_divergences_vanish_when_student_matches_teacher():
    teacher = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0]]), -1)
    student_logits = torch.tensor([[0.0, 2.0, 1.0, 0.0, -5.0]])  # ids 1, 2, 3 carry the teacher's shape
    ids = torch.tensor([[1, 2, 3]])
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        value = losses.kd_loss(kind, student_logits, ids, teacher, temperature=1.0)
        assert value.item() == pytest.approx(0.0, abs=1e-6), kind


def test_forward_and_reverse_kl_against_hand_computed_values():
    p = [0.75, 0.25]  # teacher
    q = [0.5, 0.5]  # student
    student, teacher = distributions([[0.0, 0.0]], [[math.log(0.75), math.log(0.25)]], [[0, 1]])
    forward = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=False))
    reverse = sum(qi * math.log(qi / pi) for pi, qi in zip(p, q, strict=False))
    assert losses.forward_kl(student, teacher).item() == pytest.approx(forward, rel=1e-5)
    assert losses.reverse_kl(student, teacher).item() == pytest.approx(reverse, rel=1e-5)


def test_jsd_against_hand_computed_value_and_symmetry_at_half():
    p, q = [0.75, 0.25], [0.5, 0.5]
    m = [(a + b) / 2 for a, b in zip(p, q, strict=False)]
    expected = 0.5 * sum(a * math.log(a / c) for a, c in zip(p, m, strict=False)) + 0.5 * sum(
        b * math.log(b / c) for b, c in zip(q, m, strict=False)
    )
    student, teacher = distributions([[0.0, 0.0]], [[math.log(0.75), math.log(0.25)]], [[0, 1]])
    assert losses.jsd(student, teacher, 0.5).item() == pytest.approx(expected, rel=1e-5)
    assert losses.jsd(teacher, student, 0.5).item() == pytest.approx(expected, rel=1e-5)


def test_temperature_softens_both_distributions():
    student_logits = torch.tensor([[1.0, 0.0]])
    ids = torch.tensor([[0, 1]])
    teacher = torch.tensor([[0.0, -3.0]])
    cold = losses.kd_loss("forward_kl", student_logits, ids, teacher, temperature=1.0)
    hot = losses.kd_loss("forward_kl", student_logits, ids, teacher, temperature=4.0)
    assert hot.item() < cold.item()


def test_kd_loss_has_gradients_for_the_student():
    logits = torch.randn(4, 10, requires_grad=True)
    ids = torch.tensor([[0, 1, 2]] * 4)
    teacher = torch.log_softmax(torch.randn(4, 3), -1)
    losses.kd_loss("jsd", logits, ids, teacher, temperature=2.0, beta=0.3).backward()
    assert logits.grad[:, :3].abs().sum() > 0
    assert logits.grad[:, 3:].abs().sum() == 0  # outside the teacher's top-k, KD says nothing
