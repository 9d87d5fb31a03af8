"""Same-run speed: base and head packages timed alternately in one process tree, ratios in the comment."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

PACKAGE = ROOT / "models/foundry/support-triage-slm"
needs_package = pytest.mark.skipif(
    not (PACKAGE / "genai_config.json").is_file(), reason="the default package is not built (dvc checkout)"
)


def slmops(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "slmops.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env
    )


@needs_package
def test_bench_compare_times_both_packages_alternately_and_the_report_gates_on_the_ratios(tmp_path):
    base = tmp_path / "base-package"
    shutil.copytree(PACKAGE, base)  # the base revision's package, as `dvc get --rev` would fetch it
    out = tmp_path / "speed.json"
    result = slmops("bench", "compare", base, PACKAGE, "--rounds", "2", "--requests", "4", "--out", out)
    assert result.returncode == 0, result.stderr
    speed = json.loads(out.read_text())
    assert speed["order"] == ["base", "head", "head", "base"] and speed["rounds"] == 2 and speed["requests"] == 4
    for side in ("base", "head"):
        figures = speed[side]
        assert len(figures["latencies_ms"]) == 8  # 4 timed requests x 2 rounds, every one kept
        assert 0 < figures["latency_p50_ms"] <= figures["latency_p95_ms"]
        assert figures["decode_tokens_per_s"] > 0 and figures["peak_rss_mb"] > 0
    assert speed["hardware"]["cores"] == os.cpu_count() and speed["hardware"]["runtimes"]["onnxruntime-genai"]
    assert "latency_p95_ms: base" in result.stdout and "head/base" in result.stdout

    report = slmops("report", "--base", "HEAD", "--speed", out, "--out", tmp_path / "pr/report.md")
    assert report.returncode in (0, 1), report.stderr  # the same package: its speed gate may only fail by noise
    markdown = (tmp_path / "pr/report.md").read_text()
    assert "### Speed, timed side by side" in markdown and "order base → head → head → base" in markdown
    b, h = speed["base"]["latency_p95_ms"], speed["head"]["latency_p95_ms"]
    assert f"| latency p95 (ms) | {b:.2f} | {h:.2f} | ×{h / b:.2f} |" in markdown
    gate = next(line for line in markdown.splitlines() if line.startswith("| latency_p95_ms |"))
    assert "not gated" not in gate and f"| ×{h / b:.2f} |" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| latency p95 (ms) |"))
    assert not row.endswith("context only |")  # timed side by side: compared, gated
    assert next(line for line in markdown.splitlines() if line.startswith("| latency saved")).endswith("context only |")
    assert "speed timed side by side in this run" in markdown.splitlines()[1]
    assert "timed side by side (ms; first line: base, second: head)" in markdown  # the latency chart uses this run


def test_bench_compare_refuses_a_folder_that_is_not_a_package(tmp_path):
    result = slmops("bench", "compare", tmp_path, tmp_path, "--out", tmp_path / "speed.json")
    assert result.returncode == 2 and f"{tmp_path}: not a packaged model (no genai_config.json)" in result.stderr
    assert not (tmp_path / "speed.json").exists()


def test_report_refuses_a_missing_speed_file(tmp_path):
    result = slmops("report", "--base", "HEAD", "--speed", tmp_path / "nope.json", "--out", tmp_path / "r.md")
    assert result.returncode == 2 and "nope.json: side-by-side timing not found" in result.stderr


def test_report_refuses_a_speed_file_that_is_not_a_bench_compare_result(tmp_path):
    (tmp_path / "speed.json").write_text('{"base": {"latencies_ms": [1.0]}}')
    result = slmops("report", "--base", "HEAD", "--speed", tmp_path / "speed.json", "--out", tmp_path / "r.md")
    assert result.returncode == 2
    assert "speed.json: not a `slmops bench compare` result (missing head, rounds, requests, order, hardware" in (
        result.stderr
    )
    assert not (tmp_path / "r.md").exists()


@pytest.mark.parametrize(
    ("side", "key", "value"),
    [("base", "latency_p95_ms", "fast"), ("head", "latencies_ms", []), ("head", "latencies_ms", [1.0, "x"])],
)
def test_report_refuses_a_speed_file_with_a_figure_that_is_not_a_number(tmp_path, side, key, value):
    figures = {"dir": "d", "latency_p95_ms": 3.0, "latencies_ms": [1.0, 2.0]}
    speed = {"rounds": 1, "requests": 2, "order": ["base", "head"], "hardware": {}, "base": figures, "head": figures}
    speed = {**speed, side: {**figures, key: value}}
    (tmp_path / "speed.json").write_text(json.dumps(speed))
    result = slmops("report", "--base", "HEAD", "--speed", tmp_path / "speed.json", "--out", tmp_path / "r.md")
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"speed.json: {side}.{key}: {value!r} is not a number" in result.stderr
