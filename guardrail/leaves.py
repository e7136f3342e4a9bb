"""Leaf fields of a schema and of a value, named by JSON Pointer: the unit of voting and confidence.

A *leaf* is where an answer is compared as one piece:

* a scalar (string, number, boolean, null);
* an array, as a whole: list items are compared as a multiset (``["a", "b"]`` agrees with
  ``["b", "a"]``), because the position of an item in an extracted list rarely means the same
  thing from one sample to the next, and voting per index would mix items of different lists;
* an object the schema gives no ``properties`` for (a free-form map), as a whole.

Objects with ``properties`` are not leaves: their members are. ``schema_leaves`` follows ``$ref``
as validation does (``guardrail.schema_walk.Refs``; once per path, so recursive schemas end),
merges ``allOf`` members and looks through an ``anyOf``/``oneOf`` that is one object schema or
null (``Optional[Model]``). JSON Pointers are written and read by ``guardrail.schema_walk``.

>>> schema = {"type": "object", "properties": {"total": {"type": "number"},
...           "customer": {"type": "object", "properties": {"name": {"type": "string"}}},
...           "items": {"type": "array", "items": {"type": "object"}}}}
>>> schema_leaves(schema)
['/total', '/customer/name', '/items']
>>> value_leaves({"total": 9, "customer": {"name": "Ada"}, "items": [{"n": 1}]}, schema_leaves(schema))
{'/total': 9, '/customer/name': 'Ada', '/items': [{'n': 1}]}
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from guardrail.schema_walk import Refs, escape, split_pointer, unescape

__all__ = ["MAX_DEPTH", "escape", "leaf_schemas", "pointers", "resolve", "schema_leaves", "split", "unescape",
           "value_leaves"]

#: Nesting followed before a schema node is taken as a leaf (guards against huge schemas).
MAX_DEPTH = 32

#: The keys of a JSON Pointer (``guardrail.schema_walk.split_pointer``).
split = split_pointer


def schema_leaves(json_schema: Any) -> list[str]:
    """The leaf pointers a value of ``json_schema`` can have, in the schema's property order."""
    return list(leaf_schemas(json_schema))


def leaf_schemas(json_schema: Any) -> dict[str, Any]:
    """``pointer -> subschema`` for each leaf of ``json_schema`` (``$ref`` followed), in property order.

    >>> leaf_schemas({"properties": {"tags": {"type": "array", "items": {"type": "string"}}}})
    {'/tags': {'type': 'array', 'items': {'type': 'string'}}}
    """
    refs = Refs(json_schema)
    out: dict[str, Any] = {}

    def walk(node: Any, path: str, depth: int, active: frozenset[int]) -> None:
        node, active = _follow(refs, node, active)
        props = None if depth >= MAX_DEPTH else _properties(refs, node, active)
        if not props:
            out.setdefault(path, node)
            return
        for name, sub in props.items():
            walk(sub, f"{path}/{escape(name)}", depth + 1, active)

    walk(json_schema, "", 0, frozenset())
    return out


def _follow(refs: Refs, node: Any, active: frozenset[int]) -> tuple[Any, frozenset[int]]:
    """``node`` with its ``$ref`` chain followed; a recursive one is a leaf of any value."""
    followed = refs.follow(node, active)
    return ({}, active) if followed is None else followed


def _properties(refs: Refs, node: Any, active: frozenset[int]) -> dict[str, Any] | None:
    """The members of an object schema, or None when the node is a leaf."""
    if not isinstance(node, Mapping):
        return None
    types = node.get("type")
    if types == "array" or (isinstance(types, list) and "array" in types):
        return None
    props: dict[str, Any] = dict(node["properties"]) if isinstance(node.get("properties"), Mapping) else {}
    for member in node.get("allOf") or []:
        sub, sub_active = _follow(refs, member, active)
        props.update(_properties(refs, sub, sub_active) or {})
    for key in ("anyOf", "oneOf"):
        branches = [_follow(refs, b, active) for b in node.get(key) or []]
        objects = [(b, a) for b, a in branches if not _is_null(b)]
        if len(objects) == 1:
            props.update(_properties(refs, objects[0][0], objects[0][1]) or {})
    return props or None


def _is_null(node: Any) -> bool:
    return isinstance(node, Mapping) and (node.get("type") == "null" or node.get("const", ...) is None)


def value_leaves(value: Any, leaves: Collection[str] = ()) -> dict[str, Any]:
    """``pointer -> value`` for every leaf of ``value``, the schema's ``leaves`` deciding where to stop.

    An object at a pointer that is not a schema leaf is walked into; anything else is a leaf
    (arrays whole). An empty value (``null``) where the schema expects an object holds no leaves:
    its members simply have no value.

    >>> value_leaves({"a": {"b": 1}, "c": None}, ["/a/b", "/c"])
    {'/a/b': 1, '/c': None}
    """
    known = set(leaves)
    parents = {p[:i] for p in known for i in range(len(p)) if p[i] == "/"}
    out: dict[str, Any] = {}

    def walk(item: Any, path: str) -> None:
        if path in known or not isinstance(item, dict):
            if path in known or path not in parents or item is not None:
                out[path] = item
            return
        for key, sub in item.items():
            walk(sub, f"{path}/{escape(str(key))}")

    walk(value, "")
    return out


def pointers(leaves: Collection[str], values: Collection[Mapping[str, Any]]) -> list[str]:
    """The schema's leaves in order, then any other leaf found in ``values`` (first seen first)."""
    out = list(dict.fromkeys(leaves))
    seen = set(out)
    for flat in values:
        for pointer in flat:
            if pointer not in seen:
                seen.add(pointer)
                out.append(pointer)
    return out


def resolve(value: Any, pointer: str) -> Any:
    """The value at ``pointer``, or ``None`` when there is none.

    >>> resolve({"a": [{"b": 2}]}, "/a/0/b"), resolve({"a": 1}, "/x")
    (2, None)
    """
    for key in split(pointer):
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return None
    return value
