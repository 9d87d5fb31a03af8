"""Score model variants on the held-out eval set, and turn per-variant figures into DVC metrics.

Accuracy: exact match, per-field accuracy, JSON-valid and schema-valid rates (slmops.core.task.score) of the answers
as the one answer parser reads them (slmops.core.answers.parse_answer), the same way for every variant: reasoning
dropped, the JSON found in prose or a fence, and an answer cut at evaluate.generation.max_new_tokens (or filtered by
an endpoint's content filter) holding no answer.
Speed and memory come from slmops.eval.benchmark; size on disk and parameter count from the model folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from slmops.core.answers import Parsed, local_finish_reason, parse_answer
from slmops.core.config import GenerationSettings, Requests
from slmops.core.metrics import HEADLINE as HEADLINE_METRICS
from slmops.core.task import Task, score
from slmops.eval.benchmark import latency_percentiles, measure
from slmops.models.generate import generate_answers
from slmops.models.hf import count_parameters, load_model_and_tokenizer
from slmops.onnx.runtime import OnnxChatModel
from slmops.teacher.endpoint import Endpoint, Usage, complete_enough, time_requests
from slmops.teacher.local import pinned_folder

# Headline figures (slmops.core.metrics), flat so that `dvc metrics diff` reads well; the shipped model's.
HEADLINE = tuple(metric.key for metric in HEADLINE_METRICS)


def _predictions(rows: list[dict], answers: list[str], finish_reasons: list[str | None]) -> list[dict]:
    """One record per eval row: id, message, label, the answer as written and its finish_reason, which is what
    slmops.core.answers.parse_answer needs to score it again (slmops report pairs them record by record)."""
    return [
        {"id": r.get("id"), "message": r["message"], "label": r["label"], "answer": a, "finish_reason": f}
        for r, a, f in zip(rows, answers, finish_reasons, strict=True)
    ]


def score_torch(model, tokenizer, task: Task, rows: list[dict], settings: GenerationSettings, seed: int, name: str):
    """(figures, predictions) of a PyTorch model on labelled rows: accuracy figures plus parameter count."""
    answers = generate_answers(
        model, tokenizer, [task.messages(r["message"]) for r in rows], settings, seed, progress=f"evaluating {name}"
    )
    texts = [a.text for a in answers]
    parsed = [
        parse_answer(task, a.text, local_finish_reason(a.finished), max_tokens=settings.max_new_tokens) for a in answers
    ]
    figures = score(task, parsed, [r["label"] for r in rows])
    figures["parameters"] = count_parameters(model)
    return figures, _predictions(rows, texts, [local_finish_reason(a.finished) for a in answers])


def score_onnx(model: OnnxChatModel, task: Task, rows: list[dict], settings: GenerationSettings, name: str):
    """(figures, predictions) of an onnxruntime-genai model on labelled rows, one request at a time."""
    answers = [
        model.answer(task.messages(r["message"]), settings.max_new_tokens, settings.genai_search_options())
        for r in tqdm(rows, desc=f"evaluating {name}", unit="prompt")
    ]
    parsed = [
        parse_answer(task, a.text, local_finish_reason(a.finished), max_tokens=settings.max_new_tokens) for a in answers
    ]
    finish_reasons = [local_finish_reason(a.finished) for a in answers]
    return score(task, parsed, [r["label"] for r in rows]), _predictions(
        rows, [a.text for a in answers], finish_reasons
    )


@dataclass
class Evaluation:
    figures: dict  # accuracy, speed, memory and size: one entry of metrics.json's variants
    predictions: list[dict]  # one per eval row: id, message, label, answer
    latencies_ms: list[float]  # each timed request's latency


@dataclass
class Workload:
    """What every variant is asked: the eval rows, how to answer, and the requests to time (warm-up first)."""

    task: Task
    rows: list[dict]
    settings: GenerationSettings
    seed: int
    timed_chats: list[list[dict]]
    warmup: int


@dataclass
class TorchVariant:
    """A Hugging Face model folder run in PyTorch fp32; `pinned`: a teacher the teacher stage pinned (loaded through
    its pin check, which refuses changed weights)."""

    name: str
    folder: Path
    pinned: bool = False

    def evaluate(self, work: Workload) -> Evaluation:
        # An hf teacher's folder holds only its pin; the model is where the pin points.
        folder = pinned_folder(self.folder)[0] if self.pinned else self.folder
        model, tokenizer = load_model_and_tokenizer(folder)
        figures, predictions = score_torch(model, tokenizer, work.task, work.rows, work.settings, work.seed, self.name)
        del model  # the timing runs in a child process; free this copy first
        timing = measure("torch", str(folder), work.timed_chats, work.warmup, work.settings.max_new_tokens)
        latencies = timing.pop("latencies_ms")
        figures = {"runtime": "PyTorch fp32", **figures, **size_on_disk(folder), **timing}
        return Evaluation(figures, predictions, latencies)


@dataclass
class OnnxVariant:
    """An onnxruntime-genai export; its parameter count is its source variant's."""

    name: str
    folder: Path
    execution_provider: str
    precision: str
    source: str

    def evaluate(self, work: Workload) -> Evaluation:
        model = OnnxChatModel(self.folder, self.execution_provider)
        figures, predictions = score_onnx(model, work.task, work.rows, work.settings, self.name)
        timing = measure(
            "onnx",
            str(self.folder),
            work.timed_chats,
            work.warmup,
            work.settings.max_new_tokens,
            self.execution_provider,
        )
        latencies = timing.pop("latencies_ms")
        figures = {
            "runtime": f"onnxruntime-genai {self.precision}",
            **figures,
            **timing,
            "parameters": None,
            **size_on_disk(self.folder),
        }
        return Evaluation(figures, predictions, latencies)


