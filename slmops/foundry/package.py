"""The Foundry Local model folder: build it (model, tokenizer, inference_model.json, model card, manifest)
and verify it (hashes, onnxruntime-genai, the Foundry Local runtime in-process, offline)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema

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

    return {"system": render("system"), "user": render("user"), "assistant": render("assistant"),
            "prompt": render("user", generation_prompt=True)}


def inference_model(name: str, model) -> dict:
    template = prompt_template(model)
    if CONTENT not in template["prompt"]:
        raise RuntimeError(f"the chat template drops the user's message: prompt template {template['prompt']!r}")
    return {"Name": name, "PromptTemplate": template}


def write_manifest(folder: Path, name: str, version: int) -> dict:
    """manifest.json: every other file with its SHA-256 and size; validated before it is written."""
    files = [{"path": p.relative_to(folder).as_posix(), "sha256": sha256(p), "bytes": p.stat().st_size}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST]
    manifest = {"name": name, "version": version, "files": files}
    jsonschema.validate(manifest, MANIFEST_SCHEMA)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def task_record(task) -> dict:
    """task.json: what a consumer needs to prompt the model and check its answers."""
    return {"name": task.name, "instruction": task.instruction.strip(), "answer_schema": task.schema}
