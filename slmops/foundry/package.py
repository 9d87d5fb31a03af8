"""The Foundry Local model folder: the model, its tokenizer and chat template, inference_model.json (Name,
PromptTemplate), task.json, the model card and manifest.json (slmops.foundry.verify checks it)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema

from slmops.core.files import write_json

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = json.loads((Path(__file__).parent / "manifest.schema.json").read_text())
CONTENT = "{Content}"  # Foundry Local's placeholder in a PromptTemplate


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prompt_template(model) -> dict:
    """Foundry Local's PromptTemplate, rendered from the model's own chat template (via onnxruntime-genai)."""

    def render(role: str, generation_prompt: bool = False) -> str:
        messages = json.dumps([{"role": role, "content": CONTENT}])
        return model.tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt)

    return {
        "system": render("system"),
        "user": render("user"),
        "assistant": render("assistant"),
        "prompt": render("user", generation_prompt=True),
    }


def inference_model(name: str, model) -> dict:
    template = prompt_template(model)
    if CONTENT not in template["prompt"]:
        raise RuntimeError(f"the chat template drops the user's message: prompt template {template['prompt']!r}")
    return {"Name": name, "PromptTemplate": template}


def build_package(out: Path, export_dir: Path, name: str, version: int, task, card: str) -> dict:
    """The Foundry Local model folder `out`: the export's genai files, inference_model.json, task.json, the model
    card as README.md, then manifest.json over all of them; returns the manifest."""
    from slmops.onnx.export import copy_genai_files
    from slmops.onnx.runtime import OnnxChatModel

    copy_genai_files(export_dir, out)
    write_json(out / "inference_model.json", inference_model(name, OnnxChatModel(out)))
    write_json(out / "task.json", task_record(task))
    (out / "README.md").write_text(card)
    return write_manifest(out, name, version)


def write_manifest(folder: Path, name: str, version: int) -> dict:
    """manifest.json: every other file with its SHA-256 and size; validated before it is written."""
    files = [
        {"path": p.relative_to(folder).as_posix(), "sha256": sha256(p), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    ]
    manifest = {"name": name, "version": version, "files": files}
    jsonschema.validate(manifest, MANIFEST_SCHEMA)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def task_record(task) -> dict:
    """task.json: what a consumer needs to prompt the model and check its answers."""
    return {"name": task.name, "instruction": task.instruction.strip(), "answer_schema": task.schema}
