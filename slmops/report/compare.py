"""`slmops report`: what a change did to the shipped model, base revision against head, with gates.

DVC reads metrics, params and plot data at each revision (git or workspace); this module only compares.
`dvc metrics diff` shows no relative change and cannot fail a build (treeverse/dvc#10408): the gates here do.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

MARKER = "<!-- slmops-report -->"  # CI finds its one comment by this and edits it
METRICS_FILE = "reports/metrics.json"
PLOTS = {"accuracy_size": "reports/plots/accuracy_size.json", "latency": "reports/plots/latency"}
VARIANTS = ("teacher", "student", "finetuned", "quantized")
ABSENT = "(absent)"


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    fmt: str
    higher_is_better: bool


# The headline table, in order. Gates may name any of these.
METRICS = (
    Metric("size_mb", "size on disk (MB)", "{:.3f}", False),
    Metric("weights_mb", "weights (MB)", "{:.3f}", False),
    Metric("latency_p50_ms", "latency p50 (ms)", "{:.2f}", False),
    Metric("latency_p95_ms", "latency p95 (ms)", "{:.2f}", False),
    Metric("ttft_p50_ms", "time to first token p50 (ms)", "{:.2f}", False),
    Metric("decode_tokens_per_s", "decode tokens/s", "{:,.0f}", True),
    Metric("peak_rss_mb", "peak memory (MB)", "{:.0f}", False),
    Metric("exact_match", "exact match", "{:.1%}", True),
    Metric("schema_valid", "schema-valid rate", "{:.1%}", True),
    Metric("json_valid", "JSON-valid rate", "{:.1%}", True),
    Metric("accuracy_kept", "accuracy kept vs teacher", "{:.1%}", True),
    Metric("latency_saved", "latency saved vs teacher", "{:.1%}", True),
    Metric("memory_saved", "memory saved vs teacher", "{:.1%}", True),
    Metric("size_saved", "size saved vs teacher", "{:.1%}", True),
)


@dataclass
class Row:
    metric: Metric
    base: float | None
    head: float | None

    @property
    def change(self) -> float | None:
        return None if self.base is None or self.head is None else self.head - self.base

    @property
    def relative(self) -> float | None:
        return self.change / abs(self.base) if self.change is not None and self.base else None

    @property
    def regression(self) -> float | None:
        """How much worse head is than base, in the metric's units (negative: better)."""
        if self.change is None:
            return None
        return -self.change if self.metric.higher_is_better else self.change


@dataclass
class GateResult:
    metric: str
    limit: str
    status: str  # pass | fail | new
    detail: str


def compare(base: dict, head: dict) -> list[Row]:
    return [Row(m, _number(base.get(m.key)), _number(head.get(m.key))) for m in METRICS]


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def check_gates(rows: list[Row], gates: dict) -> list[GateResult]:
    """Each gate: `max_regression` (absolute, metric units) or `max_regression_pct` (percent of base)."""
    by_key = {row.metric.key: row for row in rows}
    results = []
    for key, gate in gates.items():
        row = by_key[key]
        relative = "max_regression_pct" in gate
        limit = (f"{gate['max_regression_pct']:g}% worse" if relative
                 else f"{_signed(gate['max_regression'], row.metric.fmt).lstrip('+')} worse")
        if row.head is None:
            results.append(GateResult(key, limit, "fail", "missing in head"))
            continue
        if row.base is None:
            results.append(GateResult(key, limit, "new", "no base value (first run)"))
            continue
        worse = row.regression
        if relative:
            amount = worse / abs(row.base) * 100 if row.base else (math.inf if worse > 0 else 0.0)
            failed, detail = amount > gate["max_regression_pct"], f"{amount:+.1f}% worse"
        else:
            failed, detail = worse > gate["max_regression"], f"{_signed(worse, row.metric.fmt)} worse"
        results.append(GateResult(key, limit, "fail" if failed else "pass", detail))
    return results


def _signed(value: float, fmt: str) -> str:
    """A change with its sign; a change of a rate in points (0.03 -> +3.0 pt), not percent."""
    value += 0.0  # -0.0 -> 0.0
    if fmt.endswith("%}"):
        return f"{value * 100:+.1f} pt"
    return ("+" if value >= 0 else "-") + fmt.format(abs(value))


def _direction(row: Row) -> str:
    """▲/▼ for the direction of change, ✅/❌ for whether it is an improvement."""
    if row.change is None:
        return "new" if row.base is None and row.head is not None else ""
    if row.change == 0:
        return "="
    arrow = "▲" if row.change > 0 else "▼"
    return f"{arrow} {'✅' if row.regression < 0 else '❌'}"


def _param(value) -> str:
    return value if value == ABSENT else f"`{json.dumps(value)}`"


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def changed_params(base: dict, head: dict) -> list[tuple[str, object, object]]:
    flat_base, flat_head = flatten(base), flatten(head)
    missing = object()
    changes = []
    for key in sorted(set(flat_base) | set(flat_head)):
        old, new = flat_base.get(key, missing), flat_head.get(key, missing)
        if old != new:
            changes.append((key, ABSENT if old is missing else old, ABSENT if new is missing else new))
    return changes