@dataclass
class EndpointVariant:
    """A teacher behind an endpoint: accuracy through the response cache, latency from fresh requests one at a
    time. A remote model's size, memory and parameters are unknown: None."""

    name: str
    endpoint: Endpoint
    requests: Requests
    response_format: str | None

    def evaluate(self, work: Workload) -> Evaluation:
        body = work.settings.openai_kwargs(work.seed, self.response_format)
        chats = [work.task.messages(r["message"]) for r in work.rows]
        replies, _ = complete_enough(self.endpoint, body, chats, self.requests, Usage(), "evaluating teacher")
        parsed = [
            parse_answer(work.task, r["content"], r["finish_reason"], r.get("reasoning_content"), body["max_tokens"])
            if r
            else Parsed(found=False, reason="request failed", kind="request_failed")
            for r in replies
        ]
        texts = [(r["content"] or "") if r else "" for r in replies]
        latencies = [s * 1000 for s in time_requests(self.endpoint, body, work.timed_chats, self.requests)][
            work.warmup :
        ]
        figures = {
            "runtime": f"endpoint {self.endpoint.model}",
            **score(work.task, parsed, [r["label"] for r in work.rows]),
            **latency_percentiles(latencies),
            "requests": len(latencies),
            "ttft_p50_ms": None,
            "decode_tokens_per_s": None,
            "peak_rss_mb": None,
            "model_rss_mb": None,
            "parameters": None,
            "size_mb": None,
            "weights_mb": None,
        }
        finish_reasons = [r["finish_reason"] if r else None for r in replies]
        return Evaluation(figures, _predictions(work.rows, texts, finish_reasons), latencies)


Variant = TorchVariant | OnnxVariant | EndpointVariant


def evaluate_all(variants: list[Variant], work: Workload) -> dict[str, Evaluation]:
    """Each variant's evaluation, in order; an export takes its source's parameter count."""
    results: dict[str, Evaluation] = {}
    for variant in variants:
        results[variant.name] = variant.evaluate(work)
        if isinstance(variant, OnnxVariant):
            results[variant.name].figures["parameters"] = results[variant.source].figures["parameters"]
    return results


WEIGHT_FILES = ("*.safetensors", "*.bin", "model.onnx", "model.onnx.data")
PIPELINE_RECORDS = {"teacher.json", "quantize.json", "finetune.json", "olive_config.json"}


def size_on_disk(folder: str | Path) -> dict:
    """Megabytes of what ships (weights, config, tokenizer; not our records) and of the weights alone."""
    files = [p for p in Path(folder).iterdir() if p.is_file() and p.name not in PIPELINE_RECORDS]
    weights = {p for pattern in WEIGHT_FILES for p in Path(folder).glob(pattern)}
    return {
        "size_mb": sum(p.stat().st_size for p in files) / 1e6,
        "weights_mb": sum(p.stat().st_size for p in weights) / 1e6,
    }


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
        "model_memory_saved": _saved(teacher["model_rss_mb"], shipped["model_rss_mb"]),
        "size_saved": _saved(teacher["size_mb"], shipped["size_mb"]),
        "size_saved_by_quantization": _saved(finetuned["weights_mb"], shipped["weights_mb"]),
        "parameter_ratio": shipped["parameters"] / teacher["parameters"] if teacher["parameters"] else None,
    }


def metrics(variants: dict[str, dict], shipped: str = "quantized") -> dict:
    """reports/metrics.json: the shipped model's headline (HEADLINE), retention, then every variant in full.

    `variants`: {variant name: its figures}, with "teacher", "finetuned" and `shipped` among them; raises
    KeyError when a figure that the headline or retention() reads is missing."""
    headline = {key: variants[shipped][key] for key in HEADLINE}
    kept = retention(variants["teacher"], variants[shipped], variants["finetuned"])
    return {**headline, **kept, "variants": variants}


def plot_rows(variants: dict[str, dict], latencies: dict[str, list[float]]) -> tuple[list[dict], dict[str, list[dict]]]:
    """DVC plot data: accuracy against size (one point per variant) and each variant's latency quantiles."""
    accuracy_size = [
        {"variant": name, "size_mb": v["size_mb"], "exact_match": v["exact_match"]}
        for name, v in variants.items()
        if v["size_mb"] is not None
    ]
    quantiles = {}
    for name, values in latencies.items():
        ordered = sorted(values)
        quantiles[name] = [
            {"quantile": round((i + 0.5) / len(ordered), 4), "latency_ms": ms} for i, ms in enumerate(ordered)
        ]
    return accuracy_size, quantiles
