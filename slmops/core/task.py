"""The task spec (data/task/): system prompt, answer JSON Schema, parsing and scoring of answers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from slmops.core.errors import InputError, validation_problems

if TYPE_CHECKING:
    from slmops.core.answers import Parsed


@dataclass(frozen=True)
class Task:
    name: str
    instruction: str
    schema: dict
    fields: tuple[str, ...]
    case_insensitive: frozenset[str]

    def messages(self, user_message: str, answer: str | None = None) -> list[dict]:
        """The chat for one example: system instruction, customer message, and the answer if given."""
        chat = [{"role": "system", "content": self.instruction}, {"role": "user", "content": user_message}]
        if answer is not None:
            chat.append({"role": "assistant", "content": answer})
        return chat


Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class Scoring(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    fields: list[Text] = Field(min_length=1, description="Answer fields exact match compares (schema properties).")
    case_insensitive: list[Text] = Field(default=[], description="Fields among `fields` compared ignoring case.")

    @field_validator("fields", "case_insensitive")
    @classmethod
    def _once_each(cls, names: list[str]) -> list[str]:
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"{', '.join(twice)} listed more than once")
        return names


class TaskSpec(BaseModel):
    """task.yaml's keys (README: "A new task"); pydantic names every wrong one."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Text
    description: str | None = None
    instruction: Text = Field(description="The system prompt every example is asked with.")
    answer_schema: Text = Field(description="The answer's JSON Schema file, inside the task folder.")
    scoring: Scoring


def _spec(spec_path: Path) -> TaskSpec:
    from slmops.core.params import read_yaml  # YAML 1.2 as for params.yaml: duplicate keys refused, lines named

    try:
        tree = read_yaml(spec_path.read_bytes().decode("utf-8-sig"), str(spec_path))
    except UnicodeDecodeError:
        raise InputError(f"{spec_path}: not UTF-8 text") from None
    if not isinstance(tree, dict):
        raise InputError(f"{spec_path}: expected a mapping of keys ({', '.join(TaskSpec.model_fields)})")
    try:
        return TaskSpec.model_validate(tree)
    except ValidationError as err:
        raise InputError("invalid task spec\n  " + "\n  ".join(validation_problems(err, spec_path))) from None


def _schema_path(spec_path: Path, name: str) -> Path:
    """The answer_schema file, which must lie inside the task folder: dvc.yaml tracks that folder, so a schema
    elsewhere could change without rerunning the stages."""
    folder = spec_path.parent
    path = folder / name
    try:
        inside = path.resolve().is_relative_to(folder.resolve())
        kind = "a file" if path.is_file() else "a folder" if path.is_dir() else None
    except (OSError, ValueError) as err:  # a name too long for the file system, a NUL byte
        raise InputError(f"{spec_path}: answer_schema: {name[:60]!r} is not a usable path: {err}") from None
    if not inside:
        raise InputError(f"{spec_path}: answer_schema: '{name}' is outside the task folder {folder}")
    if kind != "a file":
        raise InputError(f"{spec_path}: answer_schema: '{path}' {'is a folder' if kind else 'not found'}")
    return path


