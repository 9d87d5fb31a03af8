"""Score a model on the held-out eval set: generate each answer, then exact match and per-field accuracy."""

from __future__ import annotations

from slmops.generation import GenerationConfig, generate_answers
from slmops.modeling import count_parameters
from slmops.task import Task, score


def evaluate_model(model, tokenizer, task: Task, rows: list[dict], config: GenerationConfig, name: str):
    """(figures, predictions): accuracy figures plus parameter count, and one prediction row per record."""
    answers = generate_answers(model, tokenizer, [task.messages(r["message"]) for r in rows], config,
                               progress=f"evaluating {name}")
    figures = score(task, [a.text for a in answers], [r["label"] for r in rows])
    figures["parameters"] = count_parameters(model)
    predictions = [{"id": r.get("id"), "message": r["message"], "label": r["label"], "answer": a.text}
                   for r, a in zip(rows, answers)]
    return figures, predictions
