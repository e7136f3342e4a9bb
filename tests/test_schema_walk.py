"""The one schema walker: its keyword table, ``$ref`` through ``referencing``, JSON Pointers, and
the defects it fixed where each walker had its own rules."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guardrail import schema_walk
from guardrail.errors import SuiteError
from guardrail.leaves import schema_leaves, value_leaves
from guardrail.prompting import describe_schema
from guardrail.schema import Schema
from guardrail.schema_walk import (
    DATA_KEYWORDS,
    KEYWORDS,
    POSITIVE,
    Refs,
    escape,
    join_pointer,
    split_pointer,
    subschemas,
    walk,
)
from guardrail.suite import parse_suite
from guardrail.validation import validate

PACKAGE = Path(schema_walk.__file__).resolve().parent

# A "$ref" whose pointer is percent-encoded, as a URI fragment must be for a name with a space.
SPACED = {
    "type": "object",
    "properties": {"m": {"$ref": "#/$defs/My%20Model"}},
    "required": ["m"],
    "$defs": {
        "My Model": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name"],
        }
    },
}


# -- the defects -------------------------------------------------------------------------------


def test_percent_encoded_ref_gives_the_fields_it_names() -> None:
    schema = Schema.load(SPACED)
    assert validate(schema, '{"m": {"name": "Ana", "age": 3}}').ok
    assert {i.path for i in validate(schema, '{"m": {"age": "3"}}').issues} == {"/m/name", "/m/age"}
    # Before: one leaf "/m", described as "any value".
    assert schema_leaves(SPACED) == ["/m/name", "/m/age"]
    text = describe_schema(SPACED)
    assert "any value" not in text
    assert "- name: string" in text and "- age (optional): integer" in text


def test_gold_error_under_a_key_with_a_slash_is_located_by_an_escaped_pointer() -> None:
    schema = {"type": "object", "properties": {"a/b": {"type": "string"}, "c~d": {"type": "integer"}}}
    document = {"name": "s", "schema": schema, "instruction": "Go.",
                "cases": [{"id": "c1", "input": "x", "gold": {"a/b": 3}}]}
    with pytest.raises(SuiteError, match=r"does not match the schema at /a~1b: 3 is not of type 'string'"):
        parse_suite(document)
    document["cases"] = [{"id": "c1", "input": "x", "gold": {"c~d": "x"}}]
    with pytest.raises(SuiteError, match=r"at /c~0d:"):
        parse_suite(document)


def test_leaves_and_descriptions_follow_refs_inside_an_id_scope() -> None:
    schema = {
        "type": "object",
        "properties": {"p": {"$ref": "https://example.com/person"}},
        "$defs": {
            "person": {
                "$id": "https://example.com/person",
                "type": "object",
                "properties": {"name": {"$ref": "#/$defs/name"}},  # relative to the $id above, not the root
                "$defs": {"name": {"type": "string", "description": "Full name"}},
            }
        },
    }
    assert Schema.load(schema).validator.is_valid({"p": {"name": "Ana"}})
    assert schema_leaves(schema) == ["/p/name"]
    assert "- name (optional): string. Full name" in describe_schema(schema)


def test_recursive_refs_end() -> None:
    tree = {"$ref": "#/$defs/node", "$defs": {"node": {"type": "object", "properties": {
        "label": {"type": "string"}, "child": {"$ref": "#/$defs/node"}}}}}
    assert schema_leaves(tree) == ["/label", "/child"]
    assert "object like node (nested)" in describe_schema(tree)
    loop = Refs({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}})
    assert loop.follow({"$ref": "#/$defs/a"}) is None  # a chain of $refs that comes back is recursion


# -- the table and the walk -----------------------------------------------------------------------


def test_positive_positions_leave_out_not_if_and_property_names() -> None:
    assert {"not", "if", "propertyNames"}.isdisjoint(POSITIVE)
    assert {"properties", "items", "allOf", "anyOf", "then", "else", "$defs"} <= POSITIVE
    node = {"not": {"a": 1}, "if": {"b": 2}, "then": {"c": 3}, "propertyNames": {"d": 4}, "items": [{"e": 5}]}
    assert [path for path, _ in subschemas(node, positive_only=True)] == [("then",), ("items", 0)]


def test_data_keywords_are_never_walked_but_properties_named_like_them_are() -> None:
    schema = {
        "properties": {"enum": {"type": "string", "pattern": "^a"}},
        "enum": [{"$ref": "#/nowhere", "pattern": "("}],
        "default": {"properties": {"x": {}}},
        "components": {"schemas": {"A": {"pattern": "^b"}}},  # unknown keyword: a $ref may point here
    }
    pointers = [node.pointer for node in walk(schema)]
    assert pointers == ["", "/properties/enum", "/components", "/components/schemas", "/components/schemas/A"]
    assert [node.pointer for node in walk(schema, unknown=False)] == ["", "/properties/enum"]
    assert {"enum", "const", "default", "examples"} == DATA_KEYWORDS
    Schema.load(schema)  # the "(" inside enum data is not a pattern to compile


def test_every_keyword_the_metaschemas_say_holds_schemas_is_in_the_table() -> None:
    from jsonschema_specifications import REGISTRY

    documents = [REGISTRY.contents(f"https://json-schema.org/draft/2020-12/meta/{vocabulary}")
                 for vocabulary in ("core", "applicator", "unevaluated", "validation", "content")]
    documents.append(REGISTRY.contents("http://json-schema.org/draft-07/schema#"))
    holding = {
        name
        for document in documents
        for name, sub in document.get("properties", {}).items()
        if any(mark in json.dumps(sub) for mark in ('"#meta"', "schemaArray", '"$ref": "#"'))
    }
    assert holding and holding <= KEYWORDS.keys(), sorted(holding - KEYWORDS.keys())


def test_walk_is_iterative_on_a_very_deep_schema() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(5000):
        deep = {"items": deep}
    assert sum(1 for _ in walk(deep)) == 5001


# -- JSON Pointer ----------------------------------------------------------------------------------


@given(st.lists(st.text(alphabet=st.sampled_from("ab/~01 %"), max_size=6), max_size=5))
def test_pointers_round_trip(keys: list[str]) -> None:
    assert split_pointer(join_pointer(keys)) == keys
    assert all("/" not in escape(k) for k in keys)


def test_a_pointer_must_start_with_a_slash() -> None:
    with pytest.raises(ValueError, match="'a/b' is not a JSON Pointer"):
        split_pointer("a/b")


def test_value_leaves_escape_keys() -> None:
    assert value_leaves({"a/b": 1, "c": {"d~e": 2}}, ["/a~1b", "/c/d~0e"]) == {"/a~1b": 1, "/c/d~0e": 2}


# -- one home ---------------------------------------------------------------------------------------


def _python_files() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if p.name != "schema_walk.py"]


def test_keyword_lists_and_pointer_escaping_live_only_in_schema_walk() -> None:
    for path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in ("~0", "~1"):
                pytest.fail(f"{path.name}:{node.lineno} escapes JSON Pointers itself; use guardrail.schema_walk")
        # A module-level constant naming several subschema keywords is a second keyword table.
        for statement in tree.body:
            if isinstance(statement, (ast.Assign, ast.AnnAssign)) and statement.value is not None:
                names = {n.value for n in ast.walk(statement.value) if isinstance(n, ast.Constant) and n.value in KEYWORDS}
                assert len(names) < 3, f"{path.name}:{statement.lineno} lists subschema keywords {sorted(names)}"

