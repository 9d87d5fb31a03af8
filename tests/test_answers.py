"""The one answer parser: every answer shape real teachers and models send, with the reason it records."""

import json

import pytest

from slmops.core.answers import find_json, parse_answer, strip_reasoning, visible_text
from slmops.core.task import render_answer

GOLD = {
    "intent": "refund_request",
    "order_id": "ORD-48",
    "product": "headphones",
    "urgency": "high",
    "sentiment": "negative",
}
ANSWER = render_answer(GOLD)
ACCEPTED = None  # the reason of an accepted answer

# (case, content, finish_reason, reasoning_content, expected kind, expected reason: exact, or a prefix ending "...")
CASES = [
    ("bare JSON", ANSWER, "stop", None, None, ACCEPTED),
    ("think block before the JSON", f"<think>\nRefund, angry.\n</think>\n\n{ANSWER}", "stop", None, None, ACCEPTED),
    ("think block opened by the chat template", f"Refund, angry.\n</think>\n{ANSWER}", "stop", None, None, ACCEPTED),
    ("two reasoning blocks", f"<think>a</think><thinking>b</thinking> {ANSWER}", "stop", None, None, ACCEPTED),
    ("[THINK] block", f"[THINK]refund[/THINK]{ANSWER}", "stop", None, None, ACCEPTED),
    ("reasoning_content beside the answer", ANSWER, "stop", "The customer wants a refund.", None, ACCEPTED),
    (
        "prose before a fenced json block, text after the fence",
        f"Here is the classification:\n\n```json\n{ANSWER}\n```\n\nLet me know if you need more.",
        "stop",
        None,
        None,
        ACCEPTED,
    ),
    ("a fence without a language", f"```\n{ANSWER}\n```", "stop", None, None, ACCEPTED),
    ("text after bare JSON", f"{ANSWER}\n\nThe urgency follows from the tone.", "stop", None, None, ACCEPTED),
    ("prose with braces before the JSON", f"Format {{intent, ...}}: {ANSWER}", "stop", None, None, ACCEPTED),
    (
        "content filter, content null",
        None,
        "content_filter",
        None,
        "content_filter",
        "content filter: the endpoint filtered this answer (finish_reason content_filter)",
    ),
    (
        "content filter with a full answer",
        ANSWER,
        "content_filter",
        None,
        "content_filter",
        "content filter: the endpoint filtered this answer (finish_reason content_filter)",
    ),
    ("cut at the token limit", ANSWER[:40], "length", None, "length", "cut at 64 tokens (finish_reason length)"),
    (
        "cut, yet the JSON is whole",
        f"{ANSWER} and then",
        "length",
        None,
        "length",
        "cut at 64 tokens (finish_reason length)",
    ),
    (
        "cut while reasoning",
        "<think>\nThe customer is angry and",
        "length",
        None,
        "length",
        "cut at 64 tokens while reasoning (a <think> block left open) (finish_reason length)",
    ),
    (
        "a think block never closed",
        "<think>\nThe customer is angry",
        "stop",
        None,
        "reasoning_open",
        "no answer: a reasoning block (<think>) was never closed",
    ),
    (
        "content null, the text in reasoning_content",
        None,
        "stop",
        "Let me think. The answer is {}",
        "empty",
        "no answer: content is null (reasoning_content holds 30 characters)",
    ),
    ("content null, nothing else", None, "stop", None, "empty", "no answer: content is null"),
    ("empty content", "  \n", "stop", None, "empty", "no answer: empty content"),
    (
        "nothing after the reasoning",
        "<think>refund</think>\n",
        "stop",
        None,
        "empty",
        "no answer: empty content after the reasoning",
    ),
    ("tool call", None, "tool_calls", None, "finish_reason", "not a finished answer (finish_reason tool_calls)"),
    ("no finish_reason", ANSWER, None, None, "finish_reason", "not a finished answer (finish_reason None)"),
    ("no JSON at all", "I cannot help with that.", "stop", None, "no_json", "no JSON found"),
    (
        "broken JSON",
        '{"intent": " " "sentiment": "positive"}',
        "stop",
        None,
        "no_json",
        "no JSON found (Expecting ',' delimiter at line 1 column 16)",
    ),
    ("unclosed object", '{"intent": "refund_request"', "stop", None, "no_json", "no JSON found (Expecting ..."),
    (
        "schema error with its path",
        json.dumps({**GOLD, "urgency": "now"}),
        "stop",
        None,
        "schema",
        "schema: urgency: 'now' is not one of ...",
    ),
    (
        "schema error inside a fence",
        f"```json\n{json.dumps({**GOLD, 'order_id': '48'})}\n```",
        "stop",
        None,
        "schema",
        "schema: order_id: '48' does not match ...",
    ),
    ("missing field", json.dumps({"intent": "refund_request"}), "stop", None, "schema", "schema: (root): ..."),
    ("a list, not an object", "[1, 2]", "stop", None, "schema", "schema: (root): [1, 2] is not of type 'object'"),
]


@pytest.mark.parametrize(
    "content, finish_reason, reasoning, kind, reason", [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_each_answer_is_read_with_its_reason(task, content, finish_reason, reasoning, kind, reason):
    parsed = parse_answer(task, content, finish_reason, reasoning, max_tokens=64)
    assert parsed.kind == kind
    if reason is ACCEPTED:
        assert parsed.reason is None and parsed.label == GOLD and parsed.found
    elif reason.endswith("..."):
        assert parsed.reason.startswith(reason[:-3]) and parsed.label is None
    else:
        assert parsed.reason == reason and parsed.label is None


def test_a_schema_error_keeps_the_value_found_and_unfinished_answers_keep_none(task):
    wrong = {**GOLD, "urgency": "now"}
    parsed = parse_answer(task, json.dumps(wrong))
    assert parsed.found and parsed.value == wrong and parsed.label is None
    cut = parse_answer(task, ANSWER, "length", max_tokens=8)
    assert not cut.found and cut.value is None and cut.reason == "cut at 8 tokens (finish_reason length)"


def test_find_json_takes_the_first_value_and_ignores_what_follows():
    assert find_json('{"a": 1} {"b": 2}') == (True, {"a": 1}, None)
    assert find_json('see {"a": {"b": [1, 2]}} then') == (True, {"a": {"b": [1, 2]}}, None)
    assert find_json("Answer:\n```json\n[1, 2]\n```") == (True, [1, 2], None)
    assert find_json("true, I can help") == (False, None, "no JSON found")  # only objects and arrays


def test_reasoning_is_dropped_and_an_open_block_is_reported():
    assert strip_reasoning("<think>x</think> y") == ("y", False)
    assert strip_reasoning("x</think>y") == ("y", False)
    assert strip_reasoning("<think>x") == ("<think>x", True)
    assert visible_text("<think>x</think>\n1. Where is my order?") == "1. Where is my order?"
    assert visible_text("1. Where is my order?\n<think>and") == "1. Where is my order?"
    assert visible_text("prompts", "content_filter") is None and visible_text(None) is None
