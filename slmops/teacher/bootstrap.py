"""The bootstrap teacher: a tokenizer and a small Llama trained on the labelled seed set (the offline default)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from slmops.core.answers import local_finish_reason, parse_answer
from slmops.core.config import Bootstrap, GenerationSettings
from slmops.core.task import Task, answer_key_pieces, render_answer
from slmops.models.generate import generate_answers
from slmops.models.hf import build_llama, count_parameters, hash_weights, train_chat_tokenizer
from slmops.teacher.augment import stated_fields
from slmops.teacher.local import IDENTITY_FILE
from slmops.train.data import IGNORE, sft_examples
from slmops.train.trainer import train


def copy_accuracy(model, tokenizer, task: Task, rows: list[dict], max_new_tokens: int = 64) -> float:
    """Share of the values `rows`' messages state verbatim (slmops.teacher.augment.stated_fields) that the model's
    greedy answers give exactly; 1.0 when the rows state none."""
    greedy = GenerationSettings(
        max_new_tokens=max_new_tokens, batch_size=64, do_sample=False, temperature=1.0, top_p=1.0
    )
    answers = generate_answers(model, tokenizer, [task.messages(r["message"]) for r in rows], greedy)
    right = total = 0
    for row, answer in zip(rows, answers, strict=True):
        label = parse_answer(task, answer.text, local_finish_reason(answer.finished)).label or {}
        for field in stated_fields(row):
            total += 1
            right += label.get(field) == row["label"][field]
    return right / total if total else 1.0


def bootstrap(
    task: Task, rows: list[dict], check_rows: list[dict], params: Bootstrap, seed: int, out_dir: Path, live_dir: Path
) -> dict:
    """Train a tokenizer and a small Llama (params.config) on labelled rows; save both and teacher.json to
    `out_dir`. Returns the identity plus the training figures.

    Whether a from-scratch model learns to copy ids depends on its seed (a plateau that some seeds leave late or
    not at all), so after training the model answers `check_rows`, augmented rows it did not train on: when it
    copies less than params.min_copy_accuracy of their stated values, it is trained again from seed + 1, up to
    params.restarts times (random restarts chosen on held-out data: Dodge et al. 2020, arXiv:2002.06305). The
    last attempt's model is kept; `attempts`, its `trained_seed` and `copy_accuracy` are returned."""
    texts = [r["message"] for r in rows] + [render_answer(r["label"]) for r in rows]
    tokenizer = train_chat_tokenizer(texts, params.vocab_size, answer_key_pieces([r["label"] for r in rows]))
    examples = sft_examples(task, tokenizer, rows)
    longest = max(sum(1 for label in ex["labels"] if label != IGNORE) for ex in examples)
    for attempt in range(params.restarts + 1):
        torch.manual_seed(seed + attempt)
        model = build_llama(params.config, tokenizer)
        stats = train(model, tokenizer, examples, params.train, seed + attempt, live_dir)
        accuracy = copy_accuracy(model.eval(), tokenizer, task, check_rows, longest + 16)
        print(f"teacher attempt {attempt + 1}: seed {seed + attempt}, copy accuracy {accuracy:.1%}", flush=True)
        if accuracy >= params.min_copy_accuracy:
            break
    else:
        print(
            f"warning: after {attempt + 1} attempts the teacher copies {accuracy:.1%} of stated values, under "
            f"teacher.bootstrap.min_copy_accuracy {params.min_copy_accuracy:.0%}",
            flush=True,
        )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    identity = {
        "backend": "bootstrap",
        "source": ".",
        "revision": None,
        "weights_sha256": hash_weights(out_dir),
        "parameters": count_parameters(model),
    }
    (out_dir / IDENTITY_FILE).write_text(json.dumps(identity, indent=2) + "\n")
    return {**identity, **stats, "attempts": attempt + 1, "trained_seed": seed + attempt, "copy_accuracy": accuracy}
