"""Fuzzing the validator (issue 9, part 3).

* Instances generated from every shipped schema validate.
* Mutated instances (a required key dropped, a wrong type, a number out of range, an extra
  property) are rejected, with the issue located at the mutation.
* Whatever text an LLM might return (random text and bytes, invalid UTF-8 decoded with
  ``surrogateescape``, lone surrogates, huge strings, deep nesting, NaN/Infinity, duplicate keys,
  cut-off JSON) never crashes the validator: it gets a verdict, with a clear issue when not ok.

Instances come from hypothesis-jsonschema for the leaves (strings with patterns and formats,
numbers, enums) and from ``instances`` below for objects and arrays: hypothesis-jsonschema 0.23.1
cannot draw objects under hypothesis >= 6.13x (``'many' object has no attribute 'more'``).

``EXAMPLES`` counts the examples run per test (benchmarks/reliability.py reports it);
``GUARDRAIL_FUZZ_EXAMPLES`` sets how many each test runs (default 40).
"""

from __future__ import annotations

import collections
import json
import math
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from guardrail.schema import Schema, shipped_schema_names
from guardrail.validation import MAX_CHARS, MAX_DEPTH, Validation, validate

#: Examples run, by test name.
EXAMPLES: collections.Counter[str] = collections.Counter()

FUZZ = settings(max_examples=int(os.environ.get("GUARDRAIL_FUZZ_EXAMPLES", "40")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NAMES = shipped_schema_names()
SCHEMAS = {name: Schema.load(name) for name in NAMES}

#: The keywords an issue about unparseable or oversized output may carry.
PARSE_KEYWORDS = {"json", "truncated", "depth", "size"}


def instances(node: Any) -> st.SearchStrategy[Any]:
    """Valid instances of a (shipped, reference-free) schema node."""
    if node.get("type") == "object" and "properties" in node:
        required = set(node.get("required", ()))
        props = node["properties"]
        return st.fixed_dictionaries(
            {k: instances(v) for k, v in props.items() if k in required},
            optional={k: instances(v) for k, v in props.items() if k not in required},
        )
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        return st.lists(instances(node["items"]), min_size=node.get("minItems", 0),
                        max_size=min(node.get("maxItems", 5), 5))
    return from_schema(node)


def nodes(schema: Any, value: Any, pointer: str = "") -> Iterator[tuple[str, dict[str, Any], Any]]:
    """(JSON Pointer, subschema, value) for the root and every member and item of ``value``."""
    yield pointer, schema, value
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                yield from nodes(sub, value[key], f"{pointer}/{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from nodes(schema["items"], item, f"{pointer}/{index}")


def pointer_get(value: Any, pointer: str) -> Any:
    for part in pointer.split("/")[1:]:
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def replace(value: Any, pointer: str, new: Any) -> None:
    parent_pointer, _, last = pointer.rpartition("/")
    parent = pointer_get(value, parent_pointer)
    parent[int(last) if isinstance(parent, list) else last] = new


_SAMPLES = {"string": "x", "integer": 7, "number": 2.5, "boolean": True, "null": None, "array": [], "object": {}}


def json_types(value: Any) -> set[str]:
    if value is None:
        return {"null"}
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"number"}
    return {"string" if isinstance(value, str) else "array" if isinstance(value, list) else "object"}


def wrong_values(node: dict[str, Any]) -> list[Any]:
    allowed = node.get("type")
    allowed = {allowed} if isinstance(allowed, str) else set(allowed or ())
    if not allowed:
        return []
    return [sample for sample in _SAMPLES.values() if not json_types(sample) & allowed]


def check_text(text: str) -> Validation:
    """Validate ``text`` against every shipped schema; assert a verdict with clear issues, never a crash."""
    result = Validation()
    for schema in SCHEMAS.values():
        result = validate(schema, text)
        assert result.ok == (not result.issues)
        for issue in result.issues:
            assert issue.message and isinstance(issue.message, str)
            assert issue.keyword
            assert issue.path == "" or issue.path.startswith("/")
    return result


# -- generated instances validate ---------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data())
def test_generated_instances_validate(name: str, data: st.DataObject) -> None:
    EXAMPLES["generated instances validate"] += 1
    instance = data.draw(instances(SCHEMAS[name].json_schema))
    result = validate(SCHEMAS[name], json.dumps(instance))
    assert result.ok, result.issues
    assert result.value == instance


# -- mutated instances are rejected where they were mutated --------------------------------------


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data())
def test_dropped_required_key_is_located(name: str, data: st.DataObject) -> None:
    EXAMPLES["mutations rejected and located"] += 1
    schema = SCHEMAS[name]
    instance = data.draw(instances(schema.json_schema))
    choices = [(p, key) for p, node, value in nodes(schema.json_schema, instance)
               if isinstance(value, dict) for key in node.get("required", ()) if key in value]
    pointer, key = data.draw(st.sampled_from(choices))
    del pointer_get(instance, pointer)[key]
    issues = validate(schema, json.dumps(instance)).issues
    assert [(i.path, i.keyword) for i in issues] == [(f"{pointer}/{key}", "required")]


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data())
def test_wrong_type_is_located(name: str, data: st.DataObject) -> None:
    EXAMPLES["mutations rejected and located"] += 1
    schema = SCHEMAS[name]
    instance = data.draw(instances(schema.json_schema))
    choices = [(p, w) for p, node, _ in nodes(schema.json_schema, instance) if p for w in wrong_values(node)]
    pointer, wrong = data.draw(st.sampled_from(choices))
    replace(instance, pointer, wrong)
    issues = validate(schema, json.dumps(instance)).issues
    assert issues
    assert {i.path for i in issues} == {pointer}, issues
    assert "type" in {i.keyword for i in issues}


