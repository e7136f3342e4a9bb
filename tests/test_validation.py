"""From a model's text to a value, or to issues located by JSON Pointer."""

from __future__ import annotations

import json
import time

import pytest
from pydantic import BaseModel, field_validator, model_validator

from guardrail.result import Issue
from guardrail.schema import Schema
from guardrail.validation import MAX_CHARS, MAX_DEPTH, Validation, check, schema_issues, validate

ORDER = Schema.load(
    {
        "type": "object",
        "required": ["customer", "items"],
        "additionalProperties": False,
        "properties": {
            "customer": {"type": "string", "minLength": 1},
            "items": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["sku", "price"],
                    "properties": {
                        "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"},
                        "price": {"type": "number", "minimum": 0},
                        "tags": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
    }
)
GOOD = {"customer": "Ada", "items": [{"sku": "ABC-1", "price": 3.5}]}


def only_issue(result: Validation) -> Issue:
    assert not result.ok
    assert len(result.issues) == 1, result.issues
    return result.issues[0]


# -- finding the JSON ----------------------------------------------------------------------------


def test_plain_json() -> None:
    result = validate(ORDER, json.dumps(GOOD))
    assert result.ok
    assert result.value == GOOD
    assert result.parsed == GOOD
    assert not result.extracted
    assert not result.truncated


def test_surrounding_whitespace_is_not_extraction() -> None:
    result = validate(ORDER, "\n\n  " + json.dumps(GOOD) + "\n")
    assert result.ok
    assert not result.extracted


@pytest.mark.parametrize("text", ["I could not find an order in that text.", "None", "yes", "order: Ada, ABC-1"])
def test_not_json_at_all(text: str) -> None:
    issue = only_issue(validate(ORDER, text))
    assert issue.keyword == "json"
    assert issue.path == ""
    assert "no JSON found" in issue.message or "not valid JSON" in issue.message
    assert validate(ORDER, text).value is None


def test_json_in_prose() -> None:
    text = f"Sure! Here is the order you asked for: {json.dumps(GOOD)} Let me know if you need anything else."
    result = validate(ORDER, text)
    assert result.ok
    assert result.extracted
    assert result.value == GOOD


@pytest.mark.parametrize("fence", ["```json", "```JSON", "```", "``` json"])
def test_json_in_a_fenced_block(fence: str) -> None:
    text = f"Here you go:\n\n{fence}\n{json.dumps(GOOD, indent=2)}\n```\n\nAnything else?"
    result = validate(ORDER, text)
    assert result.ok, result.issues
    assert result.extracted
    assert result.value == GOOD


def test_fenced_block_with_schema_violations_still_reports_them() -> None:
    bad = {"customer": "Ada", "items": [{"sku": "ABC-1", "price": -1}]}
    result = validate(ORDER, f"```json\n{json.dumps(bad)}\n```")
    assert result.extracted
    assert [(i.path, i.keyword) for i in result.issues] == [("/items/0/price", "minimum")]


def test_json_array_in_prose() -> None:
    schema = Schema.load({"type": "array", "items": {"type": "integer"}})
    result = validate(schema, "The numbers are [1, 2, 3].")
    assert result.ok
    assert result.extracted
    assert result.value == [1, 2, 3]


# -- truncation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"customer": "Ada", "items": [{"sku": "ABC-1", "price": 3',
        '{"customer": "Ada", "items": [{"sku": "ABC',
        '{"customer": "Ada", "items": [',
        '{"customer":',
    ],
)
def test_truncated_json(text: str) -> None:
    result = validate(ORDER, text)
    issue = only_issue(result)
    assert result.truncated
    assert issue.keyword == "truncated"
    assert "ends before the JSON is complete" in issue.message
    assert result.value is None


@pytest.mark.parametrize(
    "text",
    [
        'Here it is:\n```json\n{"customer": "Ada", "items": [{"sku": "AB',
        'Sure! {"customer": "Ada", "items": [{"sku": "AB',
    ],
    ids=["unclosed fence", "prose"],
)
def test_truncated_json_after_prose(text: str) -> None:
    result = validate(ORDER, text)
    assert result.truncated
    assert result.extracted
    assert only_issue(result).keyword == "truncated"


