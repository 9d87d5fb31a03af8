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
