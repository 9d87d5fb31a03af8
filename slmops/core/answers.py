"""One parser for every model's answer (local and hf teachers, endpoint teachers, evaluate): the JSON value it
holds, or exactly why it holds none.

    parse_answer(task, content, finish_reason="stop", reasoning_content=None, max_tokens=None) -> Parsed

In order:
1. `finish_reason` must be "stop" (OpenAI's field; a local model reports "stop" when it wrote its end token,
   "length" otherwise). "content_filter" (Azure withheld or flagged the answer, with or without content),
   "length" (cut at `max_tokens`) and any other value are never an answer, even when the text parses.
2. Reasoning is dropped: everything up to the last closing tag of a reasoning block (`</think>`, `</thinking>`,
   `[/THINK]`; the opening tag may be in the prompt, as chat templates of reasoning models put it there), and
   the reply's `reasoning_content` as a whole. A reasoning block left open is its own reason.
3. The answer is the first JSON value that `json.JSONDecoder.raw_decode` reads at the start of the text, at the
   start of a ``` fence's body, or at a `{` inside prose; text after it is ignored. A hand-written scan of those
   starting points, because a regular expression cannot match nested braces and raw_decode already reports
   where the JSON ends.
4. The value must satisfy the task's answer schema; the reason names the path of the first error.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from slmops.core.task import Task, schema_error

REASONING_TAGS = (("<think>", "</think>"), ("<thinking>", "</thinking>"), ("[THINK]", "[/THINK]"))
_FENCE_BODY = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Parsed:
    """One answer as read: `value` is the JSON value found (when `found`); `reason` says why it is not a label
    (None: it is one) and `kind` names that reason in one word, for counts: content_filter, length,
    finish_reason, reasoning_open, empty, no_json, schema (and request_failed, which callers make for a request
    that got no reply)."""

    found: bool
    value: Any = None
    reason: str | None = None
    kind: str | None = None

    @property
    def label(self) -> dict | None:
        """The value when it is a valid answer (a schema-valid object from a finished answer), else None."""
        return self.value if self.reason is None else None


def _rejected(kind: str, reason: str) -> Parsed:
    return Parsed(found=False, reason=reason, kind=kind)


def strip_reasoning(text: str) -> tuple[str, bool]:
    """(the text after any reasoning block, whether a reasoning block is left open)."""
    for _, closing in REASONING_TAGS:
        if closing in text:
            text = text.rpartition(closing)[2]
    still_open = any(opening in text for opening, _ in REASONING_TAGS)
    return text.strip(), still_open


def visible_text(content: str | None, finish_reason: str | None = "stop") -> str | None:
    """What a reader of the answer sees: the content without reasoning (a block left open is cut off there);
    None when there is no content or a content filter withheld or flagged it."""
    if content is None or finish_reason == "content_filter":
        return None
    text, still_open = strip_reasoning(content)
    if still_open:
        text = min((text.split(opening)[0] for opening, _ in REASONING_TAGS), key=len).strip()
    return text


def _opens_json(text: str, at: int) -> bool:
    return at < len(text) and text[at] in "{["


def find_json(text: str) -> tuple[bool, Any, str | None]:
    """(found, value, why not): the first JSON value read at the start of `text`, of a ``` fence's body, or at a
    `{` inside it. `why not` quotes the decoder's error at the first place that looked like JSON."""
    starts = [0] if _opens_json(text, 0) else []
    starts += [m.end() for m in _FENCE_BODY.finditer(text) if _opens_json(text, m.end())]
    starts += [m.start() for m in re.finditer(r"\{", text)]
    first_error = None
    for start in dict.fromkeys(starts):  # in order, each place once
        try:
            value, _ = _DECODER.raw_decode(text, start)
        except json.JSONDecodeError as err:
            first_error = first_error or err
            continue
        return True, value, None
    if first_error is None:
        return False, None, "no JSON found"
    return False, None, f"no JSON found ({first_error.msg} at line {first_error.lineno} column {first_error.colno})"


def _finish_problem(finish_reason: str | None, max_tokens: int | None, reasoning_open: bool) -> Parsed | None:
    if finish_reason == "stop":
        return None
    if finish_reason == "content_filter":
        return _rejected(
            "content_filter", "content filter: the endpoint filtered this answer (finish_reason content_filter)"
        )
    if finish_reason == "length":
        limit = f"{max_tokens} tokens" if max_tokens is not None else "the token limit"
        while_reasoning = " while reasoning (a <think> block left open)" if reasoning_open else ""
        return _rejected("length", f"cut at {limit}{while_reasoning} (finish_reason length)")
    return _rejected("finish_reason", f"not a finished answer (finish_reason {finish_reason})")


def local_finish_reason(finished: bool) -> str:
    """The finish_reason of a local generation: "stop" when the model wrote its end token, else "length"."""
    return "stop" if finished else "length"


def parse_answer(
    task: Task,
    content: str | None,
    finish_reason: str | None = "stop",
    reasoning_content: str | None = None,
    max_tokens: int | None = None,
) -> Parsed:
    """Read one answer (see the module docstring); never raises on a bad answer, it says why in `reason`.

    `content`: the answer text (None when an endpoint sent none); `finish_reason`: why generation stopped;
    `reasoning_content`: an endpoint's separate reasoning text, never part of the answer; `max_tokens`: the
    limit the answer was generated under, for the "cut at" reason."""
    text, reasoning_open = strip_reasoning(content) if content is not None else ("", False)
    problem = _finish_problem(finish_reason, max_tokens, reasoning_open)
    if problem is not None:
        return problem
    if content is None:
        aside = f" (reasoning_content holds {len(reasoning_content)} characters)" if reasoning_content else ""
        return _rejected("empty", f"no answer: content is null{aside}")
    if reasoning_open:
        return _rejected("reasoning_open", "no answer: a reasoning block (<think>) was never closed")
    if not text:
        after = " after the reasoning" if text != content.strip() else ""
        return _rejected("empty", f"no answer: empty content{after}")
    found, value, why_not = find_json(text)
    if not found:
        return _rejected("no_json", why_not)
    problem = schema_error(task, value)
    if problem:
        return Parsed(found=True, value=value, reason=f"schema: {problem}", kind="schema")
    return Parsed(found=True, value=value)
