"""Stage evaluate: score teacher, distilled student and fine-tuned student on the held-out eval set.

    python -m stages.evaluate      (dvc repro evaluate)

Writes reports/metrics.json (DVC metrics) and reports/predictions/<variant>.jsonl.
"""

from __future__ import annotations

from pathlib import Path

from slmops.errors import exits_2_on_input_error
from slmops.evaluate import evaluate_model
from slmops.generation import GenerationConfig
from slmops.io import write_json, write_jsonl
from slmops.modeling import load_model_and_tokenizer
from slmops.params import load_params
from slmops.task import load_task, read_labelled
from slmops.teacher import load_teacher

METRICS = Path("reports/metrics.json")
PREDICTIONS = Path("reports/predictions")


@exits_2_on_input_error
def main() -> None:
    params = load_params()
    evaluate = params["evaluate"]
    task = load_task(params["task"]["dir"])
    rows = read_labelled(params["data"]["eval"], task)[: evaluate["limit"]]
    config = GenerationConfig(**evaluate["generation"], seed=params["seed"])
    variants = {
        "teacher": lambda: load_teacher("models/teacher")[:2],
        "student": lambda: load_model_and_tokenizer("models/student"),
        "finetuned": lambda: load_model_and_tokenizer("models/finetuned"),
    }
    metrics = {}
    for name, load in variants.items():
        model, tokenizer = load()
        metrics[name], predictions = evaluate_model(model, tokenizer, task, rows, config, name)
        write_jsonl(PREDICTIONS / f"{name}.jsonl", predictions)
    teacher, finetuned = metrics["teacher"], metrics["finetuned"]
    metrics["retention"] = {
        "accuracy_kept": finetuned["exact_match"] / teacher["exact_match"] if teacher["exact_match"] else 0.0,
        "parameter_ratio": finetuned["parameters"] / teacher["parameters"],
    }
    write_json(METRICS, metrics)


if __name__ == "__main__":
    main()
