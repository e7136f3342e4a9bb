"""Schema intake: the four ways a schema arrives, and every way it is refused at construction."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from guardrail.errors import GuardrailError, SchemaError
from guardrail.schema import Schema, shipped_schema_names
from guardrail.validation import check

PERSON = {
    "title": "Person",
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name"],
}


class Person(BaseModel):
    name: str
    age: int = Field(ge=0)


def paths(issues: list) -> list[str]:
    return [issue.path for issue in issues]


# -- the four kinds of source --------------------------------------------------------------------


def test_pydantic_model() -> None:
    schema = Schema.load(Person)
    assert schema.model is Person
    assert schema.name == "Person"
    assert schema.json_schema["properties"]["age"]["minimum"] == 0
    assert schema.json_schema["required"] == ["name", "age"]
    assert check(schema, {"name": "Ada", "age": 36}) == []
    assert paths(check(schema, {"name": "Ada", "age": -1})) == ["/age"]


def test_dict_keeps_its_title_as_name_and_is_copied() -> None:
    source = dict(PERSON)
    schema = Schema.load(source)
    assert schema.model is None
    assert schema.name == "Person"
    assert schema.json_schema == PERSON
    source["required"] = ["age"]  # the caller's dict changing later does not change the schema
    assert schema.json_schema["required"] == ["name"]
    assert Schema.load({"type": "string"}).name == "schema"
    assert Schema.load(PERSON, name="someone").name == "someone"


def test_loading_a_schema_returns_it_unchanged() -> None:
    schema = Schema.load(PERSON)
    assert Schema.load(schema) is schema


@pytest.mark.parametrize("as_str", [False, True], ids=["Path", "str"])
def test_path_to_a_json_file(tmp_path: Path, as_str: bool) -> None:
    path = tmp_path / "person.json"
    path.write_text(json.dumps(PERSON), encoding="utf-8")
    schema = Schema.load(str(path) if as_str else path)
    assert schema.name == "person"  # the file's stem, not the title
    assert schema.json_schema == PERSON
    assert paths(check(schema, {"age": 3})) == ["/name"]


def test_missing_file() -> None:
    with pytest.raises(SchemaError, match="does not exist"):
        Schema.load("no/such/schema.json")


def test_shipped_schema_by_name() -> None:
    if "contact" not in shipped_schema_names():
        pytest.skip("no shipped schema named 'contact' in schemas/")
    schema = Schema.load("contact")
    assert schema.name == "contact"
    assert schema.json_schema["type"] == "object"
    assert "email" in schema.json_schema["properties"]
    assert Schema.load("contact").hash == schema.hash


def test_every_shipped_schema_loads() -> None:
    names = shipped_schema_names()
    if not names:
        pytest.skip("no shipped schemas in schemas/")
    for name in names:
        assert Schema.load(name).name == name


def test_unknown_name_lists_the_available_ones() -> None:
    with pytest.raises(SchemaError, match="no schema named 'nonesuch'") as caught:
        Schema.load("nonesuch")
    names = shipped_schema_names()
    assert all(name in str(caught.value) for name in names)
    if not names:
        assert "none found" in str(caught.value)


@pytest.mark.parametrize("source", [42, None, ["type", "string"], 3.5])
def test_unusable_source(source: object) -> None:
    with pytest.raises(SchemaError, match="expected a pydantic model class, a JSON Schema dict"):
        Schema.load(source)


def test_errors_are_one_family() -> None:
    with pytest.raises(GuardrailError):
        Schema.load({"type": "integr"})
    with pytest.raises(ValueError):  # SchemaError is a ValueError too
        Schema.load({"type": "integr"})


# -- invalid schemas name the offending keyword ------------------------------------------------


@pytest.mark.parametrize(
    ("document", "location", "keyword"),
    [
        ({"properties": {"age": {"type": "integr"}}}, "/properties/age/type", "type"),
        ({"minLength": -1}, "/minLength", "minLength"),
        ({"type": "object", "required": "name"}, "/required", "required"),
        ({"items": {"maximum": "ten"}}, "/items/maximum", "maximum"),
        ({"properties": {"a/b": {"enum": 3}}}, "/properties/a~1b/enum", "enum"),
    ],
)
def test_invalid_schema_names_the_location(document: dict, location: str, keyword: str) -> None:
    with pytest.raises(SchemaError) as caught:
        Schema.load(document)
    assert caught.value.location == location
    assert caught.value.keyword == keyword
    assert f"at {location}" in str(caught.value)


def test_unsupported_dialect_is_refused() -> None:
    with pytest.raises(SchemaError, match="unsupported \\$schema") as caught:
        Schema.load({"$schema": "https://example.com/my-dialect", "type": "string"})
    assert caught.value.location == "/$schema"
    with pytest.raises(SchemaError, match="must be a string") as caught:
        Schema.load({"$schema": 7})
    assert caught.value.location == "/$schema"


def test_custom_metaschema_given_in_refs() -> None:
    meta_uri = "https://example.com/strict-meta"
    meta = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": meta_uri, "$dynamicAnchor": "meta"}
    schema = Schema.load({"$schema": meta_uri, "type": "integer"}, refs={meta_uri: meta})
    assert check(schema, 3) == []
    assert paths(check(schema, "3")) == [""]


def test_regex_python_cannot_compile_is_refused_at_load() -> None:
    with pytest.raises(SchemaError, match="Python re") as caught:
        Schema.load({"properties": {"name": {"type": "string", "pattern": "^\\p{Letter}+$"}}})
    assert caught.value.location == "/properties/name/pattern"
    assert caught.value.keyword == "pattern"
    with pytest.raises(SchemaError) as caught:
        Schema.load({"patternProperties": {"[a-": {"type": "string"}}})
    assert caught.value.location == "/patternProperties/[a-"
    # a property merely named "pattern", and patterns held as data, are not regexes
    schema = Schema.load({"properties": {"pattern": {"type": "string"}}, "examples": [{"pattern": "(("}]})
    assert check(schema, {"pattern": "(("}) == []


def test_boolean_schemas() -> None:
    anything, nothing = Schema.load(True), Schema.load(False)
    assert check(anything, {"a": [1, None]}) == []
    assert check(nothing, 1)
    assert anything.hash != nothing.hash


# -- $ref ----------------------------------------------------------------------------------------

REMOTE = "https://example.com/schemas/money.json"
MONEY = {"type": "object", "properties": {"amount": {"type": "number", "minimum": 0}}, "required": ["amount"]}
USES_REMOTE = {"type": "object", "properties": {"price": {"$ref": REMOTE}}}


def test_remote_ref_is_refused_at_construction() -> None:
    with pytest.raises(SchemaError) as caught:
        Schema.load(USES_REMOTE)
    assert caught.value.location == "/properties/price/$ref"
    assert caught.value.keyword == "$ref"
    assert "never fetches" in str(caught.value)
    assert REMOTE in str(caught.value)
    assert "refs=" in str(caught.value)


def test_remote_ref_works_when_given_in_refs() -> None:
    schema = Schema.load(USES_REMOTE, refs={REMOTE: MONEY})
    assert check(schema, {"price": {"amount": 3}}) == []
    issues = check(schema, {"price": {"amount": -3}})
    assert paths(issues) == ["/price/amount"]
    assert issues[0].keyword == "minimum"


def test_relative_remote_ref_resolves_against_id() -> None:
    document = {"$id": "https://example.com/schemas/order.json", "properties": {"price": {"$ref": "money.json"}}}
    with pytest.raises(SchemaError, match="never fetches"):
        Schema.load(document)
    schema = Schema.load(document, refs={REMOTE: MONEY})
    assert paths(check(schema, {"price": {}})) == ["/price/amount"]


def test_local_defs_and_ref() -> None:
    schema = Schema.load(
        {
            "type": "object",
            "properties": {"billing": {"$ref": "#/$defs/address"}, "shipping": {"$ref": "#/$defs/address"}},
            "$defs": {"address": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}},
        }
    )
    assert check(schema, {"billing": {"city": "Oslo"}, "shipping": {"city": "Bergen"}}) == []
    assert paths(check(schema, {"billing": {"city": "Oslo"}, "shipping": {"city": 5}})) == ["/shipping/city"]


def test_recursive_local_ref() -> None:
    schema = Schema.load(
        {
            "$defs": {
                "node": {"type": "object", "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}
            },
            "$ref": "#/$defs/node",
        }
    )
    assert check(schema, {"children": [{"children": []}]}) == []
    assert paths(check(schema, {"children": [{"children": [3]}]})) == ["/children/0/children/0"]


def test_dangling_local_ref_is_refused_at_construction() -> None:
    with pytest.raises(SchemaError, match="points to nothing") as caught:
        Schema.load({"properties": {"a": {"$ref": "#/$defs/nope"}}})
    assert caught.value.location == "/properties/a/$ref"


def test_ref_to_a_drafts_own_metaschema_is_not_remote() -> None:
    schema = Schema.load({"$ref": "https://json-schema.org/draft/2020-12/schema"})
    assert check(schema, {"type": "string"}) == []
    assert check(schema, {"type": "integr"})
    draft7 = Schema.load(
        {"$schema": "http://json-schema.org/draft-07/schema#", "$ref": "http://json-schema.org/draft-07/schema#"}
    )
    assert check(draft7, {"minLength": -1})


def test_ref_like_strings_in_data_are_not_refs() -> None:
    schema = Schema.load(
        {
            "properties": {"$ref": {"type": "string"}},
            "enum": [{"$ref": "https://example.com/x"}],
            "default": {"$ref": "https://example.com/y"},
        }
    )
    assert check(schema, {"$ref": "https://example.com/x"}) == []


# -- dialects ------------------------------------------------------------------------------------

TUPLE = {"type": "array", "items": [{"type": "string"}, {"type": "integer"}], "additionalItems": False}


@pytest.mark.parametrize(
    "dialect",
    [
        "http://json-schema.org/draft-07/schema#",
        "http://json-schema.org/draft-07/schema",
        "https://json-schema.org/draft-07/schema",
    ],
)
def test_draft7_via_dollar_schema(dialect: str) -> None:
    schema = Schema.load(
        {
            "$schema": dialect,
            "definitions": {"pair": TUPLE},
            "type": "object",
            "properties": {"pair": {"$ref": "#/definitions/pair"}},
        }
    )
    assert check(schema, {"pair": ["a", 1]}) == []
    assert paths(check(schema, {"pair": ["a", "b"]})) == ["/pair/1"]
    assert check(schema, {"pair": ["a", 1, "extra"]})[0].keyword == "additionalItems"


def test_draft7_ref_ignores_its_siblings() -> None:
    schema = Schema.load(
        {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "definitions": {"s": {"type": "string"}},
            "properties": {"a": {"$ref": "#/definitions/s", "maxLength": 1}},
        }
    )
    assert check(schema, {"a": "long"}) == []  # maxLength beside $ref does not apply in draft 7
    modern = Schema.load({"$defs": {"s": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/s", "maxLength": 1}}})
    assert paths(check(modern, {"a": "long"})) == ["/a"]


def test_draft7_root_id_beside_ref_is_ignored() -> None:
    # In draft 7 "$id" next to "$ref" is ignored, so "#/definitions/..." is not a fetch of the $id.
    schema = Schema.load(
        {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "$id": "https://example.com/config.json",
            "$ref": "#/definitions/config",
            "definitions": {"config": {"type": "object", "required": ["name"]}},
        }
    )
    assert paths(check(schema, {})) == ["/name"]


def test_array_items_is_draft7_only() -> None:
    with pytest.raises(SchemaError) as caught:
        Schema.load({"type": "array", "items": [{"type": "string"}]})  # 2020-12 by default: prefixItems
    assert caught.value.location == "/items"
    schema = Schema.load({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False})
    assert check(schema, ["a", 1]) == []
    assert check(schema, ["a", 1, 2])


# -- hashing -------------------------------------------------------------------------------------


def test_hash_is_stable_across_key_order() -> None:
    reordered = json.loads(json.dumps(PERSON, sort_keys=True))
    reordered["properties"] = dict(reversed(list(reordered["properties"].items())))
    assert list(reordered) != list(PERSON)
    assert Schema.load(reordered).hash == Schema.load(PERSON).hash
    assert re.fullmatch("[0-9a-f]{64}", Schema.load(PERSON).hash)


def test_hash_changes_with_content_and_refs() -> None:
    base = Schema.load(PERSON).hash
    assert Schema.load({**PERSON, "required": ["age"]}).hash != base
    with_ref = Schema.load(USES_REMOTE, refs={REMOTE: MONEY}).hash
    other_ref = Schema.load(USES_REMOTE, refs={REMOTE: {**MONEY, "required": []}}).hash
    assert with_ref != other_ref
    assert Schema.load(Person).hash == Schema.load(Person).hash


# -- schema files that are not JSON --------------------------------------------------------------


def test_non_json_file_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "type": "object",\n  "properties": {,}\n}\n', encoding="utf-8")
    with pytest.raises(SchemaError, match="is not JSON") as caught:
        Schema.load(path)
    assert "line 3, column 18" in str(caught.value)
    assert "broken.json" in str(caught.value)


def test_json_file_that_is_not_a_schema(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(SchemaError, match="must hold a JSON object"):
        Schema.load(path)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00{")
    with pytest.raises(SchemaError, match="cannot read"):
        Schema.load(binary)


def test_invalid_schema_in_a_file_names_the_location(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"properties": {"age": {"type": "integr"}}}), encoding="utf-8")
    with pytest.raises(SchemaError) as caught:
        Schema.load(path)
    assert caught.value.location == "/properties/age/type"
