"""The metric registry: every figure of reports/metrics.json that a report shows or a gate may name, once.

The headline of reports/metrics.json (slmops.eval.evaluate.metrics), the per-variant table of report.md and of the
model card (slmops.report.run), the base-against-head table of `slmops report` and the keys a gate in params.yaml
may name (slmops.report.compare, the `gates` section of the params) all derive from `METRICS`.

Each view shows its metrics grouped by concern, in its own order of groups (for example, size before accuracy in
report.md, accuracy before size in metrics.json); within a group, the order of `METRICS`.
"""

from __future__ import annotations

from dataclasses import dataclass

RATE = "rate"  # the unit of a fraction 0..1: shown as a percent, a change of it in points (0.03 -> +3.0 pt)

# Groups, by concern. A view lists the groups it shows, in its order.
PARAMETERS, SIZE, ACCURACY, SPEED, RETENTION = "parameters", "size", "accuracy", "speed", "retention"
GROUPS = (PARAMETERS, SIZE, ACCURACY, SPEED, RETENTION)


@dataclass(frozen=True)
class Metric:
    """One figure of reports/metrics.json.

    key: its key in reports/metrics.json (at the top level, and in each variant for a per-variant figure).
    label: its name in `slmops report`'s table, unit included ("latency p95 (ms)").
    unit: "MB", "ms", "tokens/s", "count" or RATE (a fraction 0..1, formatted as a percent; a change of it is
        shown in points, and a gate's `max_regression` on it is a fraction: 0.01 is one point).
    fmt: `str.format` pattern of a value in `slmops report` ("{:.2f}"); a rate's is a percent ("{:.1%}").
    higher_is_better: which direction of change is an improvement (and which a regression, for gates).
    group: one of GROUPS; orders the views.
    headline: measured per variant, and the shipped variant's value is copied to the top of reports/metrics.json.
    compared: a row of `slmops report`'s table, base against head; a gate in params.yaml may name it.
    column: its header in report.md's per-variant table; None: not a column there.
    column_fmt: its pattern in that table when it differs from `fmt` (shorter, as the table is wide); None: fmt.
    per_record: a share of eval records (right or wrong one by one, from reports/predictions/): `slmops report`
        pairs base and head record by record and tests the change (a gate on it may set a significance level).
    """

    key: str
    label: str
    unit: str
    fmt: str
    higher_is_better: bool
    group: str
    headline: bool = False
    compared: bool = False
    column: str | None = None
    column_fmt: str | None = None
    per_record: bool = False

    @property
    def is_rate(self) -> bool:
        return self.unit == RATE

    @property
    def table_fmt(self) -> str:
        """The pattern of a value in report.md's per-variant table."""
        return self.column_fmt or self.fmt


