"""`slmops report`: what a change did to the shipped model, base revision against head, with gates.

Metrics, params and plot data at a git revision are read from git alone (the commit's files, whatever the working
copy holds); only `--head workspace` reads the working copy. The rows and the keys a gate may name come from the
metric registry, slmops.core.metrics. `dvc metrics diff` shows no relative change and cannot fail a build
(treeverse/dvc#10408): the gates here do.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from slmops.core.errors import InputError
from slmops.core.files import parse_json_object
from slmops.core.metrics import BY_KEY, COMPARED, SPEED_KEYS, Metric
from slmops.eval.sidebyside import round_ratios, rounds_disagree
from slmops.report.paired import (
    DEFAULT_SIGNIFICANCE,
    RESAMPLES,
    BootstrapChange,
    PairedChange,
    Pairing,
    TrainingNoise,
    pair,
)

log = logging.getLogger(__name__)

MARKER = "<!-- slmops-report -->"  # CI finds its one comment by this and edits it
METRICS_FILE = "reports/metrics.json"
PARAMS_FILE = "params.yaml"
PREDICTIONS = "reports/predictions"
PLOTS = {"accuracy_size": "reports/plots/accuracy_size.json", "latency": "reports/plots/latency"}
VARIANTS = ("teacher", "student", "finetuned", "quantized")
ABSENT = "(absent)"
# Retention figures that are speed ratios within each run (shipped against teacher), never timed side by side.
RUN_RATIOS = ("latency_saved", "memory_saved")


@dataclass
class Row:
    """One metric, base against head. `same_run`: a speed figure timed side by side in this run (else, for speed,
    committed figures from two runs: context only). `noise`: the paired test of a per-record share (or the
    bootstrap of accuracy kept), when both revisions' answers could be paired."""

    metric: Metric
    base: float | None
    head: float | None
    same_run: bool = False
    noise: PairedChange | BootstrapChange | None = None
    round_ratios: tuple[float, ...] = ()  # same-run speed: head ÷ base in each round of the side-by-side timing

    @property
    def rounds_disagree(self) -> bool:
        """Same-run speed whose rounds do not agree on the direction (one round faster, another slower): the
        change is within the machine's round-to-round noise."""
        return rounds_disagree(self.round_ratios)

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

    @property
    def context_only(self) -> bool:
        """A speed or memory figure not timed side by side, or a speed ratio against the teacher (each run's own,
        on whatever machine and load it had): never gated, never marked better or worse."""
        return (self.metric.key in SPEED_KEYS and not self.same_run) or self.metric.key in RUN_RATIOS


@dataclass
class GateResult:
    metric: str
    limit: str
    status: str  # pass | fail | new | context (not gated: speed not timed side by side)
    detail: str


def compare(base: dict, head: dict, speed: dict | None = None, pairing: Pairing | None = None) -> list[Row]:
    """One row per metric of `slmops report` (slmops.core.metrics.COMPARED), in its order, from two
    reports/metrics.json dicts; a value missing or not a finite number is None. `speed`: the side-by-side timing
    of `slmops bench compare` (slmops.eval.sidebyside), whose base and head replace the committed speed figures.
    `pairing`: the record-by-record test of the answers (slmops.report.paired), attached to the per-record rows."""
    rows = []
    for m in COMPARED:
        if speed is not None and m.key in SPEED_KEYS:
            base_value, head_value = _number(speed["base"].get(m.key)), _number(speed["head"].get(m.key))
            ratios = tuple(round_ratios(speed, m.key))
            rows.append(Row(m, base_value, head_value, same_run=True, round_ratios=ratios))
            continue
        noise = None
        if pairing is not None:
            noise = pairing.kept if m.key == "accuracy_kept" else pairing.shares.get(m.key)
        rows.append(Row(m, _number(base.get(m.key)), _number(head.get(m.key)), noise=noise))
    return rows


def _number(value) -> float | None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if number else None


