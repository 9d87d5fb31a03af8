"""slmops report: metrics and params at two git revisions read from git alone, relative changes, gates, first run."""

import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, committed_answers, flipped

from slmops.core.errors import InputError
from slmops.core.metrics import BY_KEY, GATE_KEYS, HEADLINE, METRICS, VARIANT_COLUMNS
from slmops.report.compare import (
    MARKER,
    Comparison,
    changed_params,
    check_gates,
    compare,
    read_params_text,
    read_revision,
    render,
)

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


def side_by_side(base: dict, head: dict) -> dict:
    """A `slmops bench compare` result whose speed figures are those of two metrics dicts."""
    keys = ("latency_p50_ms", "latency_p90_ms", "latency_p95_ms", "ttft_p50_ms", "decode_tokens_per_s", "peak_rss_mb")
    side = {
        name: {k: m.get(k) for k in keys} | {"latencies_ms": [1.0, 2.0]} for name, m in (("base", base), ("head", head))
    }
    return {"rounds": 2, "requests": 2, "order": ["base", "head", "head", "base"], "hardware": {}, **side}


def test_gates_absolute_relative_new_and_missing():
    rows = compare(BASE_METRICS, HEAD_METRICS, speed=side_by_side(BASE_METRICS, HEAD_METRICS))
    gates = {
        "exact_match": {"max_regression": 0.01},
        "size_mb": {"max_regression_pct": 30},
        "decode_tokens_per_s": {"max_regression_pct": 10},
        "latency_p95_ms": {"max_regression": 0},
    }
    results = {g.metric: g for g in check_gates(rows, gates)}
    assert results["exact_match"].status == "fail" and results["exact_match"].detail == "3.0 pt worse"
    assert results["exact_match"].limit == "1.0 pt worse"
    assert results["size_mb"].status == "pass" and results["size_mb"].detail == "25.0% worse"
    assert results["decode_tokens_per_s"].status == "fail" and results["decode_tokens_per_s"].detail == "20.0% worse"
    assert results["latency_p95_ms"].status == "pass" and results["latency_p95_ms"].detail == "unchanged"
    first_run = check_gates(compare({}, HEAD_METRICS), gates)
    assert {g.status for g in first_run} == {"new"}
    missing = check_gates(compare(BASE_METRICS, {}), {"exact_match": {"max_regression": 0.01}})
    assert missing[0].status == "fail" and missing[0].detail == "missing in head"
    better = check_gates(compare(HEAD_METRICS, BASE_METRICS), {"exact_match": {"max_regression": 0.01}})
    assert better[0].status == "pass" and better[0].detail == "3.0 pt better"  # not "-3.0 pt worse"


def test_speed_from_two_runs_is_context_never_a_gate():
    """Committed speed figures of two runs (two machines, perhaps) are shown as context and gate nothing."""
    slower = {**HEAD_METRICS, "decode_tokens_per_s": 1000.0, "latency_p95_ms": 90.0}
    rows = {r.metric.key: r for r in compare(BASE_METRICS, slower)}
    assert rows["latency_p95_ms"].context_only and not rows["exact_match"].context_only
    gates = check_gates(list(rows.values()), {"latency_p95_ms": {"max_regression_pct": 50}})
    assert gates[0].status == "context" and "not timed side by side" in gates[0].detail
    comment = render(Comparison("main", "workspace", list(rows.values()), [], gates))
    assert "| latency p95 (ms) | 9.00 | 90.00 | +81.00 | +900.0% | context only |" in comment
    assert "### Speed: context only" in comment and "| latency_p95_ms | 50% worse |" in comment
    assert comment.splitlines()[1].startswith("**no gate checked**")


