"""Same-run speed: bad input to `slmops bench compare` and `slmops report --speed`. The path itself (the base
revision's package from DVC, timed beside the head's) runs end to end in test_pipeline_e2e."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT


def slmops(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "slmops.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env
    )


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


def test_report_refuses_per_round_figures_that_are_not_numbers(tmp_path):
    figures = {"dir": "d", "latency_p95_ms": 3.0, "latencies_ms": [1.0, 2.0]}
    head = {**figures, "per_round": [{"latency_p95_ms": 3.0}, {"latency_p95_ms": "slow"}]}
    speed = {"rounds": 2, "requests": 2, "order": ["base", "head"], "hardware": {}, "base": figures, "head": head}
    (tmp_path / "speed.json").write_text(json.dumps(speed))
    result = slmops("report", "--base", "HEAD", "--speed", tmp_path / "speed.json", "--out", tmp_path / "r.md")
    assert result.returncode == 2 and "speed.json: head.per_round[2]: expected figure: number" in result.stderr
