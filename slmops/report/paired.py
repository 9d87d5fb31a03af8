"""Accuracy changes with their uncertainty: base and head answers paired eval record by eval record.

Both revisions keep every answer (reports/predictions/<variant>.jsonl). Paired by record id, each share (exact
match, schema-valid, JSON-valid, each field) changes only through the records that flipped: right → wrong and
wrong → right. Two standard tests on them:

- McNemar's exact test: under "no change", a flipped record is equally likely to flip either way, so the
  right → wrong count among the n flipped records is Binomial(n, 1/2). One-sided (is head worse?) for gates,
  two-sided for the "within noise" mark.
- A paired bootstrap (records resampled with replacement, seeded) for the interval of the change, and for
  `accuracy_kept` (a ratio of two shares, which no exact test covers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from slmops.core.answers import Parsed, parse_answer
from slmops.core.task import Task, score

DEFAULT_SIGNIFICANCE = 0.05
RESAMPLES = 10_000
SEED = 0
SHARES = ("exact_match", "schema_valid", "json_valid")  # the per-record shares of slmops.core.metrics
TEST_NAME = "McNemar's exact test on the records that flipped"


@dataclass(frozen=True)
class PairedChange:
    """One share, base against head, over `n` paired records. Shares are fractions 0..1; `low`, `high`: the
    paired-bootstrap interval of `change` at level 1 − alpha; `p_worse`: one-sided McNemar p-value of "head is
    worse"; `p_value`: two-sided (1.0 when no record flipped)."""

    name: str
    n: int
    base: float
    head: float
    right_to_wrong: int
    wrong_to_right: int
    low: float
    high: float
    p_worse: float
    p_value: float

    @property
    def change(self) -> float:
        return self.head - self.base

    def within_noise(self, alpha: float) -> bool:
        return self.p_value >= alpha


@dataclass(frozen=True)
class BootstrapChange:
    """A figure computed from several shares (accuracy kept): base, head and the bootstrap interval of the change."""

    name: str
    base: float
    head: float
    low: float
    high: float

    @property
    def change(self) -> float:
        return self.head - self.base

    def within_noise(self, alpha: float) -> bool:  # alpha: the interval's level was set when it was made
        return self.low <= 0 <= self.high


@dataclass(frozen=True)
class Pairing:
    """The paired comparison of two revisions' answers, or why there is none (`reason`)."""

    alpha: float
    shares: dict[str, PairedChange]  # "exact_match", "schema_valid", "json_valid", "field.<name>"
    kept: BootstrapChange | None  # accuracy_kept, when both revisions have the teacher's answers
    reason: str | None = None
    n: int = 0


def binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), exactly (integers, then one division). Written here rather than taking
    scipy as a dependency for one exact sum over at most a few hundred terms."""
    if k <= 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


def mcnemar(right_to_wrong: int, wrong_to_right: int) -> tuple[float, float]:
    """(one-sided p of "head is worse", two-sided p) of McNemar's exact test on the flipped records."""
    n = right_to_wrong + wrong_to_right
    if n == 0:
        return 1.0, 1.0
    worse = binomial_tail(right_to_wrong, n)
    two_sided = min(1.0, 2 * binomial_tail(max(right_to_wrong, wrong_to_right), n))
    return worse, two_sided


def parsed_answer(task: Task, record: dict) -> Parsed:
    """A prediction record's answer read by the pipeline's parser; records written before evaluate kept the
    finish_reason count as finished ("stop"), as they were scored then."""
    return parse_answer(task, record["answer"], record.get("finish_reason", "stop"))


