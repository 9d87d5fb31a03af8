"""Read params.yaml the way DVC reads it, and validate it against the typed sections of slmops.core.config.

DVC parses params.yaml with ruamel.yaml's YAML 1.2 loader (dvc/utils/serialize/_yaml.py): `5e-3` is a
number there (a string for PyYAML's YAML 1.1), so the pipeline uses the same loader and never disagrees
with `dvc params diff`. A value YAML reads as a date (unquoted 2024-10-21) is refused: DVC cannot diff it.
"""

from __future__ import annotations

import datetime
import io
import json
import re
import typing
from pathlib import Path

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from slmops.core.config import Params
from slmops.core.errors import InputError

# Keys whose value must name an existing folder (True) or file (False), relative to the working directory.
PATH_KEYS = {"task.dir": True, "data.labelled": False, "data.prompts": False, "data.eval": False}


def read_yaml(text: str, source: str):
    """The YAML 1.2 document in `text` as plain dicts, lists and scalars; InputError naming `source` and the line."""
    try:
        stream = io.StringIO(text)
        stream.name = source  # ruamel names the stream in its errors ("<unicode string>" for a str)
        return YAML(typ="safe", pure=True).load(stream)
    except YAMLError as err:
        # ruamel ends a duplicate-key error with how to turn the check off, which is not the user's to do
        message = str(err).split("\nTo suppress this check", 1)[0].rstrip()
        raise InputError(f"{source}: not valid YAML: {message}") from None


def _dates(tree, path: str = "") -> list[str]:
    """Every value YAML turned into a date or timestamp, with its dotted key."""
    if isinstance(tree, dict):
        return [found for key, value in tree.items() for found in _dates(value, f"{path}{key}.")]
    if isinstance(tree, list):
        return [found for i, value in enumerate(tree) for found in _dates(value, f"{path}{i}.")]
    if isinstance(tree, datetime.date):
        return [f"{path.rstrip('.')}: {tree.isoformat()} is read by YAML as a date; quote it: '{tree.isoformat()}'"]
    return []


def _section(annotation) -> type[BaseModel] | None:
    """The section model a field holds: the model itself, or the value model of a dict of them (gates)."""
    if typing.get_origin(annotation) is dict:
        annotation = typing.get_args(annotation)[1]
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The section model at the dotted path `loc` (None past a leaf or an unknown key)."""
    model, in_dict = Params, False
    for part in loc:
        if in_dict:  # a key of a dict of sections (a gate's metric name)
            in_dict = False
            continue
        info = model.model_fields.get(part) if isinstance(part, str) else None
        if info is None or _section(info.annotation) is None:
            return None
        in_dict = typing.get_origin(info.annotation) is dict
        model = _section(info.annotation)
    return None if in_dict else model


def _field(loc: tuple):
    holder = _model_at(loc[:-1]) if loc else None
    return holder.model_fields.get(loc[-1]) if holder is not None and isinstance(loc[-1], str) else None


def _shown(value) -> str:
    """A value as YAML writes it (null, true, 'text'), or its kind for a mapping or list."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)


def _describe(error: dict) -> str:
    loc = tuple(p for p in error["loc"] if p != "[key]")
    where = ".".join(map(str, loc)) or "(top level)"
    if error["type"] == "extra_forbidden" or "[key]" in error["loc"]:  # an unknown key, or an unknown dict key
        holder = _model_at(loc[:-1])
        info = _field(loc[:-1]) if holder is None else None
        keys = holder.model_fields if holder else typing.get_args(typing.get_args(info.annotation)[0]) if info else ()
        return f"unknown key {where}; allowed here: {', '.join(sorted(keys)) or 'none'}"
    section = _model_at(loc)
    if error["type"] == "missing":
        needs = f"; it holds {', '.join(section.model_fields)}" if section else ""
        return f"{where}: missing (params.yaml holds every key{needs}; see slmops/core/params.schema.json)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "model_type" or error["type"] == "dict_type":
        message = f"expected a mapping of keys{' (' + ', '.join(section.model_fields) + ')' if section else ''}"
    if error["type"] == "value_error" and re.match(r"^[\w.]+: ", message):  # a cross-field check names its key
        key, message = message.split(": ", 1)
        loc, where = (*loc, *key.split(".")), f"{where}.{key}"
    info = _field(loc)
    hint = f" ({info.description})" if info is not None and info.description else ""
    if error["type"].endswith(("_type", "_parsing")) or error["type"] in ("literal_error", "enum"):
        return f"{where}: {_shown(error['input'])}: {message}{hint}"
    return f"{where}: {message}{hint}"