METRICS = (
    Metric("parameters", "parameters", "count", "{:,}", False, PARAMETERS, headline=True, column="parameters"),
    Metric("size_mb", "size on disk (MB)", "MB", "{:.3f}", False, SIZE, headline=True, compared=True, column="size MB"),
    Metric(
        "weights_mb", "weights (MB)", "MB", "{:.3f}", False, SIZE, headline=True, compared=True, column="weights MB"
    ),
    Metric(
        "latency_p50_ms",
        "latency p50 (ms)",
        "ms",
        "{:.2f}",
        False,
        SPEED,
        headline=True,
        compared=True,
        column="p50 ms",
        column_fmt="{:.1f}",
    ),
    Metric("latency_p90_ms", "latency p90 (ms)", "ms", "{:.2f}", False, SPEED, column="p90 ms", column_fmt="{:.1f}"),
    Metric(
        "latency_p95_ms",
        "latency p95 (ms)",
        "ms",
        "{:.2f}",
        False,
        SPEED,
        headline=True,
        compared=True,
        column="p95 ms",
        column_fmt="{:.1f}",
    ),
    Metric(
        "ttft_p50_ms",
        "time to first token p50 (ms)",
        "ms",
        "{:.2f}",
        False,
        SPEED,
        headline=True,
        compared=True,
        column="TTFT ms",
        column_fmt="{:.1f}",
    ),
    Metric(
        "decode_tokens_per_s",
        "decode tokens/s",
        "tokens/s",
        "{:,.0f}",
        True,
        SPEED,
        headline=True,
        compared=True,
        column="decode tok/s",
    ),
    Metric(
        "peak_rss_mb",
        "peak memory (MB)",
        "MB",
        "{:.0f}",
        False,
        SPEED,
        headline=True,
        compared=True,
        column="peak RSS MB",
    ),
    # The model's own memory: the peak less the same runtime's resident memory before the weights load
    # (slmops.eval.benchmark: torch imported with its kernels, or onnxruntime-genai), not the runtime itself.
    Metric("model_rss_mb", "model memory (MB)", "MB", "{:.0f}", False, SPEED, column="model MB"),
    Metric(
        "exact_match",
        "exact match",
        RATE,
        "{:.1%}",
        True,
        ACCURACY,
        headline=True,
        compared=True,
        column="exact match",
        per_record=True,
    ),
    Metric(
        "schema_valid",
        "schema-valid rate",
        RATE,
        "{:.1%}",
        True,
        ACCURACY,
        headline=True,
        compared=True,
        column="schema-valid",
        per_record=True,
    ),
    Metric(
        "json_valid",
        "JSON-valid rate",
        RATE,
        "{:.1%}",
        True,
        ACCURACY,
        headline=True,
        compared=True,
        column="JSON-valid",
        per_record=True,
    ),
    # Retention: the shipped model against the teacher (slmops.eval.evaluate.retention), top level only.
    Metric("accuracy_kept", "accuracy kept vs teacher", RATE, "{:.1%}", True, RETENTION, compared=True),
    Metric("latency_saved", "latency saved vs teacher", RATE, "{:.1%}", True, RETENTION, compared=True),
    Metric("memory_saved", "memory saved vs teacher", RATE, "{:.1%}", True, RETENTION, compared=True),
    Metric("model_memory_saved", "model memory saved vs teacher", RATE, "{:.1%}", True, RETENTION),
    Metric("size_saved", "size saved vs teacher", RATE, "{:.1%}", True, RETENTION, compared=True),
    Metric("size_saved_by_quantization", "size saved by quantization", RATE, "{:.1%}", True, RETENTION),
    Metric("parameter_ratio", "parameters vs teacher", RATE, "{:.1%}", False, RETENTION),
)

BY_KEY = {metric.key: metric for metric in METRICS}


def select(groups: tuple[str, ...], flag: str) -> tuple[Metric, ...]:
    """The metrics whose boolean field `flag` is true ("headline", "compared"), or whose `column` is set
    (flag "column"), grouped in the order of `groups`. Raises KeyError for an unknown group or flag."""
    unknown = set(groups) - set(GROUPS)
    if unknown or flag not in ("headline", "compared", "column"):
        raise KeyError(f"unknown group(s) {sorted(unknown)} or flag {flag!r}")
    return tuple(m for group in groups for m in METRICS if m.group == group and getattr(m, flag))


# The views. The top of reports/metrics.json: the shipped variant's accuracy, size, parameters, then speed.
HEADLINE = select((ACCURACY, SIZE, PARAMETERS, SPEED), "headline")
# report.md's (and the model card's) per-variant table: after the text column `runtime`.
VARIANT_COLUMNS = select((PARAMETERS, SIZE, ACCURACY, SPEED), "column")
# `slmops report`: size, speed, accuracy, then retention against the teacher.
COMPARED = select((SIZE, SPEED, ACCURACY, RETENTION), "compared")
# The keys a gate in params.yaml may name (an enum in params.schema.json): exactly the rows of `slmops report`.
GATE_KEYS = tuple(m.key for m in COMPARED)
# Gates that may set a significance level: the per-record shares, tested record by record.
PER_RECORD_KEYS = tuple(m.key for m in COMPARED if m.per_record)
# Speed and memory: comparable only when base and head are timed on one machine in one run (`slmops bench compare`).
SPEED_KEYS = tuple(m.key for m in COMPARED if m.group == SPEED)
