"""Turn a model's text into a validated value, or into issues located by JSON Pointer.

The steps, each recorded so a re-ask can say exactly what went wrong:

1. find the JSON: the whole text, else a fenced block, else the first ``{``/``[`` in prose
   (``extracted`` is then true);
2. parse it strictly: no ``NaN``/``Infinity``, no duplicate keys, bounded size and depth; a text
   that stops inside an object or string is reported as truncated;
3. check it: with the pydantic model when there is one (so ``field_validator`` and
   ``model_validator`` run), otherwise with the JSON Schema.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from guardrail import patterns
from guardrail.attempt import Issue
from guardrail.schema import Schema
from guardrail.schema_walk import join_pointer

#: Outputs longer than this many characters are refused unparsed.
MAX_CHARS = 1_000_000
#: Deeper nesting than this is refused before parsing (Python's parser would recurse).
MAX_DEPTH = 200
#: Longest integer literal read (Python's own limit on int-from-text conversion).
MAX_INT_DIGITS = 4300
#: Issue messages are clipped to this many characters (an enum of 100k values makes a 1 MB message).
MAX_MESSAGE_CHARS = 500

_FENCE = re.compile(r"```[ \t]*(?:json|JSON|jsonc)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


@dataclass
class Validation:
    """The verdict on one output: ``value`` when ``ok``, else ``issues`` (never both)."""

    value: Any = None
    issues: list[Issue] = field(default_factory=list)
    extracted: bool = False
    truncated: bool = False
    parsed: Any = None

    @property
    def ok(self) -> bool:
        return not self.issues


def validate(schema: Schema, text: str, context: Any = None) -> Validation:
    """Parse ``text`` and check it against ``schema``.

    ``context`` goes to the pydantic model's validators (``info.context``, e.g. the caller's input
    to check a value against); a JSON Schema ignores it.

    >>> s = Schema.load({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}})
    >>> validate(s, 'Sure! {"n": "5"}').issues[0].path
    '/n'
    """
    found = _parse(text)
    if found.issues:
        return found
    issues = check(schema, found.parsed, context)
    if issues:
        found.issues = issues
        return found
    found.value = _instantiate(schema, found.parsed, context)
    return found


def check(schema: Schema, data: Any, context: Any = None) -> list[Issue]:
    """Issues of already-parsed JSON data against the schema (empty when valid)."""
    if schema.model is not None:
        try:
            schema.model.model_validate(data, context=context)
        except ValidationError as exc:
            return _pydantic_issues(exc)
        return []
    return schema_issues(schema, data)


def schema_issues(schema: Schema, data: Any) -> list[Issue]:
    """JSON Schema violations of ``data``, deepest path first within the same location order.

    Regex matching is bounded in time (``guardrail.patterns``); a value too deep for the schema's
    recursion gives one ``depth`` issue instead of a ``RecursionError``.
    """
    try:
        with patterns.regex_budget():
            errors = sorted(schema.validator.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    except RecursionError:
        return [Issue(path="", message="the value nests too deeply to check against this schema", value=None,
                      keyword="depth")]
    return [_schema_issue(e) for e in errors]


def _schema_issue(error: Any) -> Issue:
    path = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        # Point at the missing member itself: "/customer/email", not its parent object.
        missing = [n for n in error.validator_value if n not in error.instance and repr(n) in error.message]
        if missing:
            return Issue(path=join_pointer([*path, missing[0]]), message="required property is missing",
                         value=None, keyword="required")
    message = error.message
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    return Issue(path=join_pointer(path), message=message, value=error.instance, keyword=str(error.validator))


def _instantiate(schema: Schema, data: Any, context: Any = None) -> Any:
    return schema.model.model_validate(data, context=context) if schema.model is not None else data


def _pydantic_issues(exc: ValidationError) -> list[Issue]:
    issues = []
    for error in exc.errors(include_url=False):
        message = error["msg"]
        if error["type"] == "missing":
            message = "required field is missing"
        issues.append(Issue(path=join_pointer(error["loc"]), message=message, value=error.get("input"),
                            keyword=error["type"]))
    return issues


# -- parsing ---------------------------------------------------------------------------------


class _DuplicateKey(ValueError):
    pass


class _BadConstant(ValueError):
    pass


class _BadNumber(ValueError):
    pass


def _no_duplicates(pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise _BadConstant(name)


def _read_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise _BadNumber(f"an integer of {len(text):,} digits is too long (limit {MAX_INT_DIGITS:,})")
    return int(text)


def _read_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _BadNumber(f"the number {_clip(text, 40)} is out of range (it would be infinite)")
    return value


_DECODING = {"object_pairs_hook": _no_duplicates, "parse_constant": _refuse_constant, "parse_int": _read_int,
             "parse_float": _read_float}


def _loads(text: str) -> Any:
    return json.loads(text, **_DECODING)  # type: ignore[arg-type]


def _parse(text: Any) -> Validation:
    if not isinstance(text, str):
        return _fail("", f"expected text from the model, got {type(text).__name__}", "json", text)
    if len(text) > MAX_CHARS:
        return _fail("", f"output is {len(text):,} characters, over the limit of {MAX_CHARS:,}", "size", None)
    stripped = text.strip()
    if not stripped:
        return _fail("", "output is empty; expected a JSON value", "json", text)
    candidates = list(_candidates(stripped))
    failures: list[Validation] = []
    for candidate, extracted in candidates:
        attempt = _parse_candidate(candidate)
        attempt.extracted = extracted
        if not attempt.issues:
            return attempt
        failures.append(attempt)
    # Report the most telling failure: a cut-off (the usual max_tokens end), else the JSON found
    # inside prose or a fence rather than the prose itself.
    truncated = [f for f in failures if f.truncated]
    if truncated:
        return truncated[0]
    if stripped[:1] in ("{", "[") and failures:
        return failures[0]
    if len(failures) > 1:
        return failures[1]
    return _fail("", "no JSON found in the output: reply with a JSON value only", "json", _clip(stripped))


def _candidates(text: str) -> Iterable[tuple[str, bool]]:
    """The whole text, then fenced blocks, then the span from the first bracket: the likely JSON."""
    yield text, False
    for match in _FENCE.finditer(text):
        yield match.group(1).strip(), True
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if starts:
        start = min(starts)
        decoder = json.JSONDecoder(**_DECODING)  # type: ignore[arg-type]
        try:
            _, end = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            yield text[start:], True
        else:
            if (start, end) != (0, len(text)):
                yield text[start:end], True


def _parse_candidate(text: str) -> Validation:
    depth = _max_depth(text)
    if depth > MAX_DEPTH:
        return _fail("", f"JSON nests {depth} levels deep, over the limit of {MAX_DEPTH}", "depth", None)
    try:
        return Validation(parsed=_loads(text))
    except _DuplicateKey as exc:
        return _fail("", f"duplicate key {exc.args[0]!r} in an object", "json", _clip(text))
    except _BadConstant as exc:
        return _fail("", f"{exc.args[0]} is not valid JSON; use null or a number", "json", _clip(text))
    except _BadNumber as exc:
        return _fail("", str(exc), "json", _clip(text))
    except json.JSONDecodeError as exc:
        if _is_truncated(text):
            result = _fail(
                "", f"output ends before the JSON is complete (cut off after {len(text)} characters)", "truncated",
                _clip(text),
            )
            result.truncated = True
            return result
        return _fail("", f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}", "json", _clip(text))
    except RecursionError:
        return _fail("", "JSON nests too deeply to parse", "depth", None)


def _scan(text: str) -> tuple[int, int, bool]:
    """(max depth, final depth, ends inside a string) of the brackets outside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "}]":
            depth -= 1
    return deepest, depth, in_string


def _max_depth(text: str) -> int:
    return _scan(text)[0]


def _is_truncated(text: str) -> bool:
    _, depth, in_string = _scan(text)
    return text.lstrip()[:1] in ("{", "[") and (depth > 0 or in_string)


def _fail(path: str, message: str, keyword: str, value: Any) -> Validation:
    return Validation(issues=[Issue(path=path, message=message, value=value, keyword=keyword)])


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