_BOUNDS = {"minimum": -1, "exclusiveMinimum": 0, "maximum": 1, "exclusiveMaximum": 0}


@pytest.mark.parametrize("name", [n for n in NAMES if any(k in json.dumps(SCHEMAS[n].json_schema) for k in _BOUNDS)])
@FUZZ
@given(data=st.data())
def test_number_out_of_range_is_located(name: str, data: st.DataObject) -> None:
    EXAMPLES["mutations rejected and located"] += 1
    schema = SCHEMAS[name]
    instance = data.draw(instances(schema.json_schema))
    choices = [(p, node, k) for p, node, _ in nodes(schema.json_schema, instance) if p for k in _BOUNDS if k in node]
    pointer, node, keyword = data.draw(st.sampled_from(choices))
    step = data.draw(st.sampled_from([0, 1, 1000]) if keyword.startswith("exclusive") else st.sampled_from([1, 1000]))
    bad = node[keyword] + _BOUNDS[keyword] * step if step else node[keyword]
    replace(instance, pointer, bad)
    issues = validate(schema, json.dumps(instance)).issues
    assert [(i.path, i.keyword) for i in issues] == [(pointer, keyword)]


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data(), extra=st.text(min_size=1, max_size=20))
def test_extra_property_is_located(name: str, data: st.DataObject, extra: str) -> None:
    EXAMPLES["mutations rejected and located"] += 1
    schema = SCHEMAS[name]
    instance = data.draw(instances(schema.json_schema))
    choices = [(p, value) for p, node, value in nodes(schema.json_schema, instance)
               if isinstance(value, dict) and node.get("additionalProperties") is False and extra not in node["properties"]]
    if not choices:
        return
    pointer, target = data.draw(st.sampled_from(choices))
    target[extra] = data.draw(st.sampled_from(list(_SAMPLES.values())))
    issues = validate(schema, json.dumps(instance)).issues
    # additionalProperties is reported on the object, naming the extra member
    assert [(i.path, i.keyword) for i in issues] == [(pointer, "additionalProperties")]
    assert repr(extra) in issues[0].message


# -- hostile output never crashes the validator ------------------------------------------------


@FUZZ
@given(text=st.text())
def test_random_text(text: str) -> None:
    EXAMPLES["hostile outputs"] += 1
    check_text(text)


@FUZZ
@given(raw=st.binary(), codec=st.sampled_from(["utf-8", "latin-1", "utf-16"]))
def test_random_bytes_decoded_leniently(raw: bytes, codec: str) -> None:
    EXAMPLES["hostile outputs"] += 1
    errors = "surrogateescape" if codec == "utf-8" else "replace"
    check_text(raw.decode(codec, errors=errors))