def render(base_rev: str, head_rev: str, rows: list[Row], params: list, gates: list[GateResult],
           plots: dict[str, str]) -> str:
    failed = [g for g in gates if g.status == "fail"]
    verdict = f"❌ {len(failed)} gate(s) failed" if failed else ("✅ all gates pass" if gates else "no gates set")
    lines = [MARKER, f"## Model report: `{head_rev}` against `{base_rev}`", "", f"**{verdict}**", "",
             "| metric | base | head | change | relative | |", "|---|---:|---:|---:|---:|---|"]
    for row in rows:
        fmt = row.metric.fmt
        base = "—" if row.base is None else fmt.format(row.base)
        head = "—" if row.head is None else fmt.format(row.head)
        change = "" if row.change is None else _signed(row.change, fmt)
        relative = "" if row.relative is None else f"{row.relative:+.1%}"
        lines.append(f"| {row.metric.label} | {base} | {head} | {change} | {relative} | {_direction(row)} |")
    lines += ["", "▲/▼: the value went up/down; ✅ better, ❌ worse for this metric (lower is better for size, "
              "latency and memory).", ""]
    if gates:
        lines += ["### Gates", "", "| metric | allowed | measured | result |", "|---|---|---|---|"]
        lines += [f"| {g.metric} | {g.limit} | {g.detail} | {'❌ fail' if g.status == 'fail' else '✅ pass' if g.status == 'pass' else 'new'} |"
                  for g in gates]
        lines.append("")
    lines += ["### Params changed", ""]
    if params:
        lines += ["| param | base | head |", "|---|---|---|"]
        lines += [f"| `{key}` | {_param(old)} | {_param(new)} |" for key, old, new in params]
    else:
        lines.append("None.")
    if plots:
        lines += ["", "### Plots", ""] + [f"![{title}]({path})" for title, path in plots.items()]
    return "\n".join(lines) + "\n"


# --- plots --------------------------------------------------------------------------------------------

def plot_pngs(base: dict, head: dict, out_dir: Path) -> dict[str, str]:
    """accuracy_size.png and latency.png, base against head; {title: file name}. Missing data is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    colors = {variant: f"C{i}" for i, variant in enumerate(VARIANTS)}
    if base.get("accuracy_size") or head.get("accuracy_size"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, data, filled in (("base", base.get("accuracy_size"), False), ("head", head.get("accuracy_size"), True)):
            for point in data or []:
                color = colors.get(point["variant"], "black")
                ax.scatter(point["size_mb"], point["exact_match"], s=60, marker="o" if filled else "s",
                           color=color if filled else "none", edgecolors=color, linewidths=1.5)
                ax.annotate(f"{point['variant']} ({label})", (point["size_mb"], point["exact_match"]),
                            textcoords="offset points", xytext=(6, 4 if filled else -10), fontsize=7)
        ax.set(xlabel="size on disk (MB)", ylabel="exact match",
               title="Accuracy against size (hollow: base, filled: head)")
        fig.tight_layout()
        fig.savefig(out_dir / "accuracy_size.png", dpi=100)
        plt.close(fig)
        written["Accuracy against size"] = "accuracy_size.png"
    if base.get("latency") or head.get("latency"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, data, style in (("base", base.get("latency") or {}, "--"), ("head", head.get("latency") or {}, "-")):
            for variant, points in data.items():
                ax.plot([p["quantile"] for p in points], [p["latency_ms"] for p in points], style,
                        color=colors.get(variant, "black"), label=f"{variant} ({label})")
        ax.set_yscale("log")
        ax.set(xlabel="quantile", ylabel="request latency (ms, log)",
               title="Latency distribution (dashed: base, solid: head)")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out_dir / "latency.png", dpi=100)
        plt.close(fig)
        written["Latency distribution"] = "latency.png"
    return written


# --- reading a revision through DVC ------------------------------------------------------------------

def read_revision(rev: str | None, repo: str = ".") -> tuple[dict, dict, dict]:
    """(metrics, params, plot data) at a git revision, or in the workspace when rev is None.

    A revision without metrics or plots (before the first pipeline run) gives empty dicts, not an error.
    """
    import dvc.api
    from dvc.scm import RevError

    from slmops.core.errors import InputError

    try:
        params = dvc.api.params_show(repo=repo, rev=rev)
    except RevError as err:
        raise InputError(f"slmops report: {err}") from None
    except Exception as err:  # a revision before params.yaml existed
        _warn(rev, "params", err)
        params = {}
    try:
        metrics = dvc.api.metrics_show(METRICS_FILE, repo=repo, rev=rev)
    except Exception as err:  # a revision before the first pipeline run
        _warn(rev, "metrics", err)
        metrics = {}
    plots = {"accuracy_size": _read_json(PLOTS["accuracy_size"], repo, rev),
             "latency": {v: data for v in VARIANTS
                         if (data := _read_json(f"{PLOTS['latency']}/{v}.json", repo, rev)) is not None}}
    return metrics, params, plots


def _warn(rev: str | None, what: str, err: Exception) -> None:
    import sys

    print(f"slmops report: no {what} at {rev or 'workspace'} ({type(err).__name__}: {err}); shown as new",
          file=sys.stderr)


def _read_json(path: str, repo: str, rev: str | None):
    import dvc.api

    try:
        return json.loads(dvc.api.read(path, repo=repo, rev=rev))
    except (FileNotFoundError, json.JSONDecodeError, IsADirectoryError):
        return None
    except Exception as err:  # DVC wraps a path missing at that revision in its own errors
        if "does not exist" in str(err) or "No such file" in str(err) or "not found" in str(err).lower():
            return None
        raise
