"""Stage evaluate: every variant on the held-out eval set; accuracy, speed, memory, size.

    python -m stages.evaluate      (dvc repro evaluate)

Variants: teacher, distilled student and fine-tuned student in PyTorch (an endpoint teacher through its
endpoint); the quantized export in onnxruntime-genai. Writes reports/metrics.json (DVC metrics),
reports/predictions/<variant>.jsonl, reports/plots/ (DVC plots) and reports/report.md.
"""

from __future__ import annotations

from pathlib import Path

from slmops.core.errors import InputError, exits_2_on_input_error
from slmops.core.files import atomic_write_text, write_json, write_jsonl
from slmops.core.params import load_params
from slmops.core.task import load_task, read_labelled
from slmops.eval.benchmark import measure
from slmops.eval.evaluate import evaluate_endpoint, evaluate_model, evaluate_onnx, metrics, plot_rows, size_on_disk
from slmops.models.generate import GenerationConfig
from slmops.models.hf import load_model_and_tokenizer
from slmops.onnx.runtime import OnnxChatModel
from slmops.report.run import git_revision, render
from slmops.teacher.endpoint import Requests, Settings, served_endpoint
from slmops.teacher.local import load_teacher

TORCH_VARIANTS = {"teacher": Path("models/teacher"), "student": Path("models/student"),
                  "finetuned": Path("models/finetuned")}
ONNX = Path("models/onnx")
REPORTS = Path("reports")


@exits_2_on_input_error
def main() -> None:
    params = load_params()
    evaluate, quantize = params["evaluate"], params["quantize"]
    for folder in [*TORCH_VARIANTS.values(), ONNX]:  # models/teacher holds an endpoint teacher's record
        if not folder.is_dir():
            raise InputError(f"{folder}: model folder missing; run `dvc repro` to build it")
    task = load_task(params["task"]["dir"])
    rows = read_labelled(params["data"]["eval"], task)[: evaluate["limit"]]
    config = GenerationConfig(**evaluate["generation"], seed=params["seed"])
    speed = evaluate["speed"]
    timed_rows = [rows[i % len(rows)] for i in range(speed["warmup"] + speed["repeats"])]
    timed_chats = [task.messages(r["message"]) for r in timed_rows]

    variants, latencies = {}, {}
    local = dict(TORCH_VARIANTS)
    if params["teacher"]["backend"] == "openai":
        del local["teacher"]
        settings = Settings(max_tokens=config.max_new_tokens, seed=params["seed"],
                            response_format=params["teacher"]["openai"]["response_format"])
        figures, predictions, latencies["teacher"] = evaluate_endpoint(
            served_endpoint(params["teacher"]), Requests(**params["synthesize"]["requests"]), task, rows, settings,
            timed_chats, speed["warmup"])
        variants["teacher"] = {"runtime": f"endpoint {params['teacher']['model']}", **figures}
        write_jsonl(REPORTS / "predictions" / "teacher.jsonl", predictions)
    for name, folder in local.items():
        model, tokenizer = load_teacher(folder)[:2] if name == "teacher" else load_model_and_tokenizer(folder)
        figures, predictions = evaluate_model(model, tokenizer, task, rows, config, name)
        del model
        timing = measure("torch", str(folder), timed_chats, speed["warmup"], config.max_new_tokens)
        variants[name] = {"runtime": "PyTorch fp32", **figures, **size_on_disk(folder)}
        latencies[name] = timing.pop("latencies_ms")
        variants[name].update(timing)
        write_jsonl(REPORTS / "predictions" / f"{name}.jsonl", predictions)

    onnx_model = OnnxChatModel(ONNX, quantize["execution_provider"])
    figures, predictions = evaluate_onnx(onnx_model, task, rows, config.max_new_tokens, "quantized")
    timing = measure("onnx", str(ONNX), timed_chats, speed["warmup"], config.max_new_tokens,
                     quantize["execution_provider"])
    latencies["quantized"] = timing.pop("latencies_ms")
    variants["quantized"] = {"runtime": f"onnxruntime-genai {quantize['precision']}", **figures, **timing,
                             "parameters": variants["finetuned"]["parameters"], **size_on_disk(ONNX)}
    write_jsonl(REPORTS / "predictions" / "quantized.jsonl", predictions)

    results = metrics(variants)
    accuracy_size, quantiles = plot_rows(variants, latencies)
    write_json(REPORTS / "plots" / "accuracy_size.json", accuracy_size)
    for name, points in quantiles.items():
        write_json(REPORTS / "plots" / "latency" / f"{name}.json", points)
    atomic_write_text(REPORTS / "report.md", render(results, quantize, len(rows), git_revision()))
    write_json(REPORTS / "metrics.json", results)


if __name__ == "__main__":
    main()
