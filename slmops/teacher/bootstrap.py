"""The bootstrap teacher: a tokenizer and a small Llama trained on the labelled seed set (the offline default)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from slmops.core.config import Bootstrap
from slmops.core.task import Task, answer_key_pieces, render_answer
from slmops.models.hf import build_llama, count_parameters, hash_weights, train_chat_tokenizer
from slmops.teacher.local import IDENTITY_FILE
from slmops.train.data import sft_examples
from slmops.train.trainer import train


def bootstrap(task: Task, rows: list[dict], params: Bootstrap, seed: int, out_dir: Path, live_dir: Path) -> dict:
    """Train a tokenizer and a small Llama (params.config) on labelled rows; save both and teacher.json to
    `out_dir`. Returns the identity plus the training figures."""
    texts = [r["message"] for r in rows] + [render_answer(r["label"]) for r in rows]
    tokenizer = train_chat_tokenizer(texts, params.vocab_size, answer_key_pieces([r["label"] for r in rows]))
    torch.manual_seed(seed)
    model = build_llama(params.config, tokenizer)
    stats = train(model, tokenizer, sft_examples(task, tokenizer, rows), params.train, seed, live_dir)
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
    return {**identity, **stats}
