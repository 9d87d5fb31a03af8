"""The bootstrap teacher: a tokenizer and a small Llama trained on the labelled seed set (the offline default)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from slmops.core.task import Task, render_answer
from slmops.models.hf import build_llama, count_parameters, hash_weights, train_chat_tokenizer
from slmops.teacher.local import IDENTITY_FILE
from slmops.train.data import sft_examples
from slmops.train.trainer import TrainConfig, train


def bootstrap(task: Task, rows: list[dict], vocab_size: int, config: dict, train_config: TrainConfig,
              out_dir: Path, live_dir: Path) -> dict:
    """Train a tokenizer and a small Llama on labelled rows; save both to `out_dir`."""
    texts = [r["message"] for r in rows] + [render_answer(r["label"]) for r in rows]
    tokenizer = train_chat_tokenizer(texts, vocab_size)
    torch.manual_seed(train_config.seed)
    model = build_llama(config, tokenizer)
    stats = train(model, tokenizer, sft_examples(task, tokenizer, rows), train_config, live_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    identity = {"backend": "bootstrap", "source": ".", "revision": None, "weights_sha256": hash_weights(out_dir),
                "parameters": count_parameters(model)}
    (out_dir / IDENTITY_FILE).write_text(json.dumps(identity, indent=2) + "\n")
    return {**identity, **stats}
