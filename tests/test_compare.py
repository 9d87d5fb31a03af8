"""slmops report: metrics and params at two git revisions read from git alone, relative changes, gates, first run."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

from slmops.core.errors import InputError
from slmops.core.metrics import BY_KEY, GATE_KEYS, HEADLINE, METRICS, VARIANT_COLUMNS
from slmops.report.compare import MARKER, changed_params, check_gates, compare, read_params_text, read_revision, render

HEAD_METRICS = {
    "exact_match": 0.85,
    "schema_valid": 1.0,
    "json_valid": 1.0,
    "size_mb": 0.2,
    "weights_mb": 0.1,
    "latency_p50_ms": 6.0,
    "latency_p95_ms": 9.0,
    "ttft_p50_ms": 1.5,
    "decode_tokens_per_s": 8000.0,
    "peak_rss_mb": 70.0,
    "accuracy_kept": 0.94,
    "latency_saved": 0.95,
    "memory_saved": 0.8,
    "size_saved": 0.9,
    "parameters": 112960,
}
BASE_METRICS = {
    **HEAD_METRICS,
    "exact_match": 0.88,
    "size_mb": 0.16,
    "latency_p50_ms": 5.0,
    "decode_tokens_per_s": 10000.0,
}


def test_rows_know_which_direction_is_better():
    rows = {r.metric.key: r for r in compare(BASE_METRICS, HEAD_METRICS)}
    assert rows["exact_match"].change == pytest.approx(-0.03) and rows["exact_match"].regression == pytest.approx(0.03)
    assert rows["size_mb"].relative == pytest.approx(0.25) and rows["size_mb"].regression == pytest.approx(0.04)
    assert rows["decode_tokens_per_s"].relative == pytest.approx(-0.2)
    assert rows["decode_tokens_per_s"].regression == pytest.approx(2000.0)  # fewer tokens/s is worse
    assert rows["latency_p95_ms"].change == 0


def test_gates_absolute_relative_new_and_missing():
    rows = compare(BASE_METRICS, HEAD_METRICS)
    gates = {
        "exact_match": {"max_regression": 0.01},
        "size_mb": {"max_regression_pct": 30},
        "decode_tokens_per_s": {"max_regression_pct": 10},
        "latency_p95_ms": {"max_regression": 0},
    }
    results = {g.metric: g for g in check_gates(rows, gates)}
    assert results["exact_match"].status == "fail" and results["exact_match"].detail == "+3.0 pt worse"
    assert results["exact_match"].limit == "1.0 pt worse"
    assert results["size_mb"].status == "pass" and results["size_mb"].detail == "+25.0% worse"
    assert results["decode_tokens_per_s"].status == "fail" and results["decode_tokens_per_s"].detail == "+20.0% worse"
    assert results["latency_p95_ms"].status == "pass"
    first_run = check_gates(compare({}, HEAD_METRICS), gates)
    assert {g.status for g in first_run} == {"new"}
    missing = check_gates(compare(BASE_METRICS, {}), {"exact_match": {"max_regression": 0.01}})
    assert missing[0].status == "fail" and missing[0].detail == "missing in head"


def test_markdown_has_the_marker_table_params_and_gates():
    rows = compare(BASE_METRICS, HEAD_METRICS)
    gates = check_gates(rows, {"exact_match": {"max_regression": 0.01}})
    markdown = render(
        "main",
        "workspace",
        rows,
        [("quantize.precision", "int4", "int8")],
        gates,
        {"Latency distribution": "plots/latency.png"},
    )
    assert markdown.startswith(MARKER + "\n")
    assert "| exact match | 88.0% | 85.0% | -3.0 pt | -3.4% | ▼ ❌ |" in markdown
    assert "| size on disk (MB) | 0.160 | 0.200 | +0.040 | +25.0% | ▲ ❌ |" in markdown
    assert "| decode tokens/s | 10,000 | 8,000 | -2,000 | -20.0% | ▼ ❌ |" in markdown
    assert "| latency p95 (ms) | 9.00 | 9.00 | +0.00 | +0.0% | = |" in markdown
    assert '| `quantize.precision` | `"int4"` | `"int8"` |' in markdown
    assert "**❌ 1 gate(s) failed**" in markdown
    assert "| exact_match | 1.0 pt worse | +3.0 pt worse | ❌ fail |" in markdown
    assert "![Latency distribution](plots/latency.png)" in markdown


def test_changed_params_lists_added_removed_and_modified_keys():
    base = {"quantize": {"precision": "int4", "block_size": 32}, "seed": 1}
    head = {"quantize": {"precision": "int8"}, "seed": 1, "gates": {"size_mb": {"max_regression_pct": 5}}}
    assert changed_params(base, head) == [
        ("gates.size_mb.max_regression_pct", "(absent)", 5),
        ("quantize.block_size", 32, "(absent)"),
        ("quantize.precision", "int4", "int8"),
    ]


def test_one_registry_feeds_the_headline_the_tables_and_the_gates():
    assert len(BY_KEY) == len(METRICS)  # keys are unique
    assert [r.metric.key for r in compare({}, {})] == list(GATE_KEYS)
    assert set(GATE_KEYS) >= {m.key for m in HEADLINE} - {"parameters"}
    assert {"accuracy_kept", "latency_saved", "memory_saved", "size_saved"} <= set(GATE_KEYS)
    schema = json.loads((ROOT / "slmops/core/params.schema.json").read_text())
    assert set(schema["properties"]["gates"]["propertyNames"]["enum"]) == set(GATE_KEYS)
    assert all(m.column for m in VARIANT_COLUMNS)
    assert all(m.fmt.endswith("%}") for m in METRICS if m.is_rate)


def test_params_text_is_read_as_dvc_reads_it():
    assert read_params_text("distill:\n  train:\n    learning_rate: 5e-3\n", "params.yaml") == {
        "distill": {"train": {"learning_rate": 0.005}}
    }
    assert read_params_text("", "params.yaml") == {}
    with pytest.raises(InputError, match="params.yaml at HEAD: not valid YAML"):
        read_params_text("a: [1,\n", "params.yaml at HEAD")
    with pytest.raises(InputError, match="expected a mapping"):
        read_params_text("- 1\n", "params.yaml at HEAD")


# --- against a git repository with two commits of the pipeline --------------------------------------------


def git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def commit_pipeline_state(repo, params, metrics, message):
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if metrics is not None:
        (repo / "reports/plots/latency").mkdir(parents=True, exist_ok=True)
        (repo / "reports/metrics.json").write_text(json.dumps(metrics))
        (repo / "reports/plots/accuracy_size.json").write_text(
            json.dumps([{"variant": "quantized", "size_mb": metrics["size_mb"], "exact_match": metrics["exact_match"]}])
        )
        (repo / "reports/plots/latency/quantized.json").write_text(
            json.dumps(
                [
                    {"quantile": 0.25, "latency_ms": metrics["latency_p50_ms"]},
                    {"quantile": 0.75, "latency_ms": metrics["latency_p95_ms"]},
                ]
            )
        )
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)


@pytest.fixture()
def history(tmp_path):
    """A DVC project whose first commit has no metrics yet, then two pipeline runs with a params change."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_bytes((ROOT / "dvc.yaml").read_bytes())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["gates"] = {"exact_match": {"max_regression": 0.01}, "size_mb": {"max_regression_pct": 50}}
    git(repo, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    commit_pipeline_state(repo, params, None, "pipeline, never run")
    commit_pipeline_state(repo, params, BASE_METRICS, "first run")
    params["quantize"]["precision"] = "int8"
    commit_pipeline_state(repo, params, HEAD_METRICS, "int8")
    return repo


def report(repo, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "slmops.cli", "report", *args], cwd=repo, capture_output=True, text=True, env=env
    )