def check_gates(rows: list[Row], gates: dict) -> list[GateResult]:
    """One result per gate, in the order of `gates`: {metric key: {"max_regression": absolute, in the metric's
    units (a fraction for a rate)} or {"max_regression_pct": percent of the base value}, and for a per-record share
    optionally "significance" (default 0.05)}. A gate's key must be a row's (slmops.core.metrics.GATE_KEYS; params
    validation checks it): KeyError otherwise.

    A per-record share with paired answers fails only when its regression is beyond the limit and the paired test
    (McNemar's one-sided exact test, or with measured training noise a z-test, slmops.report.paired) finds it
    significant at that level. A speed or memory figure gates only when timed side
    by side in one run (`slmops bench compare`); committed figures give status "context"."""
    by_key = {row.metric.key: row for row in rows}
    results = []
    for key, gate in gates.items():
        row = by_key[key]
        relative = "max_regression_pct" in gate
        allowed = f"{gate['max_regression_pct']:g}%" if relative else _amount(gate["max_regression"], row.metric)
        limit = f"{allowed} worse"
        if row.head is None:
            results.append(GateResult(key, limit, "fail", "missing in head"))
            continue
        if row.base is None:
            results.append(GateResult(key, limit, "new", "no base value (first run)"))
            continue
        if row.context_only:
            why = "a ratio within each run" if key in RUN_RATIOS else "base and head were not timed side by side"
            results.append(GateResult(key, limit, "context", f"not gated: {why}"))
            continue
        worse = row.regression
        if relative:
            amount = worse / abs(row.base) * 100 if row.base else (math.inf if worse > 0 else 0.0)
            failed, detail = amount > gate["max_regression_pct"], _percent(amount)
        else:
            failed, detail = worse > gate["max_regression"], _worded(-worse, row.metric)
        if isinstance(row.noise, PairedChange):
            level = gate.get("significance") or DEFAULT_SIGNIFICANCE
            significant = row.noise.p_worse < level
            noise = "" if row.noise.training_noise is None else ", training noise included"
            detail += f" ({_interval(row.noise, row.metric)}; one-sided {_p_is(row.noise.p_worse)}{noise}"
            if failed and not significant:
                detail += f", within noise at {level:g})"
            else:
                detail += f", {'significant' if significant else 'not significant'} at {level:g})"
            failed = failed and significant
        results.append(GateResult(key, limit, "fail" if failed else "pass", detail))
    return results


def _amount(value: float, metric: Metric) -> str:
    """A size of change without sign; a rate's in points (0.03 -> 3.0 pt), not percent."""
    value = abs(value) + 0.0
    return f"{value * 100:.1f} pt" if metric.is_rate else metric.fmt.format(value)


def _worded(improvement: float, metric: Metric) -> str:
    """ "2.0 pt worse", "4.3 pt better" or "unchanged": a change in words, never a signed "worse"."""
    if improvement == 0:
        return "unchanged"
    return f"{_amount(improvement, metric)} {'better' if improvement > 0 else 'worse'}"


def _percent(worse_pct: float) -> str:
    if worse_pct == 0:
        return "unchanged"
    return f"{abs(worse_pct):.1f}% {'worse' if worse_pct > 0 else 'better'}"


def _signed(value: float, metric: Metric) -> str:
    """A change with its sign; a change of a rate in points (0.03 -> +3.0 pt), not percent."""
    value += 0.0  # -0.0 -> 0.0
    if metric.is_rate:
        return f"{value * 100:+.1f} pt"
    return ("+" if value >= 0 else "-") + metric.fmt.format(abs(value))


def _interval(noise: PairedChange | BootstrapChange, metric: Metric) -> str:
    return f"interval {_signed(noise.low, metric)} to {_signed(noise.high, metric)}"


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _p_is(p: float) -> str:
    return f"p {_p(p)}" if p < 0.001 else f"p = {_p(p)}"


def _mark(row: Row, alpha: float) -> str:
    """▲/▼ for the direction of change, ✅/❌ for whether it is an improvement; "within noise" when the paired
    test cannot tell the change from noise; "context only" for speed not timed side by side."""
    if row.change is None:
        return "new" if row.base is None and row.head is not None else ""
    if row.context_only:
        return "context only"
    if row.change == 0:
        return "="
    if (row.noise is not None and row.noise.within_noise(alpha)) or row.rounds_disagree:
        return "≈ within noise"
    arrow = "▲" if row.change > 0 else "▼"
    return f"{arrow} {'✅' if row.regression < 0 else '❌'}"


