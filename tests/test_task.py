import json
import sys

import pytest
from conftest import ROOT

from slmops.core.answers import parse_answer
from slmops.core.errors import InputError
from slmops.core.task import answer_key_pieces, load_task, read_labelled, render_answer, score

GOLD = {
    "intent": "refund_request",
    "order_id": "ORD-48",
    "product": "headphones",
    "urgency": "high",
    "sentiment": "negative",
}


def test_score_against_hand_computed_figures(task):
    labels = [GOLD, GOLD, GOLD, GOLD]
    predictions = [
        render_answer(GOLD),  # exact
        render_answer({**GOLD, "product": "HEADPHONES "}),  # exact: product is case-insensitive
        render_answer({**GOLD, "order_id": "ord-48", "urgency": "low"}),  # order_id is case-sensitive: 3/5 fields
        "not json",  # 0/5 fields
    ]
    figures = score(task, [parse_answer(task, p) for p in predictions], labels)
    assert figures["exact_match"] == 0.5
    assert figures["json_valid"] == 0.75
    assert figures["schema_valid"] == 0.25  # "HEADPHONES " is not in the enum, "ord-48" breaks the pattern
    assert figures["field_accuracy"] == {
        "intent": 0.75,
        "order_id": 0.5,
        "product": 0.75,
        "urgency": 0.5,
        "sentiment": 0.75,
    }
    assert figures["n"] == 4


def test_score_reads_answers_as_the_parser_does(task):
    answer = render_answer(GOLD)
    parsed = [
        parse_answer(task, f"<think>refund</think>\nSure:\n```json\n{answer}\n```"),  # exact
        parse_answer(task, answer, "length", max_tokens=64),  # cut: no answer, even though it parses
        parse_answer(task, None, "content_filter"),  # filtered: no answer
        parse_answer(task, render_answer({**GOLD, "urgency": "now"})),  # JSON, off-schema, 4/5 fields
    ]
    figures = score(task, parsed, [GOLD] * 4)
    assert figures["exact_match"] == 0.25 and figures["json_valid"] == 0.5 and figures["schema_valid"] == 0.25
    assert figures["field_accuracy"]["urgency"] == 0.25 and figures["field_accuracy"]["intent"] == 0.5


def test_score_rejects_mismatched_lengths(task):
    with pytest.raises(ValueError, match="2 predictions for 1 labels"):
        score(task, [parse_answer(task, "{}")] * 2, [GOLD])


def test_labelled_file_with_a_bad_label_names_the_record(task, tmp_path):
    path = tmp_path / "labelled.jsonl"
    path.write_text(
        json.dumps({"id": "a", "message": "hi", "label": GOLD})
        + "\n"
        + json.dumps({"id": "b", "message": "hi", "label": {**GOLD, "urgency": "soon"}})
        + "\n"
    )
    with pytest.raises(InputError, match=r"record 2 \(id b\): label urgency: 'soon' is not one of"):
        read_labelled(path, task)


def test_missing_task_spec_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="task spec not found"):
        load_task(tmp_path)


SPEC = (ROOT / "data/task/task.yaml").read_text()
SCHEMA = (ROOT / "data/task/answer.schema.json").read_text()


