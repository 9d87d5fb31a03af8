"""Stage evaluate: every variant on the held-out eval set; accuracy, speed, memory, size.

    python -m stages.evaluate      (dvc repro evaluate)

Variants: teacher, distilled student and fine-tuned student in PyTorch (an endpoint teacher through its
endpoint); the quantized export in onnxruntime-genai. Writes reports/metrics.json (DVC metrics),
reports/predictions/<variant>.jsonl, reports/plots/ (DVC plots) and reports/report.md, all after every variant
is done, so a failed run leaves the previous ones whole.
"""

from __future__ import annotations

from pathlib import Path

from slmops.core.config import Params
from slmops.core.errors import InputError, exits_2_on_input_error
from slmops.core.files import atomic_dir, atomic_write_text, write_json, write_jsonl
from slmops.core.params import load_params
from slmops.core.task import load_task, read_labelled
from slmops.eval.benchmark import hardware
from slmops.eval.evaluate import (
    EndpointVariant,
    OnnxVariant,
    TorchVariant,
    Variant,
    Workload,
    evaluate_all,
    metrics,
    plot_rows,
)
from slmops.report.run import git_revision, render
from slmops.teacher.endpoint import served_endpoint

MODELS = {
    "teacher": Path("models/teacher"),
    "student": Path("models/student"),
    "finetuned": Path("models/finetuned"),
    "quantized": Path("models/onnx"),
}
REPORTS = Path("reports")


def variants_for(params: Params) -> list[Variant]:
    """teacher, student, finetuned, quantized: the models the pipeline built (an endpoint teacher as such)."""
    for folder in MODELS.values():  # models/teacher holds an endpoint teacher's record
        if not folder.is_dir():
            raise InputError(f"{folder}: model folder missing; run `dvc repro` to build it")
    teacher = params.teacher
    return [
        EndpointVariant("teacher", served_endpoint(teacher), params.synthesize.requests, teacher.openai.response_format)
        if teacher.backend == "openai"
        else TorchVariant("teacher", MODELS["teacher"], pinned=True),
        TorchVariant("student", MODELS["student"]),
        TorchVariant("finetuned", MODELS["finetuned"]),
        OnnxVariant(
            "quantized",
            MODELS["quantized"],
            params.quantize.execution_provider,
            params.quantize.precision,
            source="finetuned",
        ),
    ]


@exits_2_on_input_error
def main() -> None:
    params = load_params()
    evaluate = params.evaluate
    task = load_task(params.task.dir)
    rows = read_labelled(params.data.eval, task)[: evaluate.limit]
    timed = [rows[i % len(rows)] for i in range(evaluate.speed.warmup + evaluate.speed.repeats)]
    work = Workload(
        task,
        rows,
        evaluate.generation,
        params.seed,
        [task.messages(r["message"]) for r in timed],
        evaluate.speed.warmup,
    )
    results = evaluate_all(variants_for(params), work)

    figures = {name: result.figures for name, result in results.items()}
    summary = metrics(figures)
    accuracy_size, quantiles = plot_rows(figures, {name: result.latencies_ms for name, result in results.items()})
    with atomic_dir(REPORTS / "predictions") as out:
        for name, result in results.items():
            write_jsonl(out / f"{name}.jsonl", result.predictions)
    with atomic_dir(REPORTS / "plots" / "latency") as out:
        for name, points in quantiles.items():
            write_json(out / f"{name}.json", points)
    write_json(REPORTS / "plots" / "accuracy_size.json", accuracy_size)
    shipped = {
        "precision": params.quantize.precision,
        "engine": params.quantize.engine,
        "execution_provider": params.quantize.execution_provider,
    }
    atomic_write_text(REPORTS / "report.md", render(summary, shipped, len(rows), git_revision()))
    write_json(REPORTS / "metrics.json", {**summary, "hardware": hardware()})


if __name__ == "__main__":
    main()
