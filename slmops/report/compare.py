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

from slmops.core.errors import InputError
from slmops.core.files import parse_json_object
from slmops.core.metrics import COMPARED, Metric

log = logging.getLogger(__name__)

MARKER = "<!-- slmops-report -->"  # CI finds its one comment by this and edits it
METRICS_FILE = "reports/metrics.json"
PARAMS_FILE = "params.yaml"
PLOTS = {"accuracy_size": "reports/plots/accuracy_size.json", "latency": "reports/plots/latency"}
VARIANTS = ("teacher", "student", "finetuned", "quantized")
ABSENT = "(absent)"


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
    """One row per metric of `slmops report` (slmops.core.metrics.COMPARED), in its order, from two
    reports/metrics.json dicts; a value missing or not a finite number is None."""
    return [Row(m, _number(base.get(m.key)), _number(head.get(m.key))) for m in COMPARED]


def _number(value) -> float | None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if number else None


def check_gates(rows: list[Row], gates: dict) -> list[GateResult]:
    """One result per gate, in the order of `gates`: {metric key: {"max_regression": absolute, in the metric's
    units (a fraction for a rate)} or {"max_regression_pct": percent of the base value}}. A gate's key must be a
    row's (slmops.core.metrics.GATE_KEYS; params validation checks it): KeyError otherwise."""
    by_key = {row.metric.key: row for row in rows}
    results = []
    for key, gate in gates.items():
        row = by_key[key]
        relative = "max_regression_pct" in gate
        limit = (
            f"{gate['max_regression_pct']:g}% worse"
            if relative
            else f"{_signed(gate['max_regression'], row.metric).lstrip('+')} worse"
        )
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
            failed, detail = worse > gate["max_regression"], f"{_signed(worse, row.metric)} worse"
        results.append(GateResult(key, limit, "fail" if failed else "pass", detail))
    return results


def _signed(value: float, metric: Metric) -> str:
    """A change with its sign; a change of a rate in points (0.03 -> +3.0 pt), not percent."""
    value += 0.0  # -0.0 -> 0.0
    if metric.is_rate:
        return f"{value * 100:+.1f} pt"
    return ("+" if value >= 0 else "-") + metric.fmt.format(abs(value))


def _direction(row: Row) -> str:
    """▲/▼ for the direction of change, ✅/❌ for whether it is an improvement."""
    if row.change is None:
        return "new" if row.base is None and row.head is not None else ""
    if row.change == 0:
        return "="
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


def render(
    base_rev: str, head_rev: str, rows: list[Row], params: list, gates: list[GateResult], plots: dict[str, str]
) -> str:
    failed = [g for g in gates if g.status == "fail"]
    verdict = f"❌ {len(failed)} gate(s) failed" if failed else ("✅ all gates pass" if gates else "no gates set")
    lines = [
        MARKER,
        f"## Model report: `{head_rev}` against `{base_rev}`",
        "",
        f"**{verdict}**",
        "",
        "| metric | base | head | change | relative | |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        fmt = row.metric.fmt
        base = "—" if row.base is None else fmt.format(row.base)
        head = "—" if row.head is None else fmt.format(row.head)
        change = "" if row.change is None else _signed(row.change, row.metric)
        relative = "" if row.relative is None else f"{row.relative:+.1%}"
        lines.append(f"| {row.metric.label} | {base} | {head} | {change} | {relative} | {_direction(row)} |")
    lines += [
        "",
        "▲/▼: the value went up/down; ✅ better, ❌ worse for this metric (lower is better for size, "
        "latency and memory).",
        "",
    ]
    if gates:
        lines += ["### Gates", "", "| metric | allowed | measured | result |", "|---|---|---|---|"]
        shown = {"fail": "❌ fail", "pass": "✅ pass", "new": "new"}
        lines += [f"| {g.metric} | {g.limit} | {g.detail} | {shown[g.status]} |" for g in gates]
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
    alone; rev None: the working copy.

    metrics: reports/metrics.json as a dict; params: params.yaml as a dict; plot data:
    {"accuracy_size": the list in reports/plots/accuracy_size.json or None,
     "latency": {variant: the list in reports/plots/latency/<variant>.json}}.
    A revision without metrics, params or plots (before the first pipeline run) gives empty ones, logged as a
    warning, not an error. Raises InputError for an unknown revision, a folder outside a git repository, or
    metrics or params that do not parse (naming the file and the revision).
    """
    where = "workspace" if rev is None else rev
    if rev is None:
        return _read_files(lambda path: _read_workspace(Path(repo) / path), where)
    from scmrepo.exceptions import SCMError
    from scmrepo.git import Git

    try:
        scm = Git(str(repo))
    except SCMError as err:
        raise InputError(f"slmops report: {Path(repo).resolve()} is not in a git repository ({err})") from None
    try:
        try:
            fs = scm.get_fs(rev)
        except SCMError:
            raise InputError(
                f"slmops report: unknown git revision {rev!r} (not a branch, tag or commit of {scm.root_dir})"
            ) from None
        prefix = PurePosixPath(Path(repo).resolve().relative_to(Path(scm.root_dir).resolve()).as_posix())
        return _read_files(lambda path: _read_git(fs, str(prefix / path)), where)
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