def _param(value) -> str:
    return value if value == ABSENT else f"`{json.dumps(value, default=str)}`"  # default: a date, if YAML made one


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


# --- the comment ---------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """Everything `slmops report` shows of one head against its base."""

    base_rev: str
    head_rev: str
    rows: list[Row]
    params: list[tuple[str, object, object]]
    gates: list[GateResult]
    pairing: Pairing | None = None
    speed: dict | None = None  # slmops.eval.sidebyside.time_side_by_side's result
    hardware: tuple[dict | None, dict | None] = (None, None)  # metrics.json's, base and head
    charts: list[str] | None = None  # Markdown lines of the Mermaid charts

    @property
    def failed(self) -> list[GateResult]:
        return [g for g in self.gates if g.status == "fail"]


def verdict(c: Comparison) -> str:
    """The one line a reviewer reads first: gates, then accuracy beyond noise, then how speed was measured."""
    checked = [g for g in c.gates if g.status in ("pass", "fail")]
    if c.failed:
        head = f"❌ {len(c.failed)} of {len(checked)} gates fail: {', '.join(g.metric for g in c.failed)}"
    elif checked:
        head = f"✅ all {len(checked)} gates pass"
    else:
        head = "no gate checked" if c.gates else "no gates set"
    parts = [f"**{head}**"]
    if c.pairing is not None and c.pairing.reason is None:
        moved = [
            f"{row.metric.label} {_signed(row.change, row.metric)}"
            for row in c.rows
            if isinstance(row.noise, PairedChange) and row.change and not row.noise.within_noise(c.pairing.alpha)
        ]
        parts.append(f"accuracy beyond noise: {', '.join(moved)}" if moved else "no accuracy change beyond noise")
    parts.append("speed timed side by side in this run" if c.speed else "speed: context only (base not timed here)")
    return " · ".join(parts)