@pytest.mark.parametrize(
    "file, content, message",
    [
        ("task.yaml", "name: [x\n", 'task.yaml: not valid YAML: while parsing a flow sequence\n  in "'),
        ("task.yaml", b"\xff\xfename: x\n", "task.yaml: not UTF-8 text"),
        ("task.yaml", "- name\n- scoring\n", "task.yaml: expected a mapping of keys (name, description, instruction"),
        ("task.yaml", "name instruction answer_schema scoring\n", "task.yaml: expected a mapping of keys"),
        ("task.yaml", SPEC.replace("name: support-triage\n", ""), "task.yaml: name: Field required"),
        ("task.yaml", SPEC.split("scoring:")[0] + "scoring: [intent]\n", "task.yaml: scoring: expected a mapping"),
        ("task.yaml", SPEC.split("scoring:")[0] + "scoring: {}\n", "task.yaml: scoring.fields: Field required"),
        ("task.yaml", SPEC.replace("instruction: >-", "instruction: 5\nnote: >-"), "instruction: Input should be"),
        ("task.yaml", SPEC.replace("instruction: >-", "instruction: 5\nnote: >-"), "note: Extra inputs are not"),
        ("task.yaml", SPEC.replace("sentiment]\n  #", "mood]\n  #"), "scoring.fields: mood not among the properties"),
        (
            "task.yaml",
            SPEC.rsplit("sentiment]", 1)[0] + "tone]\n",
            "case_insensitive: tone not among",
        ),
        ("task.yaml", SPEC.replace("name: support-triage", "name: '   '"), "name: String should have at least 1"),
        ("task.yaml", SPEC + "name: again\n", 'found duplicate key "name"'),
        ("task.yaml", SPEC.replace("sentiment]\n  #", "sentiment, intent]\n  #"), "fields: intent listed more than"),
        ("task.yaml", SPEC.replace(": answer.schema.json", ": ../other.schema.json"), "is outside the task folder"),
        (
            "task.yaml",
            SPEC.replace(": answer.schema.json", ": /etc/hostname"),
            "answer_schema: '/etc/hostname' is outs",
        ),
        ("task.yaml", SPEC.replace(": answer.schema.json", ": ."), "answer_schema: '" + "{task}' is a folder"),
        ("task.yaml", SPEC.replace(": answer.schema.json", ": " + "a" * 300), "answer_schema: 'aaaa"),
        ("answer.schema.json", "{bad", "answer.schema.json: not valid JSON: Expecting property name"),
        ("answer.schema.json", '{"type": 5}', "answer.schema.json: not a valid JSON Schema at type: 5 is not valid"),
        ("answer.schema.json", "true", "must be an object schema with top-level `properties`"),
        ("answer.schema.json", "{}", "must be an object schema with top-level `properties`"),
        ("answer.schema.json", '{"not": ' * 5000 + "{}" + "}" * 5000, "answer.schema.json: nested too deeply"),
        (
            "answer.schema.json",
            SCHEMA.replace('"urgency": {', '"urgency": {"$ref": "#/$defs/urgency", '),
            "$ref '#/$defs/urgency' does not resolve in the schema",
        ),
        (
            "answer.schema.json",
            SCHEMA.replace('"urgency": {', '"urgency": {"$ref": "https://example.com/u.json", '),
            "$ref 'https://example.com/u.json' does not resolve",
        ),
    ],
)
def test_a_malformed_task_names_the_file_and_key(tmp_path, file, content, message):
    task = tmp_path / "task"
    task.mkdir()
    (task / "task.yaml").write_text(SPEC)
    (task / "answer.schema.json").write_text(SCHEMA)
    (tmp_path / "other.schema.json").write_text(SCHEMA)
    (task / file).write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError) as err:
        load_task(task)
    assert message.replace("{task}", str(task / ".")) in str(err.value) and str(task / file) in str(err.value)
    assert "<unicode string>" not in str(err.value) and "To suppress" not in str(err.value)


def test_a_task_written_with_a_byte_order_mark_loads(tmp_path):
    (tmp_path / "task.yaml").write_bytes(b"\xef\xbb\xbf" + SPEC.encode())
    (tmp_path / "answer.schema.json").write_bytes(b"\xef\xbb\xbf" + SCHEMA.encode())
    assert load_task(tmp_path).fields == load_task(ROOT / "data/task").fields


MEETINGS = ROOT / "tests/data/tasks/meetings"
MEETING = {"action": "book", "room": "Orion", "day": "Monday", "attendees": 1, "invitees": ["Ana", "Ben"]}


def test_score_compares_integer_and_list_fields_by_type_and_order():
    meetings = load_task(MEETINGS)
    predictions = [
        render_answer({**MEETING, "invitees": ["ana", " Ben"]}),  # exact: invitees are case-insensitive, stripped
        render_answer({**MEETING, "attendees": True}),  # true is not 1: 4/5 fields
        render_answer({**MEETING, "attendees": "1"}),  # "1" is not 1: 4/5 fields
        render_answer({**MEETING, "invitees": ["Ben", "Ana"]}),  # the order is asked for: 4/5 fields
        render_answer({**MEETING, "invitees": []}),  # 4/5 fields
    ]
    figures = score(meetings, [parse_answer(meetings, p) for p in predictions], [MEETING] * 5)
    assert figures["exact_match"] == 0.2
    assert figures["schema_valid"] == 0.4  # "ana" and " Ben" are not in the enum; true and "1" are not integers
    assert figures["field_accuracy"] == {"action": 1.0, "room": 1.0, "day": 1.0, "attendees": 0.6, "invitees": 0.6}


def test_meetings_data_is_what_its_script_writes_and_fits_the_schema(tmp_path):
    sys.path.insert(0, str(MEETINGS.parent))
    try:
        import make_meetings
    finally:
        sys.path.remove(str(MEETINGS.parent))
    make_meetings.main(tmp_path)
    for name in ("labelled", "prompts", "eval"):
        assert (tmp_path / f"{name}.jsonl").read_text() == (MEETINGS / f"{name}.jsonl").read_text(), name
    meetings = load_task(MEETINGS)
    assert len(read_labelled(MEETINGS / "labelled.jsonl", meetings)) == 150
    assert len(read_labelled(MEETINGS / "eval.jsonl", meetings)) == 40


def test_answer_key_pieces_are_the_fixed_text_between_values_as_rendered():
    labels = [{"intent": "a", "order_id": None, "n": 3}, {"intent": "b", "order_id": "ORD-1", "n": 4}]
    pieces = answer_key_pieces(labels)
    assert pieces[:2] == ['{"intent": "', '{"intent": '] and pieces[-1] == '"}'
    assert len(pieces) == 2 + 4 + 4 + 1  # the first key after "{", the others after a string or another value
    for label, between in zip(labels, [['", "order_id": ', ', "n": '], ['", "order_id": "', '", "n": ']], strict=True):
        rendered = render_answer(label)
        assert all(piece in pieces and piece in rendered for piece in between)
