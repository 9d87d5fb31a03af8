"""Label-preserving augmentation for small labelled sets.

A small model trained on a few hundred examples memorises which id goes with which message
instead of learning to copy it. Swapping the values that a message states verbatim (an order id,
a product) for values of the same field from other records gives it many more pairings to learn
from, so copying is the only rule that fits.
"""

from __future__ import annotations

import random
import re


def _stated(value, message: str) -> bool:
    return isinstance(value, str) and re.search(rf"\b{re.escape(value)}\b", message) is not None


def swap_stated_values(rows: list[dict], copies: int, seed: int) -> list[dict]:
    """`copies` augmented copies of each {message, label} row, after the originals."""
    rng = random.Random(seed)
    pools: dict[str, list[str]] = {}
    for row in rows:
        for field, value in row["label"].items():
            if _stated(value, row["message"]):
                pools.setdefault(field, []).append(value)
    out = list(rows)
    for _ in range(copies):
        for row in rows:
            message, label = row["message"], dict(row["label"])
            for field, value in row["label"].items():
                if field in pools and _stated(value, message):
                    new = rng.choice(pools[field])
                    message = re.sub(rf"\b{re.escape(value)}\b", lambda _: new, message)
                    label[field] = new
            out.append({**row, "message": message, "label": label})
    return out