def test_markdown_has_the_marker_verdict_table_params_and_gates():
    speed = side_by_side(BASE_METRICS, HEAD_METRICS)
    rows = compare(BASE_METRICS, HEAD_METRICS, speed=speed)
    gates = check_gates(rows, {"exact_match": {"max_regression": 0.01}})
    params = [("quantize.precision", "int4", "int8")]
    markdown = render(Comparison("main", "workspace", rows, params, gates, speed=speed))
    assert markdown.startswith(MARKER + "\n**❌ 1 of 1 gates fail: exact_match**")  # the verdict first
    assert "| exact match | 88.0% | 85.0% | -3.0 pt | -3.4% | ▼ ❌ |" in markdown
    assert "| size on disk (MB) | 0.160 | 0.200 | +0.040 | +25.0% | ▲ ❌ |" in markdown
    assert "| decode tokens/s | 10,000 | 8,000 | -2,000 | -20.0% | ▼ ❌ |" in markdown
    assert "| latency p95 (ms) | 9.00 | 9.00 | +0.00 | +0.0% | = |" in markdown
    assert '| `quantize.precision` | `"int4"` | `"int8"` |' in markdown
    assert "| exact_match | 1.0 pt worse | 3.0 pt worse | ❌ fail |" in markdown
    assert "| decode tokens/s | 10,000 | 8,000 | ×0.80 |" in markdown  # the side-by-side ratio
    assert "worse |" in markdown and "-3.0 pt worse" not in markdown and "+3.0 pt worse" not in markdown
    assert "](" not in markdown  # no image or link with a relative path


def test_side_by_side_speed_whose_rounds_disagree_is_within_noise():
    """Three rounds of the side-by-side timing: decode tokens/s head ÷ base ×0.9, ×1.1, ×0.95 (the rounds disagree
    on the direction: noise); latency p95 ×1.2, ×1.3, ×1.25 (every round slower: a change)."""
    speed = side_by_side(BASE_METRICS, HEAD_METRICS)
    for side, decode, p95 in (("base", [100, 100, 100], [10, 10, 10]), ("head", [90, 110, 95], [12, 13, 12.5])):
        speed[side]["per_round"] = [
            {"decode_tokens_per_s": d, "latency_p95_ms": p} for d, p in zip(decode, p95, strict=True)
        ]
    rows = {row.metric.key: row for row in compare(BASE_METRICS, HEAD_METRICS, speed=speed)}
    assert rows["decode_tokens_per_s"].rounds_disagree and not rows["latency_p95_ms"].rounds_disagree
    markdown = render(Comparison("main", "workspace", list(rows.values()), [], [], speed=speed))
    assert "| decode tokens/s | 10,000 | 8,000 | -2,000 | -20.0% | ≈ within noise |" in markdown
    assert "| decode tokens/s | 10,000 | 8,000 | ×0.80 | ×0.90 ×1.10 ×0.95 | ≈ within noise |" in markdown
    assert "| latency p95 (ms) | 9.00 | 9.00 | ×1.00 | ×1.20 ×1.30 ×1.25 |  |" in markdown
    assert "for speed timed side by side, ≈ within noise: its rounds disagree on the direction" in markdown
    # A result without per-round figures (written before they were kept) gets no mark from them.
    del speed["head"]["per_round"]
    rows = compare(BASE_METRICS, HEAD_METRICS, speed=speed)
    assert not any(row.rounds_disagree for row in rows)


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
    assert "| latency p50 (ms) | 5.00 | 6.00 | +1.00 | +20.0% | context only |" in markdown
    assert '| `quantize.precision` | `"int4"` | `"int8"` |' in markdown
    assert "| size_mb | 50% worse | 25.0% worse | ✅ pass |" in markdown
    assert "### Accuracy, record by record" not in markdown  # no answers committed: nothing to pair
    assert (history / "out/plots/accuracy_size.png").read_bytes().startswith(b"\x89PNG")
    assert (history / "out/plots/latency.png").is_file()


