"""Load params.yaml and validate it against params.schema.json before any stage does work."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

from slmops.core.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "params.schema.json"
# Keys whose value must name an existing file or folder, relative to the working directory.
PATH_KEYS = ("task.dir", "data.labelled", "data.prompts", "data.eval")


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    where = _dotted(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        keys = ", ".join(f"{where}.{k}" if error.absolute_path else k for k in unknown)
        return f"unknown key {keys}; allowed here: {allowed}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    description = error.schema.get("description")
    hint = f" ({description})" if description else ""
    return f"{where}: {error.message}{hint}"


def validate(params: dict, source: str = "params.yaml", schema_path: Path = SCHEMA_PATH,
             check_paths: bool = True) -> list[str]:
    """Every problem with `params`, each naming its dotted key path; empty when valid.

    check_paths=False skips the files named in PATH_KEYS (params read at another git revision)."""
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = [f"{source}: {_describe(e)}" for e in sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))]
    if problems or not check_paths:
        return problems
    for key in PATH_KEYS:
        value = params
        for part in key.split("."):
            value = value[part]
        if not Path(value).exists():
            problems.append(f"{source}: {key}: '{value}' does not exist")
    return problems


def load_params(path: str | Path = "params.yaml") -> dict:
    """The validated params; raises InputError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(params, dict):
        raise InputError(f"{path}: expected a mapping of stage sections at the top level")
    beside = path.parent / "params.schema.json"  # a project's own schema wins over the installed one
    problems = validate(params, str(path), beside if beside.is_file() else SCHEMA_PATH)
    if problems:
        raise InputError("invalid params\n  " + "\n  ".join(problems))
    return params
