"""Knowledge-distillation losses on the teacher's stored top-k log-probs.

Both distributions are restricted to the teacher's top-k tokens and renormalised there, so each
divergence is a proper one on that support. The cross-entropy term of the total loss is what
pushes down the student's mass outside it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def topk_log_distributions(student_logits, teacher_ids, teacher_logprobs, temperature: float):
    """(student, teacher) log-probs over the teacher's top-k ids, at `temperature`. Shapes (N, k)."""
    student = F.log_softmax(student_logits.gather(-1, teacher_ids).float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logprobs.float() / temperature, dim=-1)
    return student, teacher


def forward_kl(student, teacher):
    """KL(teacher || student): mean-seeking; the usual KD loss."""
    return (teacher.exp() * (teacher - student)).sum(-1).mean()


def reverse_kl(student, teacher):
    """KL(student || teacher): mode-seeking."""
    return (student.exp() * (student - teacher)).sum(-1).mean()


def jsd(student, teacher, beta: float = 0.5):
    """Generalised Jensen-Shannon divergence, 0 < beta < 1:
    beta*KL(t||m) + (1-beta)*KL(s||m), m = beta*t + (1-beta)*s."""
    log_m = torch.logsumexp(torch.stack([teacher + math.log(beta), student + math.log1p(-beta)]), dim=0)
    kl_teacher = (teacher.exp() * (teacher - log_m)).sum(-1)
    kl_student = (student.exp() * (student - log_m)).sum(-1)
    return (beta * kl_teacher + (1.0 - beta) * kl_student).mean()


KD_LOSSES = {"forward_kl": forward_kl, "reverse_kl": reverse_kl, "jsd": jsd}


def kd_loss(kind: str, student_logits, teacher_ids, teacher_logprobs, temperature: float, beta: float = 0.5):
    student, teacher = topk_log_distributions(student_logits, teacher_ids, teacher_logprobs, temperature)
    if kind == "jsd":
        return jsd(student, teacher, beta)
    return KD_LOSSES[kind](student, teacher)