def parse_params(text: str, source: str = "params.yaml", check_paths: bool = True) -> Params:
    """The validated params in the YAML `text`. InputError lists every problem, each naming its dotted key path.

    check_paths=False skips the files named in PATH_KEYS (params read at another git revision)."""
    return validate_tree(read_yaml(text, source), source, check_paths)


def _path_problems(tree: dict) -> list[str]:
    """Each path key whose value is not an existing folder (task.dir, holding task.yaml) or file (data.*)."""
    problems = []
    for key, folder in PATH_KEYS.items():
        section, name = key.split(".")
        value = (tree.get(section) or {}).get(name) if isinstance(tree.get(section), dict) else None
        if not isinstance(value, str):
            continue  # a wrong type is reported by the validation
        path = Path(value)
        try:
            if not value.strip() or not path.exists():
                problems.append(f"{key}: '{value}' does not exist")
            elif folder and not (path / "task.yaml").is_file():
                problems.append(f"{key}: '{value}' is not a task folder (no task.yaml in it)")
            elif not folder and not path.is_file():
                problems.append(f"{key}: '{value}' is not a file")
        except (OSError, ValueError) as err:  # a name too long for the file system, a NUL byte
            problems.append(f"{key}: {value[:60]!r}{'...' if len(value) > 60 else ''} is not a usable path: {err}")
    return problems


def _model_context(model: str | None, shape, shape_key: str, check_paths: bool) -> tuple[int, str] | None:
    """(context length in tokens, where it comes from) of a local model: built from `shape` (model None) or a local
    folder's config.json, read as the onnxruntime-genai builder reads it (seq_length, else max_position_embeddings).
    None when unknown here: a hub id, or check_paths off."""
    if model is None:
        return shape.max_position_embeddings, f"{shape_key}.max_position_embeddings"
    config = Path(model) / "config.json"
    if not check_paths or not config.is_file():
        return None
    try:
        values = json.loads(config.read_text())
        context = values.get("seq_length") or values.get("max_position_embeddings")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None  # not this check's to report: loading the model names the broken file
    return (context, f"{config}") if isinstance(context, int) else None


def _budget_problems(params: Params, check_paths: bool) -> list[str]:
    """Each output budget (most new tokens) that leaves no room for a prompt in the context of a model spending it."""
    teacher = params.teacher
    contexts = {
        "student": _model_context(params.student.model, params.student.config, "student.config", check_paths),
        "teacher": None  # an endpoint checks its own context
        if teacher.backend == "openai"
        else _model_context(
            teacher.model if teacher.backend == "hf" else None,
            teacher.bootstrap.config,
            "teacher.bootstrap.config",
            check_paths,
        ),
    }
    budgets = [
        ("synthesize.generation.max_new_tokens", params.synthesize.generation.max_new_tokens, "teacher"),
        ("evaluate.generation.max_new_tokens", params.evaluate.generation.max_new_tokens, "teacher"),
        ("evaluate.generation.max_new_tokens", params.evaluate.generation.max_new_tokens, "student"),
        ("package.verify.max_output_tokens", params.package.verify.max_output_tokens, "student"),
    ]
    if params.synthesize.mode == "generate_and_label":
        budgets.append(("synthesize.generate.max_tokens", params.synthesize.generate.max_tokens, "teacher"))
    return [
        f"{key}: {budget} tokens cannot fit the {role}'s context of {contexts[role][0]} tokens "
        f"({contexts[role][1]}) with a prompt (at most {contexts[role][0] - 1}, less the prompt)"
        for key, budget, role in budgets
        if contexts[role] is not None and budget >= contexts[role][0]
    ]


def validate_tree(tree, source: str = "params.yaml", check_paths: bool = True) -> Params:
    """`tree` (params.yaml as read by read_yaml) validated into Params; InputError lists every problem."""
    if not isinstance(tree, dict):
        raise InputError(f"{source}: expected a mapping of stage sections at the top level")
    problems = _dates(tree)
    try:
        params = Params.model_validate(tree)
    except ValidationError as err:
        dated = {p.split(":")[0] for p in problems}
        problems += [_describe(e) for e in err.errors() if ".".join(map(str, e["loc"])) not in dated]
        params = None
    if check_paths:
        problems += _path_problems(tree)
    if params is not None:
        problems += _budget_problems(params, check_paths)
    if problems:
        raise InputError("invalid params\n  " + "\n  ".join(f"{source}: {p}" for p in problems))
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """The validated params of the file at `path` (relative paths inside it: to the working directory)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    return parse_params(text, str(path))
