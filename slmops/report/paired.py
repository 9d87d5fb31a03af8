"""Accuracy changes with their uncertainty: base and head answers paired eval record by eval record.

Both revisions keep every answer (reports/predictions/<variant>.jsonl). Paired by record id, each share (exact
match, schema-valid, JSON-valid, each field) changes only through the records that flipped: right → wrong and
wrong → right. Two standard tests on them:

- McNemar's exact test: under "no change", a flipped record is equally likely to flip either way, so the
  right → wrong count among the n flipped records is Binomial(n, 1/2). One-sided (is head worse?) for gates,
  two-sided for the "within noise" mark.
- A paired bootstrap (records resampled with replacement, seeded) for the interval of the change, and for
  `accuracy_kept` (a ratio of two shares, which no exact test covers).

Both treat the two models as fixed. They are not: training is deterministic per machine only, and a retraining
with another seed or on another CPU moves the whole model (AMD against Intel, same commit: 21 records right →
wrong, 8 wrong → right, McNemar p = 0.012). When the training noise of the recipe was measured (`slmops noise`:
the same params run with other seeds or on other machines, reports/noise.json), the test becomes a z-test whose
variance adds the mean square difference between those runs to the paired eval-sampling variance: conservative
(the two overlap), and a no-change retraining then passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from slmops.core.answers import Parsed, parse_answer
from slmops.core.task import Task, score

DEFAULT_SIGNIFICANCE = 0.05
RESAMPLES = 10_000
SEED = 0
SHARES = ("exact_match", "schema_valid", "json_valid")  # the per-record shares of slmops.core.metrics
TEST_NAME = "McNemar's exact test on the records that flipped"
NOISE_TEST_NAME = "z-test of the paired change, training noise added to the eval-sampling variance"
KEPT = "accuracy_kept"


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
    training_noise: float | None = None  # the mean square difference between runs of the same params, if measured

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
    noise: TrainingNoise | None = None  # the training noise the tests include, if measured

    @property
    def test_name(self) -> str:
        return TEST_NAME if self.noise is None else NOISE_TEST_NAME


@dataclass(frozen=True)
class TrainingNoise:
    """How far runs of the same params land apart: for each share (and accuracy_kept), the mean square difference
    between two runs over every pair of `runs` runs (fractions squared). `source` says where it was measured."""

    runs: int
    mean_square_difference: dict[str, float]
    source: str = ""

    def rms(self, name: str) -> float | None:
        value = self.mean_square_difference.get(name)
        return None if value is None else math.sqrt(value)


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


def z_test(change: float, variance: float) -> tuple[float, float]:
    """(one-sided p of "head is worse", two-sided p) of a change whose no-change distribution is taken as normal
    with mean 0 and `variance`."""
    if variance <= 0:
        return (0.0 if change < 0 else 1.0), (1.0 if change == 0 else 0.0)
    z = change / math.sqrt(variance)
    worse = 0.5 * math.erfc(-z / math.sqrt(2))  # P(Z <= z)
    return worse, min(1.0, math.erfc(abs(z) / math.sqrt(2)))


def paired_variance(right_to_wrong: int, wrong_to_right: int, n: int) -> float:
    """Variance of the mean paired difference of n records of which the given numbers flipped (each record's
    difference is -1, 0 or +1): (share flipped - mean difference²) / n."""
    flipped, mean = (right_to_wrong + wrong_to_right) / n, (wrong_to_right - right_to_wrong) / n
    return max(flipped - mean**2, 0.0) / n


def pair(
    task: Task,
    base: dict[str, list[dict]],
    head: dict[str, list[dict]],
    shipped: str = "quantized",
    alpha: float = DEFAULT_SIGNIFICANCE,
    seed: int = SEED,
    noise: TrainingNoise | None = None,
) -> Pairing:
    """Pair the shipped variant's answers of two revisions. `base`, `head`: {variant: prediction records (id,
    message, label, answer)}; the teacher's, when both have them, give accuracy_kept's interval too. With `noise`,
    a share it covers is tested by z_test with its training noise added, and its interval widened alike.
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
        extra = noise.mean_square_difference.get(name) if noise else None
        if extra is not None:
            change = float(h.mean() - b.mean())
            variance = paired_variance(right_to_wrong, wrong_to_right, len(keys)) + extra
            p_worse, p_value = z_test(change, variance)
            low, high = _widened(low, high, change, extra, alpha)
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
            extra,
        )
    kept = _kept(task, base, head, base_hits, head_hits, keys, samples, alpha)
    if kept is not None and noise and (extra := noise.mean_square_difference.get(KEPT)) is not None:
        low, high = _widened(kept.low, kept.high, kept.change, extra, alpha)
        kept = BootstrapChange(kept.name, kept.base, kept.head, low, high)
    return Pairing(alpha, shares, kept, n=len(keys), noise=noise)


def _widened(low: float, high: float, change: float, extra_variance: float, alpha: float) -> tuple[float, float]:
    """A bootstrap interval of `change` widened by training noise: each half-width h becomes sqrt(h² + z² v), z the
    normal quantile of the interval's level, v the extra variance."""
    z2 = NormalDist().inv_cdf(1 - alpha / 2) ** 2
    return (
        change - math.sqrt((change - low) ** 2 + z2 * extra_variance),
        change + math.sqrt((high - change) ** 2 + z2 * extra_variance),
    )


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
    return BootstrapChange(KEPT, base_value, head_value, low, high)


def shares_of(task: Task, predictions: dict[str, list[dict]], shipped: str = "quantized") -> dict[str, float]:
    """One run's shares of the shipped variant ({share name: fraction}, as pair names them) and accuracy_kept
    (when the teacher's answers are there). Empty when the shipped variant has no answers."""
    if not predictions.get(shipped):
        return {}
    hits = record_hits(task, predictions[shipped])
    figures = {name: float(np.mean(list(by_record.values()))) for name, by_record in hits.items()}
    if predictions.get("teacher"):
        teacher = float(np.mean(list(record_hits(task, predictions["teacher"])["exact_match"].values())))
        figures[KEPT] = figures["exact_match"] / teacher if teacher else 0.0
        figures["teacher.exact_match"] = teacher
    return figures


def measure_noise(runs: list[dict[str, float]], source: str = "") -> TrainingNoise:
    """TrainingNoise of runs of the same params (each run: shares_of's figures): for each figure every run has,
    the mean over all pairs of runs of the squared difference. Raises ValueError for fewer than two runs."""
    if len(runs) < 2:
        raise ValueError("training noise needs at least two runs of the same params")
    names = sorted(set.intersection(*(set(run) for run in runs)) - {"teacher.exact_match"})
    pairs = [(a, b) for i, a in enumerate(runs) for b in runs[i + 1 :]]
    msd = {name: float(np.mean([(a[name] - b[name]) ** 2 for a, b in pairs])) for name in names}
    return TrainingNoise(len(runs), msd, source)