def record_hits(task: Task, predictions: list[dict]) -> dict[str, dict[str, bool]]:
    """{share name: {record key: right?}} for each share and field, scored by slmops.core.task.score one record at
    a time (so the pipeline's own scoring decides). A record's key is its id, else its message."""
    hits: dict[str, dict[str, bool]] = {name: {} for name in (*SHARES, *(f"field.{f}" for f in task.fields))}
    for record in predictions:
        key = str(record.get("id") or record["message"])
        figures = score(task, [parsed_answer(task, record)], [record["label"]])
        for name in SHARES:
            hits[name][key] = figures[name] == 1.0
        for field, value in figures["field_accuracy"].items():
            hits[f"field.{field}"][key] = value == 1.0
    return hits


def pair(
    task: Task,
    base: dict[str, list[dict]],
    head: dict[str, list[dict]],
    shipped: str = "quantized",
    alpha: float = DEFAULT_SIGNIFICANCE,
    seed: int = SEED,
) -> Pairing:
    """Pair the shipped variant's answers of two revisions. `base`, `head`: {variant: prediction records (id,
    message, label, answer)}; the teacher's, when both have them, give accuracy_kept's interval too.
    No pairing (reason given) when either lacks the shipped variant's answers or the two eval sets differ."""
    if not base.get(shipped) or not head.get(shipped):
        side = "base" if not base.get(shipped) else "head"
        return Pairing(alpha, {}, None, f"no per-record answers of the {shipped} model at {side}")
    base_hits, head_hits = record_hits(task, base[shipped]), record_hits(task, head[shipped])
    keys = sorted(base_hits["exact_match"])
    if set(keys) != set(head_hits["exact_match"]):
        shared = len(set(keys) & set(head_hits["exact_match"]))
        return Pairing(
            alpha,
            {},
            None,
            f"the eval sets differ ({len(keys)} base records, {len(head_hits['exact_match'])} head, {shared} shared)",
        )
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(keys), size=(RESAMPLES, len(keys)))
    shares = {}
    for name in base_hits:
        b = np.array([base_hits[name][k] for k in keys], dtype=float)
        h = np.array([head_hits[name][k] for k in keys], dtype=float)
        right_to_wrong, wrong_to_right = int(((b == 1) & (h == 0)).sum()), int(((b == 0) & (h == 1)).sum())
        low, high = _interval((h - b)[samples].mean(axis=1), alpha)
        p_worse, p_value = mcnemar(right_to_wrong, wrong_to_right)
        shares[name] = PairedChange(
            name,
            len(keys),
            float(b.mean()),
            float(h.mean()),
            right_to_wrong,
            wrong_to_right,
            low,
            high,
            p_worse,
            p_value,
        )
    kept = _kept(task, base, head, base_hits, head_hits, keys, samples, alpha)
    return Pairing(alpha, shares, kept, n=len(keys))


def _interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _kept(task, base, head, base_hits, head_hits, keys, samples, alpha) -> BootstrapChange | None:
    """accuracy_kept (shipped exact match ÷ teacher exact match) at both revisions, with the interval of its change."""
    if not base.get("teacher") or not head.get("teacher"):
        return None
    base_teacher = record_hits(task, base["teacher"])["exact_match"]
    head_teacher = record_hits(task, head["teacher"])["exact_match"]
    if set(base_teacher) != set(keys) or set(head_teacher) != set(keys):
        return None

    def ratio(shipped: dict, teacher: dict, rows) -> np.ndarray:
        s = np.array([shipped[k] for k in keys], dtype=float)[rows].mean(axis=-1)
        t = np.array([teacher[k] for k in keys], dtype=float)[rows].mean(axis=-1)
        return np.divide(s, t, out=np.zeros_like(s), where=t > 0)

    everything = np.arange(len(keys))
    base_value = float(ratio(base_hits["exact_match"], base_teacher, everything))
    head_value = float(ratio(head_hits["exact_match"], head_teacher, everything))
    changes = ratio(head_hits["exact_match"], head_teacher, samples) - ratio(
        base_hits["exact_match"], base_teacher, samples
    )
    low, high = _interval(changes, alpha)
    return BootstrapChange("accuracy_kept", base_value, head_value, low, high)
