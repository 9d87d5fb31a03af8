"""The model card (README.md) of a Foundry Local package: what the model does, how it was made, how well it does."""

from __future__ import annotations

import yaml

from slmops.core.config import Params
from slmops.core.task import Task
from slmops.report.run import render_variants, shown

MADE_WITH = ("seed", "teacher", "synthesize", "student", "distill", "finetune", "quantize")
TRANSPORT = {"requests"}  # how endpoint requests were sent (synthesize.requests): no part of what made the model


def model_card(
    name: str, version: int, task: Task, params: Params, metrics: dict, teacher: dict, synthesize: dict, revision: str
) -> str:
    """README.md of the package: what the model does, how it was made (the params of MADE_WITH), how well it does.
    `metrics`, `teacher`, `synthesize`: reports/metrics.json, teacher.json and synthesize.json."""
    shipped = metrics["variants"]["quantized"]
    made_with = {
        key: params.seed if key == "seed" else getattr(params, key).model_dump(mode="json", exclude=TRANSPORT)
        for key in MADE_WITH
    }
    return "\n".join(
        [
            f"# {name} (version {version})",
            "",
            f"Built by the slmops pipeline at git revision `{revision}`: a {shipped['parameters']:,}-parameter "
            f"student distilled from a {shown(metrics['variants']['teacher']['parameters'], '{:,}')}"
            "-parameter teacher, "
            f"fine-tuned with {params.finetune.method}, exported as {params.quantize.precision} ONNX "
            f"for onnxruntime-genai ({params.quantize.execution_provider}).",
            "",
            "## Task",
            "",
            f"Task `{task.name}`. Instruction (send it as the system message):",
            "",
            f"> {task.instruction.strip()}",
            "",
            "The answer is one JSON object; its JSON Schema is `task.json` → `answer_schema`.",
            "",
            "## Data",
            "",
            f"- Teacher-labelled (synthetic): {synthesize.get('accepted', 0):,} answers accepted of "
            f"{synthesize.get('prompts', 0):,} prompts "
            f"({synthesize.get('rejected', 0):,} rejected by the answer parser{rejected_by(synthesize)}).",
            f"- Human-labelled fine-tuning set: `{params.data.labelled}`.",
            f"- Held-out evaluation set: `{params.data.eval}` ({shipped['n']:,} records).",
            "",
            "## Teacher",
            "",
            teacher_line(teacher),
            "",
            "## Metrics",
            "",
            *render_variants(metrics["variants"]),
            "",
            f"Accuracy kept against the teacher: {metrics['accuracy_kept']:.1%}; request latency saved: "
            f"{metrics['latency_saved']:.1%}; peak memory saved: {shown(metrics['memory_saved'], '{:.1%}')}.",
            "",
            "## Params",
            "",
            "```yaml",
            yaml.safe_dump(made_with, sort_keys=False).strip(),
            "```",
            "",
            "## Files",
            "",
            "`manifest.json` lists every file with its SHA-256; `slmops package verify <this folder>` checks them "
            "and runs the model in onnxruntime-genai and in the Foundry Local runtime.",
            "",
        ]
    )


def teacher_line(teacher: dict) -> str:
    if teacher.get("backend") == "openai":
        return (
            f"Backend `openai`: endpoint `{teacher.get('base_url')}`, model `{teacher.get('model')}`, "
            f"API version `{teacher.get('api_version')}`, served model `{teacher.get('served_model')}`."
        )
    return (
        f"Backend `{teacher.get('backend')}`, source `{teacher.get('source')}`, revision `{teacher.get('revision')}`, "
        f"weights SHA-256 `{teacher.get('weights_sha256')}`."
    )


def rejected_by(synthesize: dict) -> str:
    """': 4 schema, 2 no_json' from synthesize.json's count of rejected answers per kind ('' when none)."""
    kinds = synthesize.get("rejected_by") or {}
    return ": " + ", ".join(f"{n:,} {kind}" for kind, n in kinds.items()) if kinds else ""