def test_report_passes_when_the_gates_hold(history):
    params = yaml.safe_load((history / "params.yaml").read_text())
    params["gates"]["exact_match"] = {"max_regression": 0.05}
    (history / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = report(history, "--base", "HEAD~1", "--out", "out/report.md")  # head: the workspace
    assert result.returncode == 0, result.stderr
    assert "**✅ all 2 gates pass**" in (history / "out/report.md").read_text()


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


# --- answers paired record by record: the same commit on another machine, and a real regression ---------------

AMD = {"cpu": "AMD EPYC 7763 64-Core Processor", "cores": 2, "gpu": None}
INTEL = {"cpu": "Intel(R) Xeon(R) Platinum 8370C CPU @ 2.80GHz", "cores": 2, "gpu": None}


def commit_run(repo, answers: dict[str, list[dict]], hardware: dict, speedup: float, message: str, task):
    """A pipeline run's committed outputs: its answers, metrics.json with the accuracy they score (and the committed
    run's other figures, speed scaled by `speedup`), plot data; committed on top of the params in place."""
    from slmops.core.files import write_jsonl
    from slmops.core.task import score
    from slmops.report.paired import parsed_answer

    metrics = json.loads((ROOT / "tests/data/answers/metrics.json").read_text())

    def scored(records):
        return score(task, [parsed_answer(task, r) for r in records], [r["label"] for r in records])

    figures, teacher = scored(answers["quantized"]), scored(answers["teacher"])
    metrics.update({k: figures[k] for k in ("exact_match", "schema_valid", "json_valid")})
    metrics["accuracy_kept"] = figures["exact_match"] / teacher["exact_match"]
    for key in ("latency_p50_ms", "latency_p95_ms", "ttft_p50_ms"):
        metrics[key] /= speedup
    metrics["decode_tokens_per_s"] *= speedup
    metrics["hardware"] = hardware
    (repo / "reports/predictions").mkdir(parents=True, exist_ok=True)
    for variant, rows in answers.items():
        write_jsonl(repo / f"reports/predictions/{variant}.jsonl", rows)
    (repo / "reports/metrics.json").write_text(json.dumps(metrics))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)


@pytest.fixture()
def runs(tmp_path, task):
    """A project with the default params and task: the committed run on an AMD machine, then (HEAD~1 → HEAD) the
    same commit reproduced on an Intel machine, whose answers differ by noise (12 of 300 records flipped, 7 one
    way and 5 the other) and whose speed figures differ by 50%."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        (repo / name).write_bytes((ROOT / name).read_bytes())
    (repo / "data").mkdir()
    subprocess.run(["cp", "-r", str(ROOT / "data/task"), str(repo / "data/task")], check=True)
    git(repo, "init", "-q")
    answers = {"quantized": committed_answers(), "teacher": committed_answers("teacher")}
    commit_run(repo, answers, AMD, 1.0, "the committed run", task)
    noisy = {**answers, "quantized": flipped(answers["quantized"], 7, 5, task)}
    commit_run(repo, noisy, INTEL, 1.5, "the same commit, reproduced on another machine", task)
    return repo


def test_a_no_op_pull_request_on_another_machine_passes_every_gate_within_noise(runs):
    result = report(runs, "--base", "HEAD~1", "--head", "HEAD", "--out", "out/report.md")
    assert result.returncode == 0, result.stderr
    markdown = (runs / "out/report.md").read_text()
    assert markdown.splitlines()[1] == (
        "**✅ all 3 gates pass** · no accuracy change beyond noise · speed: context only (base not timed here)"
    )
    assert "| exact match | 92.3% | 91.7% | -0.7 pt | -0.7% | ≈ within noise |" in markdown
    assert "| accuracy kept vs teacher | 103.7% | 103.0% | -0.7 pt | -0.7% | ≈ within noise |" in markdown
    assert "| decode tokens/s |" in markdown and "+50.0% | context only |" in markdown
    assert "| exact_match | 1.0 pt worse | 0.7 pt worse (interval" in markdown and "| ✅ pass |" in markdown
    assert "| latency_p95_ms | 50% worse | not gated: base and head were not timed side by side" in markdown
    assert "| exact match | 92.3% | 91.7% | -0.7 pt | -3.0 pt to +1.7 pt | 7 | 5 | 0.774 | ≈ within noise |" in (
        markdown
    )
    assert "McNemar's exact test on the records that flipped" in markdown
    assert "Base and head metrics come from different hardware: base AMD EPYC 7763" in markdown
    assert "| ▼ ❌ |" not in markdown and "❌ fail" not in markdown and "](" not in markdown


def test_a_real_regression_fails_its_gate_with_the_interval_shown(runs, task):
    answers = {"quantized": flipped(committed_answers(), 20, 2, task), "teacher": committed_answers("teacher")}
    commit_run(runs, answers, INTEL, 1.0, "a worse model", task)
    result = report(runs, "--base", "HEAD~2", "--head", "HEAD", "--out", "out/report.md")
    assert result.returncode == 1 and "gate(s) failed: exact_match" in result.stderr
    markdown = (runs / "out/report.md").read_text()
    assert markdown.splitlines()[1].startswith(
        "**❌ 1 of 3 gates fail: exact_match** · accuracy beyond noise: exact match -6.0 pt"
    )
    gate = next(line for line in markdown.splitlines() if line.startswith("| exact_match |"))
    assert gate.startswith("| exact_match | 1.0 pt worse | 6.0 pt worse (interval -9.0 pt to -3.3 pt")
    assert gate.endswith("one-sided p < 0.001, significant at 0.05) | ❌ fail |")
    assert "| exact match | 92.3% | 86.3% | -6.0 pt | -6.5% | ▼ ❌ |" in markdown


def test_a_deliberately_worse_params_change_fails_its_gate_with_the_interval_shown(runs, task):
    """Real answers of a worse model: `dvc exp run -S distill.train.epochs=3` (12 in the default) on the default,
    its shipped model's answer to each eval record kept in tests/data/worse_distill3_answers.json."""
    answers = json.loads((ROOT / "tests/data/worse_distill3_answers.json").read_text())
    worse = [{**record, "answer": answers[record["id"]]} for record in committed_answers()]
    commit_run(runs, {"quantized": worse, "teacher": committed_answers("teacher")}, INTEL, 1.0, "3 epochs", task)
    result = report(runs, "--base", "HEAD~2", "--head", "HEAD", "--out", "out/report.md")
    assert result.returncode == 1 and "gate(s) failed: exact_match" in result.stderr
    markdown = (runs / "out/report.md").read_text()
    assert markdown.splitlines()[1].startswith(
        "**❌ 1 of 3 gates fail: exact_match** · accuracy beyond noise: exact match -79.7 pt"
    )
    assert (
        "| exact_match | 1.0 pt worse | 79.7 pt worse (interval -84.3 pt to -75.0 pt; one-sided p < 0.001, "
        "significant at 0.05) | ❌ fail |"
    ) in markdown
    assert "| exact match | 92.3% | 12.7% | -79.7 pt | -84.3 pt to -75.0 pt | 240 | 1 | < 0.001 | ▼ ❌ |" in markdown