def test_report_between_two_commits_fails_on_the_exact_match_gate(history):
    result = report(history, "--base", "HEAD~1", "--head", "HEAD", "--out", "out/report.md")
    assert result.returncode == 1, result.stderr
    assert "gate(s) failed: exact_match" in result.stderr
    markdown = (history / "out/report.md").read_text()
    assert "## Model report: `HEAD` against `HEAD~1`" in markdown
    assert "| exact match | 88.0% | 85.0% | -3.0 pt | -3.4% | ▼ ❌ |" in markdown
    assert "| latency p50 (ms) | 5.00 | 6.00 | +1.00 | +20.0% | ▲ ❌ |" in markdown
    assert '| `quantize.precision` | `"int4"` | `"int8"` |' in markdown
    assert "| size_mb | 50% worse | +25.0% worse | ✅ pass |" in markdown
    assert (history / "out/plots/accuracy_size.png").read_bytes().startswith(b"\x89PNG")
    assert (history / "out/plots/latency.png").is_file()


def test_report_passes_when_the_gates_hold(history):
    params = yaml.safe_load((history / "params.yaml").read_text())
    params["gates"]["exact_match"] = {"max_regression": 0.05}
    (history / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = report(history, "--base", "HEAD~1", "--out", "out/report.md")  # head: the workspace
    assert result.returncode == 0, result.stderr
    assert "**✅ all gates pass**" in (history / "out/report.md").read_text()


def test_first_run_shows_metrics_as_new(history):
    result = report(history, "--base", "HEAD~2", "--head", "HEAD~1", "--out", "out/report.md")
    assert result.returncode == 0, result.stderr
    markdown = (history / "out/report.md").read_text()
    assert "| exact match | — | 88.0% |  |  | new |" in markdown
    assert "| exact_match | 1.0 pt worse | no base value (first run) | new |" in markdown


def test_malformed_gate_is_a_params_error(history):
    params = yaml.safe_load((history / "params.yaml").read_text())
    params["gates"]["exact_match"] = {"max_regression": -1}
    params["gates"]["accuracy"] = {"max_regression": 0.1}
    (history / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = report(history, "--base", "HEAD")
    assert result.returncode == 2
    assert "gates.exact_match.max_regression" in result.stderr and "accuracy" in result.stderr
    assert not (history / "reports/pr/report.md").exists()


def test_unknown_base_revision(history):
    result = report(history, "--base", "no-such-branch")
    assert result.returncode == 2 and "no-such-branch" in result.stderr


def test_unknown_head_revision_is_named_and_nothing_is_written(history):
    result = report(history, "--base", "HEAD~1", "--head", "v9-never-tagged", "--out", "out/report.md")
    assert result.returncode == 2
    assert "unknown git revision 'v9-never-tagged'" in result.stderr
    assert not (history / "out/report.md").exists()


@pytest.mark.parametrize("working_copy", ["deleted", "garbage"])
def test_two_commits_give_the_same_report_whatever_the_working_copy_holds(history, working_copy):
    expected = report(history, "--base", "HEAD~1", "--head", "HEAD", "--out", "out/expected.md")
    assert expected.returncode == 1, expected.stderr
    files = [
        history / "params.yaml",
        history / "reports/metrics.json",
        history / "reports/plots/accuracy_size.json",
        history / "reports/plots/latency/quantized.json",
    ]
    for path in files:
        if working_copy == "deleted":
            path.unlink()
        else:
            path.write_text("{not: [json")
    result = report(history, "--base", "HEAD~1", "--head", "HEAD", "--out", "out/report.md")
    assert result.returncode == 1, result.stderr
    assert "shown as new" not in result.stderr  # nothing reported missing: both commits hold the files
    markdown = (history / "out/report.md").read_text()
    assert markdown == (history / "out/expected.md").read_text()
    assert "| exact match | 88.0% | 85.0% | -3.0 pt | -3.4% | ▼ ❌ |" in markdown
    assert (history / "out/plots/latency.png").is_file()
    if working_copy == "garbage":  # only the workspace reads the working copy, and refuses garbage by name
        result = report(history, "--base", "HEAD~1", "--out", "out/workspace.md")
        assert result.returncode == 2 and "params.yaml at workspace: not valid YAML" in result.stderr


def test_a_float_written_5e_3_at_a_revision_is_a_number(history):
    params = yaml.safe_load((history / "params.yaml").read_text())
    params["distill"]["train"]["learning_rate"] = "LEARNING_RATE"
    text = yaml.safe_dump(params, sort_keys=False).replace("LEARNING_RATE", "5e-3")  # 0.005 at HEAD, spelt 5e-3
    (history / "params.yaml").write_text(text)
    git(history, "commit", "-qam", "learning rate spelt 5e-3")
    (history / "params.yaml").write_text("garbage: [")
    _, at_head, _ = read_revision("HEAD", history)
    assert at_head["distill"]["train"]["learning_rate"] == 0.005
    assert isinstance(at_head["distill"]["train"]["learning_rate"], float)
    result = report(history, "--base", "HEAD~1", "--head", "HEAD", "--out", "out/report.md")
    assert result.returncode == 0, result.stderr  # valid params at HEAD, metrics unchanged: gates pass
    markdown = (history / "out/report.md").read_text()
    assert "learning_rate" not in markdown  # 5e-3 == 0.005: no params change, as `dvc params diff` says
    assert "### Params changed\n\nNone." in markdown


def test_read_revision_gives_empty_metrics_before_the_first_run(history):
    metrics, params, plots = read_revision("HEAD~2", history)
    assert metrics == {} and plots == {"accuracy_size": None, "latency": {}}
    assert params["quantize"]["precision"] == "int4"
    metrics, _, plots = read_revision("HEAD", history)
    assert metrics == HEAD_METRICS and set(plots["latency"]) == {"quantized"}
    with pytest.raises(InputError, match="unknown git revision 'nope'"):
        read_revision("nope", history)
