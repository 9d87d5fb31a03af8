"""Verify a Foundry Local model folder: hashes against its manifest, one answer from onnxruntime-genai and
one from the Foundry Local runtime in-process, offline."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jsonschema

from slmops.core.errors import InputError
from slmops.foundry.package import MANIFEST, MANIFEST_SCHEMA, sha256


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
    extra = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != MANIFEST and p.relative_to(folder).as_posix() not in listed
    )
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


def foundry_local_chat(
    folder: Path, model_id: str, messages: list[dict], max_output_tokens: int
) -> tuple[str, str, int]:
    """Register the folder in a throw-away Foundry Local cache, load it, answer one chat.

    Returns (text, finish reason, completion tokens).

    Foundry Local's manager is a process-wide singleton: call this once per process.
    """
    from foundry_local_sdk import (
        CatalogType,
        ChatSession,
        Configuration,
        FoundryLocalManager,
        MessageItem,
        ModelInfoBuilder,
        Request,
        RequestOptions,
        SearchOptions,
    )

    with tempfile.TemporaryDirectory(prefix="foundry-verify-") as home:
        FoundryLocalManager.initialize(
            Configuration(
                app_name="slmops_verify",
                app_data_dir=f"{home}/app",
                model_cache_dir=f"{home}/models",
                logs_dir=f"{home}/logs",
                disable_nonessential_telemetry=True,
            )
        )
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
                session.set_options(
                    RequestOptions(search=SearchOptions(temperature=0.0, max_output_tokens=max_output_tokens))
                )
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


def check_output_budget(model, prompt_tokens: int, max_output_tokens: int) -> None:
    """InputError naming both numbers when the prompt plus `max_output_tokens` exceeds the model's context
    (an OnnxChatModel's): Foundry Local would refuse the request with a traceback."""
    context = model.context_length
    if prompt_tokens >= context:
        raise InputError(
            f"{model.folder}: the verification prompt alone is {prompt_tokens} tokens and the package's context is "
            f"{context}; use a shorter --message or --system"
        )
    if prompt_tokens + max_output_tokens > context:
        raise InputError(
            f"{model.folder}: max_output_tokens {max_output_tokens} does not fit the package's context of {context} "
            f"tokens with the verification prompt of {prompt_tokens} tokens (at most {context - prompt_tokens})"
        )


def verify(folder: str | Path, messages: list[dict], max_output_tokens: int) -> Verification:
    """Hashes against the manifest, then one greedy answer to `messages` (e.g. a system and a user message) from
    the Foundry Local runtime, which must equal onnxruntime-genai's greedy answer on the prompt the Hugging Face
    chat template renders: a wrong chat template or generation config in the package shows up as a difference.

    Raises InputError when the package does not match its manifest or the two answers differ, RuntimeError when a
    runtime loads the model but generates nothing.
    """
    from slmops.foundry.package import hf_renderer
    from slmops.onnx.runtime import OnnxChatModel

    folder = Path(folder)
    manifest = check_manifest(folder)
    name = json.loads((folder / "inference_model.json").read_text())["Name"]
    model = OnnxChatModel(folder)
    render, _, _ = hf_renderer(folder)
    prompt = model.tokenizer.encode(render(messages, True))
    check_output_budget(model, len(prompt), max_output_tokens)
    pieces = list(model.stream(messages, max_output_tokens, prompt=prompt))
    if not pieces:
        raise RuntimeError(f"{folder}: onnxruntime-genai loaded the model but it ended its answer at once")
    genai = "".join(pieces).strip()
    text, finish, tokens = foundry_local_chat(folder, f"{name}:{manifest['version']}", messages, max_output_tokens)
    if finish == "ERROR" or tokens == 0:
        raise RuntimeError(
            f"{folder}: Foundry Local loaded the model but generated {tokens} tokens "
            f"(finish reason {finish}, text {text!r})"
        )
    if text != genai:
        raise InputError(
            f"{folder}: Foundry Local answered {text!r} but onnxruntime-genai answered {genai!r} on the prompt "
            f"the Hugging Face chat template renders for the same {len(messages)} messages; check the package's "
            "chat template and generation config"
        )
    return Verification(len(manifest["files"]), genai, text, finish)
