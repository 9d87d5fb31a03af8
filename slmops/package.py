"""The Foundry Local model folder: build it (model, tokenizer, inference_model.json, model card, manifest)
and verify it (hashes, onnxruntime-genai, the Foundry Local runtime in-process, offline)."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jsonschema

from slmops.errors import InputError

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


# --- verify --------------------------------------------------------------------------------------------

def check_manifest(folder: Path) -> dict:
    """The manifest, after checking its schema and every file's hash; names each changed, missing or extra file."""
    path = folder / MANIFEST
    if not path.is_file():
        raise InputError(f"{folder}: no {MANIFEST}; not a package built by slmops")
    try:
        manifest = json.loads(path.read_text())
        jsonschema.validate(manifest, MANIFEST_SCHEMA)
    except (json.JSONDecodeError, jsonschema.ValidationError) as err:
        raise InputError(f"{path}: invalid manifest: {getattr(err, 'message', err)}") from None
    problems = []
    listed = set()
    for entry in manifest["files"]:
        file = folder / entry["path"]
        listed.add(entry["path"])
        if not file.is_file():
            problems.append(f"{entry['path']}: missing")
        elif file.stat().st_size != entry["bytes"] or sha256(file) != entry["sha256"]:
            problems.append(f"{entry['path']}: changed (SHA-256 or size differs from the manifest)")
    extra = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.name != MANIFEST and p.relative_to(folder).as_posix() not in listed)
    problems += [f"{name}: not in the manifest" for name in extra]
    if problems:
        raise InputError(f"{folder}: package does not match its manifest:\n  " + "\n  ".join(problems))
    return manifest


@dataclass
class Verification:
    files: int
    genai_answer: str
    foundry_answer: str
    foundry_finish_reason: str


def foundry_local_chat(folder: Path, model_id: str, messages: list[dict], max_output_tokens: int) -> tuple[str, str, int]:
    """Register the folder in a throw-away Foundry Local cache, load it, answer one chat.

    Returns (text, finish reason, completion tokens).

    Foundry Local's manager is a process-wide singleton: call this once per process.
    """
    from foundry_local_sdk import (CatalogType, ChatSession, Configuration, FoundryLocalManager, MessageItem,
                                   ModelInfoBuilder, Request, RequestOptions, SearchOptions)

    with tempfile.TemporaryDirectory(prefix="foundry-verify-") as home:
        FoundryLocalManager.initialize(Configuration(
            app_name="slmops_verify", app_data_dir=f"{home}/app", model_cache_dir=f"{home}/models",
            logs_dir=f"{home}/logs", disable_nonessential_telemetry=True))
        manager = FoundryLocalManager.instance
        try:
            catalog = manager.get_catalog(CatalogType.LOCAL)
            with ModelInfoBuilder() as metadata:
                metadata.set_string_property("task", "chat-completion")
                model = catalog.register_model(model_path=str(folder.resolve()), model_id=model_id, metadata=metadata)
            model.load()
            factories = {"system": MessageItem.system, "user": MessageItem.user, "assistant": MessageItem.assistant}
            texts = []
            with ChatSession(model) as session:
                session.set_options(RequestOptions(search=SearchOptions(temperature=0.0, max_output_tokens=max_output_tokens)))
                request = Request()
                for message in messages:
                    request.add_item(factories[message["role"]](message["content"]))
                with request, session.process_request(request) as response:
                    texts = [item.get_simple_text() for item in response if isinstance(item, MessageItem)]
                    finish, tokens = response.finish_reason.name, response.get_usage().completion_tokens
            model.unload()
            return "".join(texts).strip(), finish, tokens
        finally:
            manager.close()


def verify(folder: str | Path, messages: list[dict], max_output_tokens: int) -> Verification:
    """Hashes against the manifest, one greedy answer from onnxruntime-genai, one from Foundry Local."""
    from slmops.ortgen import OnnxChatModel

    folder = Path(folder)
    manifest = check_manifest(folder)
    name = json.loads((folder / "inference_model.json").read_text())["Name"]
    genai = OnnxChatModel(folder).answer(messages, max_output_tokens)
    if genai.tokens == 0:
        raise RuntimeError(f"{folder}: onnxruntime-genai loaded the model but it ended its answer at once")
    text, finish, tokens = foundry_local_chat(folder, f"{name}:{manifest['version']}", messages, max_output_tokens)
    if finish == "ERROR" or tokens == 0:
        raise RuntimeError(f"{folder}: Foundry Local loaded the model but generated {tokens} tokens "
                           f"(finish reason {finish}, text {text!r})")
    return Verification(len(manifest["files"]), genai.text, text, finish)


# --- model card ----------------------------------------------------------------------------------------

def model_card(name: str, version: int, task, params: dict, metrics: dict, teacher: dict,
               synthesize: dict, revision: str) -> str:
    """README.md of the package: what the model does, how it was made, how well it does."""
    import yaml

    from slmops.run_report import render_variants, shown

    shipped = metrics["variants"]["quantized"]
    made_with = {key: params[key] for key in ("seed", "teacher", "synthesize", "student", "distill",
                                              "finetune", "quantize")}
    return "\n".join([
        f"# {name} (version {version})",
        "",
        f"Built by the slmops pipeline at git revision `{revision}`: a {shipped['parameters']:,}-parameter "
        f"student distilled from a {shown(metrics['variants']['teacher']['parameters'], '{:,}')}-parameter teacher, "
        f"fine-tuned with {params['finetune']['method']}, exported as {params['quantize']['precision']} ONNX "
        f"for onnxruntime-genai ({params['quantize']['execution_provider']}).",
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
        f"{synthesize.get('prompts', 0):,} prompts ({synthesize.get('rejected', 0):,} rejected by the schema check).",
        f"- Human-labelled fine-tuning set: `{params['data']['labelled']}`.",
        f"- Held-out evaluation set: `{params['data']['eval']}` ({shipped['n']:,} records).",
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
    ])


def teacher_line(teacher: dict) -> str:
    if teacher.get("backend") == "openai":
        return (f"Backend `openai`: endpoint `{teacher.get('base_url')}`, model `{teacher.get('model')}`, "
                f"API version `{teacher.get('api_version')}`, served model `{teacher.get('served_model')}`.")
    return (f"Backend `{teacher.get('backend')}`, source `{teacher.get('source')}`, revision `{teacher.get('revision')}`, "
            f"weights SHA-256 `{teacher.get('weights_sha256')}`.")


def task_record(task) -> dict:
    """task.json: what a consumer needs to prompt the model and check its answers."""
    return {"name": task.name, "instruction": task.instruction.strip(), "answer_schema": task.schema}
