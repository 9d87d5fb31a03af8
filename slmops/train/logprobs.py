"""Compact store of the teacher's answer tokens and top-k log-probs, beside the synthetic JSONL.

Three flat arrays, one row per answer token across all records, as .npy files that load
memory-mapped: tokens.npy (int32), topk_ids.npy (int32, k columns), topk_logprobs.npy
(float16, k columns). A record's `token_offset` and `token_count` select its rows.
NumPy's own format: no custom parser, and any tool can read it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_store(
    folder: Path, token_ids: list[list[int]], topk_ids: list[np.ndarray], topk_logprobs: list[np.ndarray]
) -> list[int]:
    """Write the arrays; returns each record's offset."""
    offsets = np.cumsum([0] + [len(t) for t in token_ids[:-1]]).tolist()
    np.save(folder / "tokens.npy", np.concatenate([np.asarray(t, dtype=np.int32) for t in token_ids]))
    np.save(folder / "topk_ids.npy", np.concatenate(topk_ids).astype(np.int32))
    np.save(folder / "topk_logprobs.npy", np.concatenate(topk_logprobs).astype(np.float16))
    return offsets


class LogProbReader:
    """Read access to the arrays `write_store` wrote (memory-mapped)."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.tokens = np.load(folder / "tokens.npy", mmap_mode="r")
        self.topk_ids = np.load(folder / "topk_ids.npy", mmap_mode="r")
        self.topk_logprobs = np.load(folder / "topk_logprobs.npy", mmap_mode="r")

    def record(self, offset: int, count: int) -> tuple[list[int], np.ndarray, np.ndarray]:
        """(answer token ids, top-k ids (count, k) int32, top-k log-probs (count, k) float32) of one record."""
        rows = slice(offset, offset + count)
        return (
            self.tokens[rows].tolist(),
            np.asarray(self.topk_ids[rows]),
            np.asarray(self.topk_logprobs[rows], dtype=np.float32),
        )
