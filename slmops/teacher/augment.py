"""Label-preserving augmentation for small labelled sets.

A small model trained on a few hundred examples memorises the values it has seen (which ids
exist, which product goes with which words) instead of learning to copy them from the message.
Each augmented copy replaces the values a message states verbatim: a value with digits (an id)
by the same value with fresh random digits, any other value (a product) by the same field's
value from another record. Copying is then the only rule that fits.
"""

from __future__ import annotations

import random
import re
import string


def _stated(value, message: str) -> bool:
    return isinstance(value, str) and re.search(rf"\b{re.escape(value)}\b", message) is not None


def stated_fields(row: dict) -> list[str]:
    """The label fields whose value the row's message states verbatim (the values a model must copy)."""
    return [field for field, value in row["label"].items() if _stated(value, row["message"])]


def fresh_digits(value: str, rng: random.Random) -> str:
    """`value` with each digit drawn anew: ORD-4821 -> ORD-0937."""
    return "".join(rng.choice(string.digits) if c.isdigit() else c for c in value)


def swap_stated_values(rows: list[dict], copies: int, seed: int) -> list[dict]:
    """The rows followed by `copies` augmented copies of each {message, label} row."""
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
                if not _stated(value, message):
                    continue
                new = fresh_digits(value, rng) if any(c.isdigit() for c in value) else rng.choice(pools[field])
                message = re.sub(
                    rf"\b{re.escape(value)}\b", lambda _, new=new: new, message
                )  # a function: no escapes in `new`
                label[field] = new
            out.append({**row, "message": message, "label": label})
    return out