def test_a_larger_significance_level_is_stricter(runs):
    """At 0.5, a 0.7-point loss with one-sided p = 0.39 counts as significant; with 0.5 point allowed, it fails."""
    params = yaml.safe_load((runs / "params.yaml").read_text())
    params["gates"]["exact_match"] = {"max_regression": 0.005, "significance": 0.5}
    (runs / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(runs, "commit", "-qam", "a tight gate")
    result = report(runs, "--base", "HEAD~2", "--head", "HEAD", "--out", "out/report.md")
    assert result.returncode == 1, result.stderr
    gate = next(line for line in (runs / "out/report.md").read_text().splitlines() if line.startswith("| exact_match"))
    assert "0.7 pt worse" in gate and "significant at 0.5" in gate and "❌ fail" in gate


# --- training noise: runs of the same params with other seeds or machines (`slmops noise`) -------------------


def slmops(repo, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "slmops.cli", *args], cwd=repo, capture_output=True, text=True, env=env
    )


def commit_seed(repo, seed: int, answers: dict, task, hardware=INTEL):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["seed"] = seed
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    commit_run(repo, answers, hardware, 1.0, f"seed {seed}", task)


@pytest.fixture()
def seeds(runs, task):
    """`runs` (AMD run, then the same commit on Intel), then the default params with seeds 1 and 2 on Intel: four
    runs of one recipe, exact match 92.3%, 91.7%, 89.3% and 94.3%."""
    base = committed_answers()
    teacher = committed_answers("teacher")
    commit_seed(runs, 1, {"quantized": flipped(base, 12, 3, task), "teacher": teacher}, task)
    commit_seed(runs, 2, {"quantized": flipped(base, 4, 10, task), "teacher": teacher}, task)
    return runs


