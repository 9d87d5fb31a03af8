"""Base against head speed, timed side by side: one machine, one run, alternating, so the ratios mean something.

    slmops bench compare BASE_DIR HEAD_DIR [--rounds 3] [--out reports/pr/speed.json]

Each round times both packages, each in a fresh child process (slmops.eval.benchmark.measure, the evaluate stage's
own measurement), in alternating order (base, head; then head, base; ...) so that a machine slowing down or
warming up over the run weighs on both alike. Speed figures from two runs on different machines are not
comparable; these are.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from slmops.core.errors import InputError
from slmops.eval.benchmark import hardware, latency_percentiles, measure

SIDES = ("base", "head")
# Per-round figures combined over rounds by the median; latency percentiles come from every request of every round.
MEDIAN_OVER_ROUNDS = ("ttft_p50_ms", "decode_tokens_per_s", "peak_rss_mb")


def check_package(folder: str | Path) -> Path:
    """The folder, if onnxruntime-genai can load it (genai_config.json); InputError naming it otherwise."""
    folder = Path(folder)
    if not (folder / "genai_config.json").is_file():
        raise InputError(f"{folder}: not a packaged model (no genai_config.json); give models/foundry/<name>")
    return folder


def time_side_by_side(
    base_dir: str | Path,
    head_dir: str | Path,
    chats: list[list[dict]],
    warmup: int,
    max_new_tokens: int,
    rounds: int = 3,
    execution_provider: str = "cpu",
) -> dict:
    """Both packages timed alternately, `rounds` times each, on the same chats (warm-up requests first, untimed).

    Returns {"rounds", "requests" (timed per round), "order" (the sides in the order timed), "hardware"
    (slmops.eval.benchmark.hardware), "base" and "head": {"dir", latency_p50/p90/p95_ms (over every timed
    request of every round, ms), ttft_p50_ms (ms), decode_tokens_per_s, peak_rss_mb (MB): medians over rounds,
    "latencies_ms": every timed request's latency, "per_round": each round's own figures}}. Raises InputError
    for a folder that is not a package, RuntimeError when a measurement fails."""
    folders = {"base": check_package(base_dir), "head": check_package(head_dir)}
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    order = []
    for round_number in range(rounds):
        for side in SIDES if round_number % 2 == 0 else reversed(SIDES):
            figures = measure("onnx", str(folders[side]), chats, warmup, max_new_tokens, execution_provider)
            runs[side].append(figures)
            order.append(side)
    result = {"rounds": rounds, "requests": len(chats) - warmup, "order": order, "hardware": hardware()}
    for side in SIDES:
        latencies = [ms for run in runs[side] for ms in run["latencies_ms"]]
        result[side] = {
            "dir": str(folders[side]),
            **latency_percentiles(latencies),
            **{key: statistics.median(run[key] for run in runs[side]) for key in MEDIAN_OVER_ROUNDS},
            "latencies_ms": latencies,
            "per_round": [_round_figures(run) for run in runs[side]],
        }
    return result


def _round_figures(run: dict) -> dict:
    """One round's figures: its own latency percentiles and the medianed figures, for the round-to-round spread."""
    return {**latency_percentiles(run["latencies_ms"]), **{key: run[key] for key in MEDIAN_OVER_ROUNDS}}


def round_ratios(speed: dict, key: str) -> list[float]:
    """head ÷ base of figure `key` round by round (the i-th timing of each side); [] when per-round figures are
    absent (a result written before they were kept) or a base figure is 0."""
    base, head = speed["base"].get("per_round") or [], speed["head"].get("per_round") or []
    if len(base) != len(head):
        return []
    pairs = [(b.get(key), h.get(key)) for b, h in zip(base, head, strict=True)]
    if not pairs or any(b is None or h is None or b == 0 for b, h in pairs):
        return []
    return [h / b for b, h in pairs]


def rounds_disagree(ratios: list[float] | tuple[float, ...]) -> bool:
    """True when per-round head ÷ base ratios fall on both sides of 1 (one round faster, another slower): the change
    is within the machine's round-to-round noise. False without ratios."""
    return bool(ratios) and min(ratios) <= 1 <= max(ratios)
