"""Score model variants on the held-out eval set, and turn per-variant figures into DVC metrics.

Accuracy: exact match, per-field accuracy, JSON-valid and schema-valid rates (slmops.core.task.score).
Speed and memory come from slmops.eval.benchmark; size on disk and parameter count from the model folders.
"""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from slmops.core.task import Task, score
from slmops.eval.benchmark import latency_percentiles
from slmops.models.generate import GenerationConfig, generate_answers
from slmops.models.hf import count_parameters
from slmops.teacher.endpoint import (
    Endpoint,
    Requests,
    Settings,
    Usage,
    check_success_ratio,
    complete_all,
    time_requests,
    unfence,
)

# Headline figures, flat so that `dvc metrics diff` reads well. Each is the shipped (quantized) model's.
HEADLINE = ("exact_match", "schema_valid", "json_valid", "size_mb", "weights_mb", "parameters", "latency_p50_ms",
            "latency_p95_ms", "ttft_p50_ms", "decode_tokens_per_s", "peak_rss_mb")


def _predictions(rows: list[dict], answers: list[str]) -> list[dict]:
    return [{"id": r.get("id"), "message": r["message"], "label": r["label"], "answer": a}
            for r, a in zip(rows, answers)]


def evaluate_model(model, tokenizer, task: Task, rows: list[dict], config: GenerationConfig, name: str):
    """(figures, predictions) for a PyTorch model: accuracy figures plus parameter count."""
    answers = generate_answers(model, tokenizer, [task.messages(r["message"]) for r in rows], config,
                               progress=f"evaluating {name}")
    texts = [a.text for a in answers]
    figures = score(task, texts, [r["label"] for r in rows])
    figures["parameters"] = count_parameters(model)
    return figures, _predictions(rows, texts)


def evaluate_onnx(model, task: Task, rows: list[dict], max_new_tokens: int, name: str):
    """(figures, predictions) for an slmops.onnx.runtime.OnnxChatModel, greedy, one request at a time."""
    texts = [model.answer(task.messages(r["message"]), max_new_tokens).text
             for r in tqdm(rows, desc=f"evaluating {name}", unit="prompt")]
    return score(task, texts, [r["label"] for r in rows]), _predictions(rows, texts)


def evaluate_endpoint(endpoint: Endpoint, requests: Requests, task: Task, rows: list[dict], settings: Settings,
                      timed_chats: list[list[dict]], warmup: int):
    """(figures, predictions, latencies in ms) of an endpoint teacher. Accuracy through the response cache;
    latency from fresh requests one at a time. A remote model's size, memory and parameters are unknown: None."""
    replies, failures = complete_all(endpoint, settings, [task.messages(r["message"]) for r in rows], requests,
                                     Usage(), desc="evaluating teacher")
    check_success_ratio(failures, requests.min_success_ratio, requests.cache)
    texts = [unfence(reply["content"]) if reply else "" for reply in replies]
    latencies = [s * 1000 for s in time_requests(endpoint, settings, timed_chats, requests)][warmup:]
    figures = {**score(task, texts, [r["label"] for r in rows]), **latency_percentiles(latencies),
               "requests": len(latencies), "ttft_p50_ms": None, "decode_tokens_per_s": None, "peak_rss_mb": None,
               "parameters": None, "size_mb": None, "weights_mb": None}
    return figures, _predictions(rows, texts), latencies


WEIGHT_FILES = ("*.safetensors", "*.bin", "model.onnx", "model.onnx.data")
PIPELINE_RECORDS = {"teacher.json", "quantize.json", "finetune.json", "olive_config.json"}


def size_on_disk(folder: str | Path) -> dict:
    """Megabytes of what ships (weights, config, tokenizer; not our records) and of the weights alone."""
    files = [p for p in Path(folder).iterdir() if p.is_file() and p.name not in PIPELINE_RECORDS]
    weights = {p for pattern in WEIGHT_FILES for p in Path(folder).glob(pattern)}
    return {"size_mb": sum(p.stat().st_size for p in files) / 1e6,
            "weights_mb": sum(p.stat().st_size for p in weights) / 1e6}


def _saved(baseline: float | None, value: float) -> float | None:
    if baseline is None:  # an endpoint teacher: its memory and size are unknown
        return None
    return 1 - value / baseline if baseline else 0.0


def retention(teacher: dict, shipped: dict, finetuned: dict) -> dict:
    """How the shipped model compares with the teacher (and, for size, with its own fp32 weights)."""
    return {
        "accuracy_kept": shipped["exact_match"] / teacher["exact_match"] if teacher["exact_match"] else 0.0,
        "latency_saved": _saved(teacher["latency_p50_ms"], shipped["latency_p50_ms"]),
        "memory_saved": _saved(teacher["peak_rss_mb"], shipped["peak_rss_mb"]),
        "size_saved": _saved(teacher["size_mb"], shipped["size_mb"]),
        "size_saved_by_quantization": _saved(finetuned["weights_mb"], shipped["weights_mb"]),
        "parameter_ratio": shipped["parameters"] / teacher["parameters"] if teacher["parameters"] else None,
    }


def metrics(variants: dict[str, dict], shipped: str = "quantized") -> dict:
    """reports/metrics.json: the shipped model's headline, retention, then every variant in full."""
    headline = {key: variants[shipped][key] for key in HEADLINE}
    kept = retention(variants["teacher"], variants[shipped], variants["finetuned"])
    return {**headline, **kept, "variants": variants}


def plot_rows(variants: dict[str, dict], latencies: dict[str, list[float]]) -> tuple[list[dict], dict[str, list[dict]]]:
    """DVC plot data: accuracy against size (one point per variant) and each variant's latency quantiles."""
    accuracy_size = [{"variant": name, "size_mb": v["size_mb"], "exact_match": v["exact_match"]}
                     for name, v in variants.items() if v["size_mb"] is not None]
    quantiles = {}
    for name, values in latencies.items():
        ordered = sorted(values)
        quantiles[name] = [{"quantile": round((i + 0.5) / len(ordered), 4), "latency_ms": ms}
                           for i, ms in enumerate(ordered)]
    return accuracy_size, quantiles