def _schema(schema_path: Path) -> dict:
    """The answer JSON Schema: an object schema whose $refs all resolve locally. InputError naming the file."""
    try:
        schema = json.loads(schema_path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise InputError(f"{schema_path}: not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{schema_path}: not valid JSON: {err}") from None
    except RecursionError:
        raise InputError(f"{schema_path}: nested too deeply to read") from None
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as err:
        at = "/".join(map(str, err.absolute_path)) or "the top level"
        raise InputError(f"{schema_path}: not a valid JSON Schema at {at}: {err.message}") from None
    except RecursionError:
        raise InputError(f"{schema_path}: nested too deeply to check") from None
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        raise InputError(f"{schema_path}: the answer schema must be an object schema with top-level `properties`")
    _check_refs(schema, schema_path)
    return schema


def _check_refs(schema: dict, schema_path: Path) -> None:
    """InputError for a $ref that does not resolve inside the schema (validation would fail on it only when a
    stage checks its first answer; nothing is fetched over the network)."""
    from referencing import Registry
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    resolver = Registry().with_resource("", DRAFT202012.create_resource(schema)).resolver()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                try:
                    resolver.lookup(node["$ref"])
                except Unresolvable:
                    raise InputError(f"{schema_path}: $ref '{node['$ref']}' does not resolve in the schema") from None
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def load_task(task_dir: str | Path) -> Task:
    """The task in `task_dir` (task.yaml and the answer JSON Schema it names). InputError naming the file and key
    for a missing or malformed file, an invalid schema, or a scoring field the schema does not define."""
    task_dir = Path(task_dir)
    spec_path = task_dir / "task.yaml"
    if not spec_path.is_file():
        raise InputError(f"{spec_path}: task spec not found")
    spec = _spec(spec_path)
    schema_path = _schema_path(spec_path, spec.answer_schema)
    schema = _schema(schema_path)
    scoring = spec.scoring
    if unknown := [f for f in scoring.fields if f not in schema["properties"]]:
        raise InputError(f"{spec_path}: scoring.fields: {', '.join(unknown)} not among the properties of {schema_path}")
    if unscored := [f for f in scoring.case_insensitive if f not in scoring.fields]:
        raise InputError(f"{spec_path}: scoring.case_insensitive: {', '.join(unscored)} not among scoring.fields")
    return Task(
        name=spec.name,
        instruction=" ".join(spec.instruction.split()),
        schema=schema,
        fields=tuple(scoring.fields),
        case_insensitive=frozenset(scoring.case_insensitive),
    )


def render_answer(label: dict) -> str:
    """The canonical answer text a model is trained to write for a label."""
    return json.dumps(label, ensure_ascii=False)


def answer_key_pieces(labels: list[dict]) -> list[str]:
    """The fixed text between an answer's values, one piece per key and what precedes it, as render_answer writes
    it: '{"intent": "', '", "order_id": ', ', "product": "', ..., and '"}' (for a model's tokenizer: one token each).
    """
    pieces = {}
    for label in labels:
        for i, key in enumerate(label):
            for before in ["{"] if i == 0 else ['", ', ", "]:
                for after in (' "', " "):
                    pieces[before + json.dumps(key, ensure_ascii=False) + ":" + after] = None
    pieces['"}'] = None
    return list(pieces)


def schema_error(task: Task, value) -> str | None:
    """The first way `value` breaks the answer schema, as 'path: message'; None when it conforms."""
    errors = sorted(jsonschema.Draft202012Validator(task.schema).iter_errors(value), key=lambda e: list(e.path))
    if not errors:
        return None
    where = "/".join(str(p) for p in errors[0].path) or "(root)"
    return f"{where}: {errors[0].message}"


def _normalise(task: Task, field: str, value):
    """A value as scored: strings stripped (lower-cased for case-insensitive fields), list items alike and in
    order; a boolean kept apart from the numbers it equals in Python (true is not 1)."""
    if isinstance(value, str):
        value = value.strip()
        return value.lower() if field in task.case_insensitive else value
    if isinstance(value, list):
        return [_normalise(task, field, item) for item in value]
    if isinstance(value, bool):
        return ("bool", value)
    return value


def score(task: Task, answers: list[Parsed], labels: list[dict]) -> dict:
    """Accuracy figures (fractions in [0, 1]) of answers read by slmops.core.answers.parse_answer against gold
    labels: json_valid counts answers holding a JSON value, schema_valid those whose value is a valid answer;
    fields are compared on whatever object was found, valid or not."""
    if len(answers) != len(labels):
        raise ValueError(f"{len(answers)} predictions for {len(labels)} labels")
    n = len(labels)
    field_hits = dict.fromkeys(task.fields, 0)
    exact = 0
    for answer, gold in zip(answers, labels, strict=True):
        parsed = answer.value if answer.found and isinstance(answer.value, dict) else {}
        hits = {
            f: _normalise(task, f, parsed.get(f, "<missing>")) == _normalise(task, f, gold.get(f)) for f in task.fields
        }
        exact += all(hits.values())
        for f, hit in hits.items():
            field_hits[f] += hit
    return {
        "exact_match": exact / n,
        "json_valid": sum(a.found for a in answers) / n,
        "schema_valid": sum(a.label is not None for a in answers) / n,
        "field_accuracy": {f: hits / n for f, hits in field_hits.items()},
        "n": n,
    }


def read_labelled(path: str | Path, task: Task) -> list[dict]:
    """Labelled rows {id, message, label}; a label the answer schema rejects is named by file and line."""
    from slmops.core.files import read_jsonl

    rows = read_jsonl(path, required=("message", "label"))
    for number, row in enumerate(rows, start=1):
        problem = schema_error(task, row["label"])
        if problem:
            raise InputError(f"{path}: record {number} (id {row.get('id', '?')}): label {problem}")
    return rows