def test_noise_is_measured_between_runs_of_the_same_params(seeds):
    result = slmops(seeds, "noise", "HEAD~3", "HEAD~2", "HEAD~1", "HEAD")
    assert result.returncode == 0, result.stderr
    document = json.loads((seeds / "reports/noise.json").read_text())
    assert [run["seed"] for run in document["runs"]] == [42, 42, 1, 2]
    assert [run["hardware"]["cpu"][:3] for run in document["runs"]] == ["AMD", "Int", "Int", "Int"]
    em = [277, 275, 268, 283]  # right answers of 300 per run
    pairs = [(a - b) / 300 for i, a in enumerate(em) for b in em[i + 1 :]]
    expected = sum(d * d for d in pairs) / len(pairs)
    assert document["mean_square_difference"]["exact_match"] == pytest.approx(expected)
    assert "accuracy_kept" in document["mean_square_difference"]
    assert "| `HEAD~1` | 1 | Intel(R) Xeon(R) Platinum 8370C CPU @ 2.80GHz | 89.0% | 89.3% | 100.4% |" in result.stdout
    assert f"RMS difference between two runs: exact match {expected**0.5 * 100:.1f} pt" in result.stdout


def test_noise_warns_when_a_run_failed_to_learn_rather_than_varied(seeds, task):
    result = slmops(seeds, "noise", "HEAD~3", "HEAD~2")
    assert result.returncode == 0 and "warning" not in result.stderr  # 92.3% and 91.7%: within UNSTABLE
    collapsed = {"quantized": flipped(committed_answers(), 150, 0, task), "teacher": committed_answers("teacher")}
    commit_seed(seeds, 3, collapsed, task)
    result = slmops(seeds, "noise", "HEAD~1", "HEAD")
    assert result.returncode == 0 and (seeds / "reports/noise.json").is_file()
    assert "slmops noise: warning: runs of the same params differ by 52.0 pt of exact match (RMS; HEAD~1 94.3% " in (
        result.stderr
    )
    assert "HEAD 42.3%): a run that failed to learn the task is a failure of the recipe, not noise" in result.stderr


@pytest.mark.parametrize(
    "revs, message",
    [
        (["HEAD"], "give at least two different runs"),
        (["HEAD", "HEAD"], "give at least two different runs"),
        (["HEAD", "nope"], "unknown git revision 'nope'"),
        (["HEAD~1", "HEAD", "--params", "nope.yaml"], "nope.yaml: not found"),
    ],
)
def test_noise_refuses_too_few_runs_and_unknown_revisions(seeds, revs, message):
    result = slmops(seeds, "noise", *revs)
    assert result.returncode == 2 and message in result.stderr
    assert not (seeds / "reports/noise.json").exists()


