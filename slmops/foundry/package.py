"""The Foundry Local model folder: the model, its tokenizer and chat template, inference_model.json (Name,
PromptTemplate), task.json, the model card and manifest.json (slmops.foundry.verify checks it)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import jsonschema

from slmops.core.errors import InputError
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


Render = Callable[[list[dict], bool], str]

# Each role's segment is found by rendering chats whose contents are these markers and cutting the text around
# them: a chat template is a Jinja program, and rendering it is the only reliable way to read it.
_SYSTEM, _USER, _ASSISTANT, _NEXT_USER = "SLMOPSMARK1S", "SLMOPSMARK2U", "SLMOPSMARK3A", "SLMOPSMARK4U"


def _message(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _after(text: str, marker: str, until: str | None = None) -> str:
    tail = text[text.index(marker) + len(marker) :]
    return tail if until is None else tail[: tail.index(until)]


def _cut(text: str | None, prefix: str = "", suffix: str = "") -> str | None:
    """`text` without `prefix` and `suffix`; None when it does not start and end with them."""
    if text is None or not (text.startswith(prefix) and text.endswith(suffix)) or len(prefix + suffix) > len(text):
        return None
    return text[len(prefix) : len(text) - len(suffix)]


def _without_bos(text: str, bos: str) -> str:
    return text[len(bos) :] if bos and text.startswith(bos) else text


def assemble(template: dict, messages: list[dict]) -> str:
    """The prompt a PromptTemplate's parts give for `messages` (a chat ending with a user message): each
    message's part with its content, then the generation prompt (the `assistant` part up to `{Content}`)."""
    text = "".join(template[m["role"]].replace(CONTENT, m["content"]) for m in messages)
    return text + template["assistant"].split(CONTENT)[0]


def prompt_template(render: Render, instruction: str, bos: str = "", ends: tuple[str, ...] = ()) -> dict:
    """Foundry Local's PromptTemplate for a chat template; each part holds `{Content}` (or is "").

    `render(messages, add_generation_prompt) -> str` renders a chat as Hugging Face does; `bos` is the text the
    template opens every chat with, kept out of the parts (the runtime adds it); `ends` are the special tokens a
    template may close a chat with when it asks for no answer (Phi-3 appends its end-of-text token).

    - `system`, `user`, `assistant`: that role's segment only, never a default system prompt or an end-of-text
      token. `system` is "" when the template drops system messages, and the `user` part when it folds a system
      message into a user turn (Mistral, Gemma: there is no system segment to show).
    - `prompt`: one user message ready for the answer, after the task `instruction` as system message when the
      template renders one, so a single-message prompt is the one the model was trained with.

    `assemble(template, chat)` equals the template's own rendering (without `bos`) for a system and a user
    message and for several turns; checked here. Raises InputError when the template cannot be cut into parts.
    """
    try:
        parts = _role_parts(render, bos, ends)
    except ValueError:  # str.index: a marker is missing from the rendering
        raise InputError(
            "chat template: it rewrites or drops message contents, so it cannot be cut into parts"
        ) from None
    single = render([_message("system", instruction), _message("user", _USER)], True)
    if _USER not in single:
        raise InputError(f"chat template: drops the user's message (renders {single!r})")
    parts["prompt"] = _without_bos(single, bos).replace(_USER, CONTENT)
    _check_parts(render, parts, bos)
    return {role: parts[role] for role in ("system", "user", "assistant", "prompt")}


def _role_parts(render: Render, bos: str, ends: tuple[str, ...]) -> dict:
    user, assistant, next_user = (
        _message("user", _USER),
        _message("assistant", _ASSISTANT),
        _message("user", _NEXT_USER),
    )
    turns = render([user, assistant, next_user], True)
    after_user = _after(render([user], False), _USER)
    for end in ("", *ends):
        user_suffix = _cut(after_user, suffix=end)
        generation = None if user_suffix is None else _cut(_after(turns, _USER, _ASSISTANT), prefix=user_suffix)
        if generation is not None:
            break
    else:
        raise InputError(f"chat template: cannot tell where a user message ends in {after_user!r}")
    assistant_suffix = _cut(_after(render([user, assistant], False), _ASSISTANT), suffix=end)
    user_prefix = _cut(_after(turns, _ASSISTANT, _NEXT_USER), prefix=assistant_suffix or "")
    if assistant_suffix is None or user_prefix is None:
        raise InputError(f"chat template: cannot cut an assistant turn out of {turns!r}")
    parts = {"user": f"{user_prefix}{CONTENT}{user_suffix}", "assistant": f"{generation}{CONTENT}{assistant_suffix}"}
    with_system = _without_bos(render([_message("system", _SYSTEM), user], True), bos)
    if _SYSTEM not in with_system:
        parts["system"] = ""
    else:
        system_suffix = _cut(_after(with_system, _SYSTEM, _USER), suffix=user_prefix)
        folded = system_suffix is None
        parts["system"] = (
            parts["user"] if folded else with_system[: with_system.index(_SYSTEM)] + CONTENT + system_suffix
        )
    return parts


def _check_parts(render: Render, parts: dict, bos: str) -> None:
    """Assembled parts must equal the template's rendering; a chat without a system message may be preceded by
    the template's default system prompt, which the parts leave out."""
    system, user = _message("system", "Be brief."), _message("user", "Hello?")
    turns = [user, _message("assistant", "Hi."), _message("user", "Bye?")]
    chats = [[user], turns]
    if parts["system"] != parts["user"]:  # a system message folded into a user turn has no part of its own
        chats += [[system, user], [system, *turns]]
    for chat in chats:
        rendered, assembled = _without_bos(render(chat, True), bos), assemble(parts, chat)
        matches = rendered.endswith(assembled) if chat[0]["role"] != "system" else rendered == assembled
        if not matches:
            raise InputError(
                f"chat template: the PromptTemplate parts give {assembled!r} for a chat the template renders as "
                f"{rendered!r}"
            )


def hf_renderer(folder: Path) -> tuple[Render, str, tuple[str, ...]]:
    """The Hugging Face rendering of the chat template saved in `folder`, its BOS text and its special tokens.

    PreTrainedTokenizerFast, not AutoTokenizer: the rendering (apply_chat_template) and the special tokens saved in
    tokenizer_config.json are the same for every family's class, and AutoTokenizer's model registry imports torch,
    3 of the stage's 4 seconds."""
    from jinja2 import TemplateError
    from transformers import PreTrainedTokenizerFast

    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    except TemplateError as err:
        raise InputError(f"{folder}: the chat template does not compile: {err}") from None

    def render(messages: list[dict], add_generation_prompt: bool) -> str:
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        except TemplateError as err:  # syntax errors and the template's own raise_exception(...)
            roles = ", ".join(m["role"] for m in messages)
            raise InputError(f"{folder}: the chat template fails on a chat of {roles}: {err}") from None

    return render, tokenizer.bos_token or "", tuple(tokenizer.all_special_tokens)


def inference_model(name: str, folder: Path, instruction: str) -> dict:
    render, bos, ends = hf_renderer(folder)
    return {"Name": name, "PromptTemplate": prompt_template(render, instruction, bos, ends)}


def build_package(out: Path, export_dir: Path, name: str, version: int, task, card: str) -> dict:
    """The Foundry Local model folder `out`: the export's genai files, inference_model.json, task.json, the model
    card as README.md, then manifest.json over all of them; returns the manifest."""
    from slmops.onnx.export import copy_genai_files

    copy_genai_files(export_dir, out)
    write_json(out / "inference_model.json", inference_model(name, out, task.instruction))
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