def test_malformed_but_complete_json_is_not_truncation() -> None:
    result = validate(ORDER, '{"customer": "Ada", "items": [}]}')
    issue = only_issue(result)
    assert not result.truncated
    assert issue.keyword == "json"
    assert "line 1, column" in issue.message


# -- schema violations, located by JSON Pointer --------------------------------------------------


def test_violations_in_nested_arrays() -> None:
    bad = {
        "customer": "",
        "items": [
            {"sku": "ABC-1", "price": -3},
            {"sku": "nope", "price": 1, "tags": ["ok", 7]},
        ],
        "note": "extra",
    }
    result = validate(ORDER, json.dumps(bad))
    found = {(issue.path, issue.keyword) for issue in result.issues}
    assert found == {
        ("", "additionalProperties"),
        ("/customer", "minLength"),
        ("/items/0/price", "minimum"),
        ("/items/1/sku", "pattern"),
        ("/items/1/tags/1", "type"),
    }
    price = next(i for i in result.issues if i.path == "/items/0/price")
    assert price.value == -3
    assert "minimum" in price.message
    assert result.value is None
    assert result.parsed == bad  # what was parsed is kept for the re-ask


def test_missing_required_member_is_located() -> None:
    result = validate(ORDER, json.dumps({"items": [{"sku": "ABC-1"}]}))
    assert [(issue.path, issue.keyword) for issue in result.issues] == [
        ("/customer", "required"),
        ("/items/0/price", "required"),
    ]
    assert all(issue.message == "required property is missing" for issue in result.issues)


def test_pointer_escapes_slash_and_tilde_in_keys() -> None:
    schema = Schema.load(
        {
            "type": "object",
            "properties": {
                "a/b": {"type": "integer"},
                "c~d": {"type": "object", "properties": {"e/~f": {"type": "string"}}},
            },
        }
    )
    result = validate(schema, json.dumps({"a/b": "x", "c~d": {"e/~f": 1}}))
    assert sorted(issue.path for issue in result.issues) == ["/a~1b", "/c~0d/e~1~0f"]


def test_check_and_schema_issues_take_parsed_data() -> None:
    assert check(ORDER, GOOD) == []
    issues = schema_issues(ORDER, {"customer": "Ada", "items": []})
    assert [(i.path, i.keyword) for i in issues] == [("/items", "minItems")]
    assert check(ORDER, {"customer": "Ada", "items": []}) == issues


def test_format_is_asserted() -> None:
    schema = Schema.load({"type": "object", "properties": {"when": {"type": "string", "format": "date"}}})
    assert validate(schema, '{"when": "2024-02-29"}').ok
    issue = only_issue(validate(schema, '{"when": "next Tuesday"}'))
    assert (issue.path, issue.keyword) == ("/when", "format")


def test_issue_renders_its_location() -> None:
    issue = only_issue(validate(ORDER, json.dumps({"customer": "Ada", "items": [{"sku": "ABC-1", "price": "3"}]})))
    assert str(issue).startswith("/items/0/price: ")
    root = only_issue(validate(ORDER, "[]"))
    assert str(root).startswith("/: ")


# -- pydantic models: their validators run --------------------------------------------------------


class Item(BaseModel):
    sku: str
    price: float

    @field_validator("sku")
    @classmethod
    def sku_shape(cls, value: str) -> str:
        if not value.isupper():
            raise ValueError("sku must be upper case")
        return value


class Order(BaseModel):
    customer: str
    items: list[Item]
    total: float

    @model_validator(mode="after")
    def total_matches(self) -> Order:
        if abs(sum(item.price for item in self.items) - self.total) > 1e-9:
            raise ValueError("total does not match the sum of the item prices")
        return self


MODEL = Schema.load(Order)


def test_pydantic_model_gives_an_instance() -> None:
    result = validate(MODEL, '{"customer": "Ada", "items": [{"sku": "ABC", "price": 2}], "total": 2}')
    assert result.ok
    assert isinstance(result.value, Order)
    assert result.value.items[0].price == 2.0
    assert isinstance(result.parsed, dict)