def test_noise_refuses_runs_of_other_params_or_other_eval_records(seeds, task):
    params = yaml.safe_load((seeds / "params.yaml").read_text())
    params["distill"]["train"]["epochs"] = 3
    (seeds / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    commit_run(seeds, {"quantized": committed_answers(), "teacher": committed_answers("teacher")}, INTEL, 1, "3", task)
    result = slmops(seeds, "noise", "HEAD~1", "HEAD")
    assert result.returncode == 2
    assert "HEAD and HEAD~1 differ in params distill.train.epochs" in result.stderr
    assert "(seed and gates aside)" in result.stderr
    fewer = {"quantized": committed_answers()[:250], "teacher": committed_answers("teacher")[:250]}
    commit_run(seeds, fewer, INTEL, 1.0, "fewer", task)
    result = slmops(seeds, "noise", "HEAD~1", "HEAD")
    assert result.returncode == 2 and "HEAD and HEAD~1 were scored on different eval records" in result.stderr
    (seeds / "reports/predictions/quantized.jsonl").unlink()
    result = slmops(seeds, "noise", "HEAD", "workspace")
    assert result.returncode == 2 and "has no answers of the shipped model" in result.stderr


def test_with_measured_training_noise_the_same_commit_on_another_cpu_passes(seeds, task):
    """The real figures of the same commit on an AMD and an Intel CPU: 21 records right → wrong and 8 wrong → right
    (4.3 points). McNemar's test alone fails the exact-match gate on them; with the spread between seeds, measured
    by `slmops noise` and committed at the base, the gate passes and the change is marked as noise."""
    assert slmops(seeds, "noise", "HEAD~3", "HEAD~2", "HEAD~1", "HEAD").returncode == 0
    committed = {"quantized": committed_answers(), "teacher": committed_answers("teacher")}
    commit_seed(seeds, 42, committed, task, AMD)  # the base: the committed run, with its training noise
    another_cpu = {**committed, "quantized": flipped(committed["quantized"], 21, 8, task)}
    commit_seed(seeds, 42, another_cpu, task, INTEL)
    result = report(seeds, "--base", "HEAD~1", "--head", "HEAD", "--out", "out/report.md")
    assert result.returncode == 0, result.stderr
    markdown = (seeds / "out/report.md").read_text()
    assert markdown.splitlines()[1].startswith("**✅ all 3 gates pass** · no accuracy change beyond noise")
    gate = next(line for line in markdown.splitlines() if line.startswith("| exact_match |"))
    assert "4.3 pt worse" in gate and "training noise included, within noise at 0.05) | ✅ pass |" in gate
    assert "| exact match | 92.3% | 88.0% | -4.3 pt | -4.7% | ≈ within noise |" in markdown
    assert "z-test of the paired change, training noise added to the eval-sampling variance" in markdown
    assert "Training noise from reports/noise.json at HEAD~1 (4 runs of the same params" in markdown
    # Without the noise file the same answers fail: McNemar's test alone sees the retraining as a regression.
    git(seeds, "rm", "-q", "reports/noise.json")
    commit_seed(seeds, 42, committed, task, AMD)
    commit_seed(seeds, 42, another_cpu, task, INTEL)
    result = report(seeds, "--base", "HEAD~1", "--head", "HEAD", "--out", "out/report.md")
    assert result.returncode == 1 and "gate(s) failed: exact_match" in result.stderr
    markdown = (seeds / "out/report.md").read_text()
    assert "McNemar's exact test on the records that flipped" in markdown
    assert "its noise was not measured (`slmops noise`)" in markdown


def test_a_malformed_noise_file_is_named(seeds):
    (seeds / "reports/noise.json").write_text(json.dumps({"runs": [], "mean_square_difference": {"exact_match": -1}}))
    git(seeds, "add", "-A")
    git(seeds, "commit", "-qm", "bad noise file")
    result = report(seeds, "--base", "HEAD", "--head", "workspace", "--out", "out/report.md")
    assert result.returncode == 2
    assert "reports/noise.json at HEAD: expected `runs` (two or more) and `mean_square_difference`" in result.stderr


# --- charts and experiments ---------------------------------------------------------------------------------


def mermaid_blocks(markdown: str) -> list[list[str]]:
    blocks, current = [], None
    for line in markdown.splitlines():
        if line == "```mermaid":
            current = []
        elif line == "```" and current is not None:
            blocks.append(current)
            current = None
        elif current is not None:
            current.append(line.strip())
    assert current is None, "an unclosed Mermaid block"
    return blocks


def test_the_comment_draws_mermaid_charts_and_links_no_image(history):
    result = report(history, "--base", "HEAD~1", "--head", "HEAD", "--out", "out/report.md")
    assert result.returncode == 1, result.stderr
    markdown = (history / "out/report.md").read_text()
    assert "![" not in markdown and "](" not in markdown and ".png" not in markdown
    blocks = mermaid_blocks(markdown)
    assert [b[1] for b in blocks] == [
        'title "Exact match by variant (bars: head, line: base)"',
        'title "Size on disk by variant (bars: head, line: base)"',
        'title "Request latency of the quantized model, two runs, context only (ms; first line: base, second: head)"',
    ]
    for block in blocks:  # the grammar of xychart-beta: a title, an x-axis of labels, a y-axis, one value per label
        assert block[0] == "xychart-beta" and block[1].count('"') == 2
        assert re.fullmatch(r'x-axis \["[^"]+"(, "[^"]+")*\]', block[2]) and block[3].startswith('y-axis "')
        labels = block[2].count('"') // 2
        series = block[4:]
        assert series and all(re.fullmatch(r"(bar|line) \[-?[\d.e+-]+(, -?[\d.e+-]+)*\]", s) for s in series)
        assert all(len(s.split(",")) == labels for s in series)
    assert blocks[0][2] == 'x-axis ["quantized"]' and blocks[0][4:] == ["bar [85]", "line [88]"]
    assert blocks[2][4:] == ["line [5.4, 6, 7, 8, 8.6, 8.8]", "line [6.3, 6.75, 7.5, 8.25, 8.7, 8.85]"]
    assert (history / "out/plots/accuracy_size.png").read_bytes().startswith(b"\x89PNG")  # PNGs: artifacts only


MERMAID = ROOT / "tools/mermaid"


def mermaid_parse(markdown_file):
    return subprocess.run(["node", MERMAID / "parse.mjs", markdown_file], capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not (MERMAID / "node_modules/mermaid").is_dir(), reason="make mermaid (npm) not run")
def test_mermaid_itself_parses_the_comments_charts_and_refuses_a_broken_one(history, tmp_path):
    result = report(history, "--base", "HEAD~1", "--head", "HEAD", "--out", "out/report.md")
    assert result.returncode == 1, result.stderr
    parsed = mermaid_parse(history / "out/report.md")
    assert parsed.returncode == 0, parsed.stderr
    assert parsed.stdout.splitlines() == [
        "block 1: xychart",
        "block 2: xychart",
        "block 3: xychart",
        "3 Mermaid blocks parse",
    ]
    broken = tmp_path / "broken.md"
    broken.write_text((history / "out/report.md").read_text().replace("bar [85]", "bar [85"))
    parsed = mermaid_parse(broken)
    assert parsed.returncode == 1 and "block 1: Parse error" in parsed.stderr


def test_experiments_are_compared_by_name_and_ranked(history):
    """Two DVC experiments on top of the base commit (refs as `dvc exp run` writes them), ranked in one table."""
    git(history, "tag", "int8-run")
    params = yaml.safe_load((history / "params.yaml").read_text())
    params["finetune"]["lora"]["r"], params["quantize"]["precision"] = 16, "int4"
    commit_pipeline_state(history, params, {**BASE_METRICS, "exact_match": 0.9}, "r16")
    baseline = subprocess.run(
        ["git", "rev-parse", "HEAD~2"], cwd=history, capture_output=True, text=True, check=True
    ).stdout.strip()
    for name, rev in (("worse-int8", "int8-run"), ("better-r16", "HEAD")):
        git(history, "update-ref", f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}", rev)
    git(history, "reset", "-q", "--hard", "HEAD~2")  # back on the baseline, as after `dvc exp run --queue`

    single = report(history, "--base", "HEAD", "--head", "better-r16", "--out", "out/one.md")
    assert single.returncode == 0, single.stderr
    assert "| exact match | 88.0% | 90.0% | +2.0 pt | +2.3% | ▲ ✅ |" in (history / "out/one.md").read_text()

    ranked = report(history, "--base", "HEAD", "--experiments", "--out", "out/ranked.md")
    assert ranked.returncode == 1 and "gate(s) failed: exact_match (worse-int8)" in ranked.stderr
    markdown = (history / "out/ranked.md").read_text()
    assert markdown.startswith(MARKER + "\n**2 experiments against `HEAD`: 1 pass every gate; best: `better-r16`**")
    rows = [line for line in markdown.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert rows[0].startswith("| 1 | `better-r16` | `finetune.lora.r`=16 | 90.0% | +2.0 pt |")
    assert rows[1].startswith('| 2 | `worse-int8` | `quantize.precision`="int8" | 85.0% | -3.0 pt |')
    assert rows[0].endswith("| ✅ |") and rows[1].endswith("| ❌ exact_match |")
    assert markdown.count("<details>") == 2


def test_no_experiments_is_a_clear_error(history):
    result = report(history, "--base", "HEAD", "--experiments")
    assert result.returncode == 2 and "no DVC experiments on top of 'HEAD'" in result.stderr


@pytest.mark.parametrize(
    ("gate", "message"),
    [
        ({"max_regression_pct": 10, "significance": 0.05}, "gates.size_mb.significance: only a per-record share"),
        ({"max_regression_pct": 10, "significance": 1.0}, "gates.size_mb.significance: Input should be less than 1"),
    ],
)
def test_a_significance_level_only_on_a_per_record_share_and_below_one(history, gate, message):
    params = yaml.safe_load((history / "params.yaml").read_text())
    params["gates"]["size_mb"] = gate
    (history / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = report(history, "--base", "HEAD")
    assert result.returncode == 2 and message in result.stderr