@FUZZ
@given(name=st.sampled_from(NAMES), data=st.data())
def test_valid_json_with_invalid_utf8_and_lone_surrogates(name: str, data: st.DataObject) -> None:
    EXAMPLES["hostile outputs"] += 1
    instance = data.draw(instances(SCHEMAS[name].json_schema))
    text = json.dumps(instance, ensure_ascii=False)
    junk = data.draw(st.one_of(
        st.binary(min_size=1, max_size=8).map(lambda b: (b"\x80" + b).decode("utf-8", "surrogateescape")),
        st.characters(categories=["Cs"]),
        st.just("\\ud800"),
    ))
    at = data.draw(st.integers(0, len(text)))
    result = check_text(text[:at] + junk + text[at:])
    # a lone surrogate inside a string, or escaped, is still a string: fine if the schema allows it
    assert result.ok or result.issues


@FUZZ
@given(name=st.sampled_from(NAMES), data=st.data())
def test_truncated_and_mangled_json(name: str, data: st.DataObject) -> None:
    EXAMPLES["hostile outputs"] += 1
    text = json.dumps(data.draw(instances(SCHEMAS[name].json_schema)))
    at = data.draw(st.integers(0, len(text) - 1))
    result = check_text(text[:at])
    assert not result.ok
    mangled = data.draw(st.sampled_from([
        text.replace(":", ": NaN, \"x\":", 1), text.replace("{", '{"a": 1, "a": 2, ', 1), text.replace("[", "[Infinity,", 1),
        text + "}" * 3, "```json\n" + text[:at], "Sure! " + text + " Hope it helps.", text.replace('"', "'"),
    ]))
    check_text(mangled)


@FUZZ
@given(depth=st.integers(1, 5000), opener=st.sampled_from(["[", '{"a":', '[{"b":']), closed=st.booleans())
def test_deep_nesting_is_bounded(depth: int, opener: str, closed: bool) -> None:
    EXAMPLES["hostile outputs"] += 1
    closer = {"[": "]", '{"a":': "}", '[{"b":': "}]"}[opener]
    text = opener * depth + "1" + (closer * depth if closed else "")
    result = check_text(text)
    levels = depth * (2 if opener == '[{"b":' else 1)
    if levels > MAX_DEPTH:
        assert [i.keyword for i in result.issues] == ["depth"]


@FUZZ
@given(value=st.one_of(
    st.sampled_from(["NaN", "-Infinity", "Infinity", "1e400", "-1e999", "1" * 5000, "-" + "9" * 4400, "1e-400"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
))
def test_nan_infinity_and_huge_numbers_are_refused_or_finite(value: str) -> None:
    EXAMPLES["hostile outputs"] += 1
    schema = Schema.load({"type": "object", "properties": {"x": {"type": "number", "multipleOf": 0.5}}})
    for text in (value, f'{{"x": {value}}}', f'Answer: {{"x": {value}}}'):
        result = validate(schema, text)
        parsed = result.parsed["x"] if isinstance(result.parsed, dict) else None
        if result.issues and result.issues[0].keyword == "json":
            continue
        assert parsed is None or math.isfinite(parsed)


def test_huge_outputs_are_bounded() -> None:
    EXAMPLES["hostile outputs"] += 4
    schema = SCHEMAS["contact"]
    over = "x" * (MAX_CHARS + 1)
    assert [i.keyword for i in validate(schema, over).issues] == ["size"]
    huge_string = json.dumps({"name": "a" * (MAX_CHARS - 100), "email": "a@b.c", "phone": None, "company": None})
    issues = validate(schema, huge_string).issues
    assert [(i.path, i.keyword) for i in issues] == [("/name", "maxLength")]
    assert len(issues[0].message) <= 500  # the value is not echoed in full
    wide = "[" + ",".join(["{}"] * (MAX_CHARS // 4)) + "]"
    assert not validate(schema, wide).ok
    assert validate(Schema.load({"type": "array", "uniqueItems": True}), wide).issues[0].keyword == "uniqueItems"