def test_field_validator_error_becomes_an_issue() -> None:
    result = validate(
        MODEL, '{"customer": "Ada", "items": [{"sku": "A", "price": 1}, {"sku": "abc", "price": 1}], "total": 2}'
    )
    issue = only_issue(result)
    assert issue.path == "/items/1/sku"
    assert "sku must be upper case" in issue.message
    assert issue.value == "abc"
    assert issue.keyword == "value_error"


def test_model_validator_error_is_at_the_root() -> None:
    result = validate(MODEL, '{"customer": "Ada", "items": [{"sku": "A", "price": 1}], "total": 5}')
    issue = only_issue(result)
    assert issue.path == ""
    assert "total does not match" in issue.message
    assert issue.keyword == "value_error"


def test_pydantic_missing_and_type_errors() -> None:
    result = validate(MODEL, '{"customer": "Ada", "items": [{"price": "cheap"}]}')
    found = {(issue.path, issue.keyword) for issue in result.issues}
    assert found == {("/items/0/sku", "missing"), ("/items/0/price", "float_parsing"), ("/total", "missing")}
    missing = next(i for i in result.issues if i.path == "/total")
    assert missing.message == "required field is missing"


# -- what the parser refuses ----------------------------------------------------------------------


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(constant: str) -> None:
    schema = Schema.load({"type": "object", "properties": {"x": {"type": "number"}}})
    issue = only_issue(validate(schema, f'{{"x": {constant}}}'))
    assert issue.keyword == "json"
    assert constant in issue.message
    assert "not valid JSON" in issue.message
    # also when the JSON has to be dug out of prose
    assert only_issue(validate(schema, f'Result: {{"x": {constant}}} done')).keyword == "json"


def test_duplicate_keys_are_refused() -> None:
    schema = Schema.load({"type": "object"})
    issue = only_issue(validate(schema, '{"a": 1, "b": {"c": 1, "c": 2}}'))
    assert issue.keyword == "json"
    assert "duplicate key 'c'" in issue.message
    assert validate(schema, '{"a": 1, "b": {"c": 1}, "d": {"c": 2}}').ok  # same key in two objects is fine


def test_deep_nesting_is_bounded() -> None:
    schema = Schema.load(True)
    ok_depth = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert validate(schema, ok_depth).ok
    too_deep = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    issue = only_issue(validate(schema, too_deep))
    assert issue.keyword == "depth"
    assert f"limit of {MAX_DEPTH}" in issue.message


def test_pathological_input_fails_fast_with_a_clear_issue() -> None:
    schema = Schema.load({"type": "object"})
    cases = {
        "deep unclosed": "[" * (MAX_CHARS - 1),
        "deep objects": '{"a":' * 100_000 + "1" + "}" * 100_000,
        "deep in prose": "Here: " + "[" * 400_000 + "]" * 400_000,
    }
    for name, text in cases.items():
        start = time.perf_counter()
        result = validate(schema, text)
        elapsed = time.perf_counter() - start
        assert not result.ok, name
        assert result.issues[0].keyword == "depth", (name, result.issues)
        assert result.issues[0].value is None  # the huge text is not copied into the issue
        assert elapsed < 5, (name, elapsed)


def test_oversized_output_is_refused_unparsed() -> None:
    schema = Schema.load({"type": "array"})
    text = "[" + "1," * (MAX_CHARS // 2) + "1]"
    issue = only_issue(validate(schema, text))
    assert issue.keyword == "size"
    assert f"{MAX_CHARS:,}" in issue.message
    assert issue.value is None


def test_long_garbage_is_clipped_in_the_issue() -> None:
    issue = only_issue(validate(ORDER, "{" + "x" * 5000 + "}"))
    assert issue.keyword == "json"
    assert len(issue.value) < 300


@pytest.mark.parametrize("text", ["", "   ", "\n\t\n"])
def test_empty_output(text: str) -> None:
    issue = only_issue(validate(ORDER, text))
    assert issue.keyword == "json"
    assert "empty" in issue.message


@pytest.mark.parametrize("value", [None, b'{"customer": "Ada"}', 42, {"customer": "Ada"}])
def test_non_string_output(value: object) -> None:
    issue = only_issue(validate(ORDER, value))  # type: ignore[arg-type]
    assert issue.keyword == "json"
    assert f"got {type(value).__name__}" in issue.message