def render(c: Comparison) -> str:
    """The Markdown comment: verdict line, headline table, gates, accuracy record by record, speed, hardware,
    params changed, Mermaid charts. No image links (GitHub cannot show a relative path); PNGs are artifacts."""
    alpha = c.pairing.alpha if c.pairing else DEFAULT_SIGNIFICANCE
    lines = [
        MARKER,
        verdict(c),
        "",
        f"## Model report: `{c.head_rev}` against `{c.base_rev}`",
        "",
        "| metric | base | head | change | relative | |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in c.rows:
        fmt = row.metric.fmt
        base = "—" if row.base is None else fmt.format(row.base)
        head = "—" if row.head is None else fmt.format(row.head)
        change = "" if row.change is None else _signed(row.change, row.metric)
        relative = "" if row.relative is None else f"{row.relative:+.1%}"
        lines.append(f"| {row.metric.label} | {base} | {head} | {change} | {relative} | {_mark(row, alpha)} |")
    legend = "▲/▼: the value went up/down; ✅ better, ❌ worse for this metric (lower is better for size, latency "
    legend += "and memory)"
    if c.pairing is not None and c.pairing.reason is None:
        legend += f"; ≈ within noise: the paired test cannot tell the change from noise at {alpha:g}"
    if any(row.round_ratios for row in c.rows):
        legend += "; for speed timed side by side, ≈ within noise: its rounds disagree on the direction"
    if any(row.context_only for row in c.rows):
        legend += (
            "; context only: speed or memory from two separate runs, or a speed ratio against the teacher within "
            "each run, which the machine and its load sway: not comparable, not gated"
        )
    lines += ["", legend + ".", ""]
    if c.gates:
        lines += ["### Gates", "", "| metric | allowed | measured | result |", "|---|---|---|---|"]
        shown = {"fail": "❌ fail", "pass": "✅ pass", "new": "new", "context": "not gated"}
        lines += [f"| {g.metric} | {g.limit} | {g.detail} | {shown[g.status]} |" for g in c.gates]
        lines.append("")
    lines += _accuracy_section(c.pairing)
    lines += _speed_section(c.speed, c.hardware)
    lines += ["### Params changed", ""]
    if c.params:
        lines += ["| param | base | head |", "|---|---|---|"]
        lines += [f"| `{key}` | {_param(old)} | {_param(new)} |" for key, old, new in c.params]
    else:
        lines.append("None.")
    if c.charts:
        lines += ["", "### Charts", "", *c.charts]
    return "\n".join(lines) + "\n"


def _accuracy_section(pairing: Pairing | None) -> list[str]:
    if pairing is None:
        return []
    lines = ["### Accuracy, record by record", ""]
    if pairing.reason:
        return lines + [f"Not paired: {pairing.reason}; accuracy changes are shown without a test.", ""]
    level = f"{1 - pairing.alpha:.0%}"
    lines += [
        f"| share | base | head | change | {level} interval | right → wrong | wrong → right | p | |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    rate = BY_KEY["exact_match"]
    for name, share in pairing.shares.items():
        label = BY_KEY[name].label if name in BY_KEY else f"field `{name.removeprefix('field.')}`"
        mark = _noise_mark(share, pairing.alpha)
        lines.append(
            f"| {label} | {share.base:.1%} | {share.head:.1%} | {_signed(share.change, rate)} | "
            f"{_signed(share.low, rate)} to {_signed(share.high, rate)} | {share.right_to_wrong} | "
            f"{share.wrong_to_right} | {_p(share.p_value)} | {mark} |"
        )
    if pairing.kept is not None:
        kept = pairing.kept
        mark = _noise_mark(kept, pairing.alpha)
        lines.append(
            f"| accuracy kept vs teacher | {kept.base:.1%} | {kept.head:.1%} | {_signed(kept.change, rate)} | "
            f"{_signed(kept.low, rate)} to {_signed(kept.high, rate)} | | | | {mark} |"
        )
    lines += [
        "",
        f"{pairing.n} eval records, the shipped model's answers at base and head paired by record id. p: "
        f"{pairing.test_name} (two-sided; a gate uses the one-sided p of a regression at its `significance`, "
        f"default {DEFAULT_SIGNIFICANCE:g}). Interval: paired bootstrap, {RESAMPLES:,} resamples, seeded"
        + ("" if pairing.noise is None else ", widened by the training noise")
        + ". "
        + _training_noise_line(pairing.noise),
        "",
    ]
    return lines


def _training_noise_line(noise: TrainingNoise | None) -> str:
    if noise is None:
        return (
            "Training is deterministic per machine, not across CPUs, and its noise was not measured (`slmops "
            "noise`): a retraining elsewhere, or with another seed, can differ beyond this test with no change."
        )
    rms = noise.rms("exact_match")
    em = "" if rms is None else f": two runs of the same params differ by {rms * 100:.1f} pt of exact match (RMS)"
    return (
        f"Training noise from {noise.source} ({noise.runs} runs of the same params with other seeds or "
        f"machines{em}), added to the eval-sampling variance."
    )


def _noise_mark(change: PairedChange | BootstrapChange, alpha: float) -> str:
    """=, ≈ within noise, or ▲ ✅ / ▼ ❌ (every share here: higher is better)."""
    if change.change == 0:
        return "="
    if change.within_noise(alpha):
        return "≈ within noise"
    return "▲ ✅" if change.change > 0 else "▼ ❌"


def _describe_hardware(hw: dict | None) -> str:
    if not hw:
        return "unknown (not recorded)"
    gpu = ", ".join(hw.get("gpu") or []) or "no GPU"
    return f"{hw.get('cpu')}, {hw.get('cores')} cores, {gpu}"


def _same_hardware(a: dict | None, b: dict | None) -> bool:
    keys = ("cpu", "cores", "gpu")
    return bool(a and b) and all(a.get(k) == b.get(k) for k in keys)


def _speed_section(speed: dict | None, hardware: tuple[dict | None, dict | None]) -> list[str]:
    base_hw, head_hw = hardware
    lines = []
    if speed:
        lines += [
            "### Speed, timed side by side",
            "",
            f"Base and head packages timed alternately in this job ({speed['rounds']} rounds of {speed['requests']} "
            f"requests each, one at a time, order {' → '.join(speed['order'])}) on "
            f"{_describe_hardware(speed['hardware'])}. Gates on speed and memory use these ratios.",
            "",
            "| figure | base | head | head ÷ base | round by round | |",
            "|---|---:|---:|---:|---|---|",
        ]
        for key in SPEED_KEYS:
            metric, b, h = BY_KEY[key], speed["base"].get(key), speed["head"].get(key)
            if b is None or h is None:
                continue
            ratio = f"×{h / b:.2f}" if b else "—"
            rounds = round_ratios(speed, key)
            spread = " ".join(f"×{r:.2f}" for r in rounds)
            noise = "≈ within noise" if rounds_disagree(rounds) else ""
            lines.append(
                f"| {metric.label} | {metric.fmt.format(b)} | {metric.fmt.format(h)} | {ratio} | {spread} | {noise} |"
            )
        lines.append("")
    else:
        lines += [
            "### Speed: context only",
            "",
            "The base package was not timed in this run, so the speed and memory rows show the committed figures "
            "of two separate runs: context, never a gate (`slmops bench compare BASE_DIR HEAD_DIR` times both).",
            "",
        ]
    if not base_hw or not head_hw:
        missing = " and ".join(side for side, hw in (("base", base_hw), ("head", head_hw)) if not hw)
        lines += [
            f"The hardware of the {missing} metrics was not recorded (reports/metrics.json → hardware): whether "
            f"base and head ran on the same machine is unknown. Head: {_describe_hardware(head_hw)}.",
            "",
        ]
    elif not _same_hardware(base_hw, head_hw):
        lines += [
            f"Base and head metrics come from different hardware: base {_describe_hardware(base_hw)}; head "
            f"{_describe_hardware(head_hw)}. Their committed speed and memory figures are not comparable, and "
            "training differs across CPUs, so their answers differ by noise even with no change.",
            "",
        ]
    return lines


# --- charts --------------------------------------------------------------------------------------------
# Mermaid, which GitHub renders in comments: nothing to host, nothing to link.

QUANTILES = (10, 25, 50, 75, 90, 95)


def _xychart(title: str, x_labels: list[str], y_label: str, series: list[tuple[str, list[float]]]) -> list[str]:
    """A Mermaid xychart-beta block; `series`: ("bar" or "line", one value per x label)."""
    quoted = ", ".join(f'"{label}"' for label in x_labels)
    lines = ["```mermaid", "xychart-beta", f'    title "{title}"', f"    x-axis [{quoted}]", f'    y-axis "{y_label}"']
    lines += [f"    {kind} [{', '.join(f'{v:.4g}' for v in values)}]" for kind, values in series]
    return lines + ["```", ""]


def mermaid_charts(base_plots: dict, head_plots: dict, speed: dict | None, shipped: str = "quantized") -> list[str]:
    """Markdown lines of Mermaid charts: exact match and size on disk per variant (bars: head, line: base), and the
    shipped model's request-latency quantiles (lines: base, head), from the side-by-side timing when there is one,
    else from the committed plot data. Missing data: that chart is left out."""
    lines = []
    base_points = {p["variant"]: p for p in base_plots.get("accuracy_size") or []}
    head_points = {p["variant"]: p for p in head_plots.get("accuracy_size") or []}
    variants = [v for v in VARIANTS if v in head_points and v in base_points]
    if variants:
        for key, title, unit, scale in (
            ("exact_match", "Exact match by variant (bars: head, line: base)", "exact match (%)", 100),
            ("size_mb", "Size on disk by variant (bars: head, line: base)", "MB", 1),
        ):
            lines += _xychart(
                title,
                variants,
                unit,
                [
                    ("bar", [head_points[v][key] * scale for v in variants]),
                    ("line", [base_points[v][key] * scale for v in variants]),
                ],
            )
    if speed:
        base_ms, head_ms, how = speed["base"]["latencies_ms"], speed["head"]["latencies_ms"], "timed side by side"
    else:
        base_ms = [p["latency_ms"] for p in (base_plots.get("latency") or {}).get(shipped) or []]
        head_ms = [p["latency_ms"] for p in (head_plots.get("latency") or {}).get(shipped) or []]
        how = "two runs, context only"
    if base_ms and head_ms:
        lines += _xychart(
            f"Request latency of the {shipped} model, {how} (ms; first line: base, second: head)",
            [f"p{q}" for q in QUANTILES],
            "ms",
            [("line", list(np.percentile(base_ms, QUANTILES))), ("line", list(np.percentile(head_ms, QUANTILES)))],
        )
    return lines


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
        for label, data, filled in (
            ("base", base.get("accuracy_size"), False),
            ("head", head.get("accuracy_size"), True),
        ):
            for point in data or []:
                color = colors.get(point["variant"], "black")
                ax.scatter(
                    point["size_mb"],
                    point["exact_match"],
                    s=60,
                    marker="o" if filled else "s",
                    color=color if filled else "none",
                    edgecolors=color,
                    linewidths=1.5,
                )
                ax.annotate(
                    f"{point['variant']} ({label})",
                    (point["size_mb"], point["exact_match"]),
                    textcoords="offset points",
                    xytext=(6, 4 if filled else -10),
                    fontsize=7,
                )
        ax.set(
            xlabel="size on disk (MB)", ylabel="exact match", title="Accuracy against size (hollow: base, filled: head)"
        )
        fig.tight_layout()
        fig.savefig(out_dir / "accuracy_size.png", dpi=100)
        plt.close(fig)
        written["Accuracy against size"] = "accuracy_size.png"
    if base.get("latency") or head.get("latency"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, data, style in (("base", base.get("latency") or {}, "--"), ("head", head.get("latency") or {}, "-")):
            for variant, points in data.items():
                ax.plot(
                    [p["quantile"] for p in points],
                    [p["latency_ms"] for p in points],
                    style,
                    color=colors.get(variant, "black"),
                    label=f"{variant} ({label})",
                )
        ax.set_yscale("log")
        ax.set(
            xlabel="quantile",
            ylabel="request latency (ms, log)",
            title="Latency distribution (dashed: base, solid: head)",
        )
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out_dir / "latency.png", dpi=100)
        plt.close(fig)
        written["Latency distribution"] = "latency.png"
    return written


# --- reading a revision from git ----------------------------------------------------------------------
# scmrepo (installed with DVC) gives a read-only filesystem over a commit: no checkout, the working copy untouched.


def read_revision(rev: str | None, repo: str | Path = ".") -> tuple[dict, dict, dict]:
    """(metrics, params, plot data) of the DVC project in folder `repo` at git revision `rev`, read from git
    alone; rev None: the working copy. A revision may also name a DVC experiment (`dvc exp show`'s name).

    metrics: reports/metrics.json as a dict; params: params.yaml as a dict; plot data:
    {"accuracy_size": the list in reports/plots/accuracy_size.json or None,
     "latency": {variant: the list in reports/plots/latency/<variant>.json}}.
    A revision without metrics, params or plots (before the first pipeline run) gives empty ones, logged as a
    warning, not an error. Raises InputError for an unknown revision, a folder outside a git repository, or
    metrics or params that do not parse (naming the file and the revision).
    """
    return _at_revision(rev, repo, _read_files)


def read_predictions(rev: str | None, repo: str | Path = ".") -> dict[str, list[dict]]:
    """{variant: its answers, reports/predictions/<variant>.jsonl} at git revision `rev` (None: the working copy);
    a variant without the file is left out. Raises InputError for a line that is not a JSON object (naming file,
    revision and line) and as read_revision does."""
    return _at_revision(rev, repo, _read_predictions)


def _at_revision(rev: str | None, repo: str | Path, reader):
    """reader(read, where) with read(path relative to the project) -> text or None, at `rev` or the working copy."""
    where = "workspace" if rev is None else rev
    if rev is None:
        return reader(lambda path: _read_workspace(Path(repo) / path), where)
    from scmrepo.exceptions import SCMError
    from scmrepo.git import Git

    try:
        scm = Git(str(repo))
    except SCMError as err:
        raise InputError(f"slmops report: {Path(repo).resolve()} is not in a git repository ({err})") from None
    try:
        try:
            fs = scm.get_fs(experiment_ref(scm, rev) or rev)
        except SCMError:
            raise InputError(
                f"slmops report: unknown git revision {rev!r} (not a branch, tag, commit or experiment of "
                f"{scm.root_dir})"
            ) from None
        prefix = PurePosixPath(Path(repo).resolve().relative_to(Path(scm.root_dir).resolve()).as_posix())
        return reader(lambda path: _read_git(fs, str(prefix / path)), where)
    finally:
        scm.close()


EXPERIMENTS = "refs/exps/"  # DVC keeps each experiment as refs/exps/<baseline sha[:2]>/<baseline sha[2:]>/<name>


def experiment_ref(scm, name: str) -> str | None:
    """The git ref of the DVC experiment called `name`, or None when no experiment has that name."""
    for ref in scm.iter_refs(base=EXPERIMENTS):
        if ref.rsplit("/", 1)[-1] == name and ref.count("/") == 4:
            return ref
    return None


def experiments_of(rev: str, repo: str | Path = ".") -> list[str]:
    """The names of the DVC experiments run on top of commit `rev` (`dvc exp run`, queued or not), sorted.
    Raises InputError for an unknown revision."""
    from scmrepo.exceptions import SCMError
    from scmrepo.git import Git

    scm = Git(str(repo))
    try:
        try:
            baseline = scm.resolve_rev(rev)
        except SCMError:
            raise InputError(f"slmops report: unknown git revision {rev!r}") from None
        prefix = f"{EXPERIMENTS}{baseline[:2]}/{baseline[2:]}/"
        return sorted(ref.removeprefix(prefix) for ref in scm.iter_refs(base=prefix) if ref.count("/") == 4)
    finally:
        scm.close()


def _read_workspace(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _read_git(fs, path: str) -> str | None:
    try:
        return fs.cat_file(path).decode()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _read_predictions(read, where: str) -> dict[str, list[dict]]:
    predictions = {}
    for variant in VARIANTS:
        path = f"{PREDICTIONS}/{variant}.jsonl"
        text = read(path)
        if text is None:
            continue
        rows = []
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                rows.append(parse_json_object(line, f"{path}:{number} at {where}"))
        predictions[variant] = rows
    return predictions


def _read_files(read, where: str) -> tuple[dict, dict, dict]:
    """Metrics, params and plot data through `read(path relative to the project) -> text or None`."""
    text = read(PARAMS_FILE)
    params = {} if text is None else read_params_text(text, f"{PARAMS_FILE} at {where}")
    if text is None:  # a revision before params.yaml existed
        log.warning("slmops report: no %s at %s; every param shown as added", PARAMS_FILE, where)
    text = read(METRICS_FILE)
    metrics = {} if text is None else parse_json_object(text, f"{METRICS_FILE} at {where}")
    if text is None:  # a revision before the first pipeline run
        log.warning("slmops report: no %s at %s; metrics shown as new", METRICS_FILE, where)
    plots = {
        "accuracy_size": _plot(read, PLOTS["accuracy_size"], where),
        "latency": {
            v: data for v in VARIANTS if (data := _plot(read, f"{PLOTS['latency']}/{v}.json", where)) is not None
        },
    }
    return metrics, params, plots


def read_params_text(text: str, source: str) -> dict:
    """params.yaml text parsed as DVC parses it (YAML 1.2, ruamel.yaml: `5e-3` is a float); {} when empty.
    `source` names the file and revision in errors. Raises InputError for invalid YAML or a top level that is
    not a mapping."""
    from slmops.core.params import read_yaml

    params = read_yaml(text, source)
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InputError(f"{source}: expected a mapping of params at the top level, got {type(params).__name__}")
    return params


def _plot(read, path: str, where: str):
    """A plot's data, or None when absent or unreadable (a plot is shown when it can be, never gates)."""
    text = read(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        log.warning("slmops report: %s at %s is not valid JSON (%s); plot skipped", path, where, err)
        return None


# --- assembling a comparison ---------------------------------------------------------------------------


def build(base_rev: str, head_rev: str, speed: dict | None = None, repo: str | Path = ".") -> Comparison:
    """Base against head (head "workspace": the working copy): rows, gates (from the head's params), answers paired
    record by record (with the task in the working copy's `task.dir`) and tested with the training noise of
    reports/noise.json at base (else at head) when there is one, the side-by-side `speed` if given, charts.
    Raises InputError for an unknown revision, unreadable files, or invalid params at head."""
    from slmops.core.params import validate_tree
    from slmops.core.task import load_task
    from slmops.report.noise import NOISE_FILE, read_noise

    head_arg = None if head_rev == "workspace" else head_rev
    base_metrics, base_params, base_plots = read_revision(base_rev, repo)
    head_metrics, head_params, head_plots = read_revision(head_arg, repo)
    head = validate_tree(head_params, source=f"params.yaml at {head_rev}", check_paths=False)
    gates = {key: gate.model_dump(exclude_none=True) for key, gate in head.gates.items()}
    alpha = (gates.get("exact_match") or {}).get("significance") or DEFAULT_SIGNIFICANCE
    pairing = None
    base_answers, head_answers = read_predictions(base_rev, repo), read_predictions(head_arg, repo)
    if base_answers or head_answers:
        noise = _at_revision(base_rev, repo, lambda read, where: read_noise(read(NOISE_FILE), where))
        if noise is None:
            noise = _at_revision(head_arg, repo, lambda read, where: read_noise(read(NOISE_FILE), where))
        task = load_task(Path(repo) / head.task.dir)
        pairing = pair(task, base_answers, head_answers, alpha=alpha, noise=noise)
    rows = compare(base_metrics, head_metrics, speed, pairing)
    return Comparison(
        base_rev,
        head_rev,
        rows,
        changed_params(base_params, head_params),
        check_gates(rows, gates),
        pairing,
        speed,
        (base_metrics.get("hardware"), head_metrics.get("hardware")),
        mermaid_charts(base_plots, head_plots, speed),
    )


def rank(comparisons: list[Comparison]) -> list[Comparison]:
    """Best first: every gate passing, then higher exact match, then smaller size on disk."""

    def key(c: Comparison):
        by_key = {row.metric.key: row.head for row in c.rows}
        return (bool(c.failed), -(by_key.get("exact_match") or 0.0), by_key.get("size_mb") or math.inf)

    return sorted(comparisons, key=key)


def render_ranking(comparisons: list[Comparison]) -> str:
    """Several heads (experiments of one baseline) ranked in one table, each with its params changed, exact match
    change and interval, size, latency, and its gates; then each one's full report."""
    ranked = rank(comparisons)
    base_rev = ranked[0].base_rev
    passing = sum(not c.failed for c in ranked)
    lines = [
        MARKER,
        f"**{len(ranked)} experiments against `{base_rev}`: {passing} pass every gate; best: `{ranked[0].head_rev}`**",
        "",
        "| rank | experiment | params changed | exact match | change | interval | size (MB) | p95 (ms) | gates |",
        "|---:|---|---|---:|---:|---|---:|---:|---|",
    ]
    for number, c in enumerate(ranked, start=1):
        rows = {row.metric.key: row for row in c.rows}
        em, size, p95 = rows["exact_match"], rows["size_mb"], rows["latency_p95_ms"]
        noise = em.noise if isinstance(em.noise, PairedChange) else None
        interval = f"{_signed(noise.low, em.metric)} to {_signed(noise.high, em.metric)}" if noise else ""
        if noise and em.change and noise.within_noise(c.pairing.alpha):
            interval += " (≈ within noise)"
        params = ", ".join(f"`{key}`={json.dumps(new, default=str)}" for key, _, new in c.params) or "none"
        gates = f"❌ {', '.join(g.metric for g in c.failed)}" if c.failed else "✅"
        lines.append(
            f"| {number} | `{c.head_rev}` | {params} | {_shown(em)} | "
            f"{'' if em.change is None else _signed(em.change, em.metric)} | {interval} | {_shown(size)} | "
            f"{_shown(p95)} | {gates} |"
        )
    lines += [
        "",
        "Ranked by: every gate passing, then exact match, then size. Latency: each experiment's own run, one after "
        "another on this machine (context, not gated). Interval: paired bootstrap of the exact-match change against "
        "the baseline's answers.",
        "",
    ]
    for c in ranked:
        summary = f"<details><summary><code>{c.head_rev}</code>: {verdict(c)}</summary>"
        lines += [summary, "", render(c).removeprefix(MARKER + "\n"), "</details>", ""]
    return "\n".join(lines) + "\n"


def _shown(row: Row) -> str:
    return "—" if row.head is None else row.metric.fmt.format(row.head)
