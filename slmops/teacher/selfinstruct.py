"""Self-instruct: the teacher writes new prompts from a few seed examples; near-duplicates are dropped."""

from __future__ import annotations

import random
import re

WRITE_INSTRUCTION = (
    "You write realistic, varied test inputs for a language model. Here are examples of the inputs it gets:\n\n"
    "{examples}\n\n"
    "Write {count} new inputs of the same kind, different from the examples and from each other "
    "(other wording, details and situations). One input per line; no numbering, quotes or commentary."
)


def writing_chats(
    seed_messages: list[str], requests: int, per_request: int, examples: int, seed: int
) -> list[list[dict]]:
    """One chat per request, each showing `examples` seed messages drawn with a seeded generator (so a rerun
    asks the very same questions and hits the cache)."""
    rng = random.Random(seed)
    chats = []
    for _ in range(requests):
        shown = rng.sample(seed_messages, min(examples, len(seed_messages)))
        text = WRITE_INSTRUCTION.format(examples="\n".join(f"- {m}" for m in shown), count=per_request)
        chats.append([{"role": "user", "content": text}])
    return chats


_LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)]|input\s*\d*:)\s*", re.IGNORECASE)


def parse_written(content: str) -> list[str]:
    """The prompts in one answer: one per line, list markers and surrounding quotes removed."""
    prompts = []
    for line in content.splitlines():
        text = _LIST_MARKER.sub("", line).strip().strip('"\u201c\u201d').strip()
        if len(text) >= 8:  # drop blank lines, stray headers and fragments
            prompts.append(text)
    return prompts


def _shingles(text: str, n: int = 4) -> frozenset[str]:
    normal = " ".join(re.findall(r"[a-z0-9]+", text.lower()))
    return frozenset(normal[i : i + n] for i in range(max(1, len(normal) - n + 1)))


def drop_near_duplicates(candidates: list[str], existing: list[str], max_similarity: float) -> tuple[list[str], int]:
    """(kept, dropped): a candidate is dropped when the Jaccard similarity of its character 4-grams with an
    existing prompt or an earlier kept one exceeds `max_similarity`.

    Written here rather than taken from a MinHash library: exact pairwise Jaccard over a few thousand short
    prompts takes seconds, with no approximation and no dependency."""
    seen = [_shingles(text) for text in existing]
    kept = []
    for text in candidates:
        shingles = _shingles(text)
        # Jaccard can't exceed the ratio of the set sizes: skip those comparisons.
        if any(
            min(len(shingles), len(other)) > max_similarity * max(len(shingles), len(other))
            and len(shingles & other) / len(shingles | other) > max_similarity
            for other in seen
        ):
            continue
        seen.append(shingles)
        kept.append(text)
    return kept, len(candidates) - len(kept)
