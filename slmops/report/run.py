"""reports/report.md: what this run measured, per variant, beside the claims the project started from."""

from __future__ import annotations

import subprocess

from slmops.core.metrics import BY_KEY, VARIANT_COLUMNS

# The seed's headline claims: (retention key in slmops.core.metrics, claimed fraction, wording).
CLAIMS = (
    ("accuracy_kept", 0.92, "accuracy kept (shipped model / teacher exact match)"),
    ("latency_saved", 0.85, "less inference time (p50 request latency against the teacher)"),
    ("memory_saved", 0.95, "less memory (the process's peak resident memory against the teacher's)"),
    (
        "model_memory_saved",
        0.95,
        "less model memory (peak resident memory less the runtime's own before the weights, against the teacher)",
    ),
    (
        "size_saved_by_quantization",
        0.75,
        "smaller after quantization (ONNX weights against the fine-tuned fp32 weights)",
    ),
)

# The per-variant table: (header, key, format); `runtime` is text (what ran the variant), then the registry's columns.
COLUMNS = (("runtime", "runtime", "{}"), *((m.column, m.key, m.table_fmt) for m in VARIANT_COLUMNS))


def git_revision() -> str:
    """The commit checked out when the stage ran (the code that made these figures)."""
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def shown(value, fmt: str) -> str:
    """A figure in its format, or "n/a" when unknown (an endpoint teacher's size, memory, parameters)."""
    return "n/a" if value is None else fmt.format(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def render_variants(variants: dict[str, dict]) -> list[str]:
    """The per-variant table: runtime, size, accuracy, latency, memory."""
    return _table(
        ["variant", *(c[0] for c in COLUMNS)],
        # .get: a metrics file written before a column existed shows n/a there
        [[name, *(shown(v.get(key), fmt) for _, key, fmt in COLUMNS)] for name, v in variants.items()],
    )


def render(metrics: dict, quantize: dict, eval_count: int, revision: str) -> str:
    variants = metrics["variants"]
    lines = [
        "# Evaluation report",
        "",
        f"Run at git revision `{revision}`; {eval_count} held-out eval records; the shipped model is the "
        f"**{quantize['precision']}** ONNX export ({quantize['engine']} engine, {quantize['execution_provider']}) "
        "run by onnxruntime-genai; the others run in PyTorch fp32. Latency: one request at a time, greedy.",
        "",
        "## Variants",
        "",
        *render_variants(variants),
        "",
        "## Per-field accuracy",
        "",
    ]
    fields = list(next(iter(variants.values()))["field_accuracy"])
    lines += _table(
        ["variant", *fields],
        [[name, *(f"{v['field_accuracy'][f]:.1%}" for f in fields)] for name, v in variants.items()],
    )
    lines += ["", "## Claims against this run", ""]
    lines += _table(
        ["claim", "measured", "met"],
        [
            [
                f"{claimed:.0%} {wording}",
                shown(metrics[key], BY_KEY[key].fmt),
                "n/a" if metrics[key] is None else "yes" if metrics[key] >= claimed else "no",
            ]
            for key, claimed, wording in CLAIMS
        ],
    )
    lines += [
        "",
        f"The shipped model has {shown(metrics['parameter_ratio'], BY_KEY['parameter_ratio'].fmt)} of the teacher's "
        f"parameters and is {shown(metrics['size_saved'], BY_KEY['size_saved'].fmt)} smaller on disk than the teacher"
        + (" (n/a: the teacher is behind an endpoint)." if metrics["size_saved"] is None else "."),
        "",
        "Plots: `dvc plots show` (accuracy against size, latency quantiles per variant, training curves).",
        "",
    ]
    return "\n".join(lines)
