"""Where subschemas live in a JSON Schema, how ``$ref`` is followed, and how JSON Pointers are written.

Every part of guardrail that walks a schema (checking it, finding its leaf fields, describing it
in a prompt, tightening it for decoding) reads the one table here, ``KEYWORDS``: for each keyword
that holds subschemas, what it holds (one subschema, a list of them, or a name -> subschema map),
whether its subschemas apply to the same instance as their parent (*in place*), and whether it is
a *positive* position, where narrowing the subschema can only narrow what the whole accepts
(``not``, ``if`` and ``propertyNames`` are not: narrowing there widens or shifts the whole).
``DATA_KEYWORDS`` hold JSON data that may look like a schema but is not one (``enum``,
``const``, ``default``, ``examples``).

``Refs`` follows ``$ref`` with ``referencing``, as validation does: ``$id`` scopes, anchors and
percent-encoded pointers (``#/$defs/My%20Model``) all resolve the same way, and nothing is ever
fetched. ``escape``, ``join_pointer`` and ``split_pointer`` write and read JSON Pointers (RFC 6901).

>>> schema = {"type": "object", "properties": {"m": {"$ref": "#/$defs/My%20Model"}},
...           "$defs": {"My Model": {"type": "object", "properties": {"a/b": {"type": "string"}}}}}
>>> [pointer for pointer, _, _ in walk(schema)]
['', '/properties/m', '/$defs/My Model', '/$defs/My Model/properties/a~1b']
>>> Refs(schema).follow(schema["properties"]["m"])[0]["properties"]
{'a/b': {'type': 'string'}}
>>> join_pointer(["properties", "a/b"]), split_pointer("/properties/a~1b")
('/properties/a~1b', ['properties', 'a/b'])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import referencing
import referencing.jsonschema

if TYPE_CHECKING:  # what Registry.resolver_with_root and Resolver.lookup return (not exported by referencing)
    from referencing._core import Resolved, Resolver

__all__ = [
    "DATA_KEYWORDS",
    "DEFINITIONS",
    "IN_PLACE",
    "KEYWORDS",
    "LIST_KEYWORDS",
    "MAP_KEYWORDS",
    "ONE_KEYWORDS",
    "POSITIVE",
    "VALIDATION_KEYWORDS",
    "Keyword",
    "Refs",
    "SchemaNode",
    "escape",
    "join_pointer",
    "split_pointer",
    "subschemas",
    "unescape",
    "walk",
]

Holds = Literal["one", "list", "one_or_list", "map"]


@dataclass(frozen=True)
class Keyword:
    """What a subschema keyword holds, and how its subschemas relate to the schema around them.

    ``holds``: ``"one"`` subschema, a ``"list"``, ``"one_or_list"`` (``items`` before 2020-12 took
    either), or a ``"map"`` from names to subschemas. ``in_place``: the subschemas apply to the
    same instance as their parent. ``positive``: narrowing a subschema narrows the whole.
    ``definition``: the subschemas are reached only through a ``$ref``, never by evaluation.
    """

    holds: Holds
    in_place: bool = False
    positive: bool = True
    definition: bool = False


#: Every keyword of drafts 4 to 2020-12 whose value holds subschemas.
KEYWORDS: dict[str, Keyword] = {
    "$defs": Keyword("map", definition=True),
    "definitions": Keyword("map", definition=True),
    "properties": Keyword("map"),
    "patternProperties": Keyword("map"),
    "additionalProperties": Keyword("one"),
    "unevaluatedProperties": Keyword("one"),
    "propertyNames": Keyword("one", positive=False),  # narrowing the names a key may have changes which keys are legal
    "dependentSchemas": Keyword("map", in_place=True),
    "dependencies": Keyword("map", in_place=True),  # draft 7: a value is a subschema or a list of names
    "items": Keyword("one_or_list"),
    "prefixItems": Keyword("list"),
    "additionalItems": Keyword("one"),
    "unevaluatedItems": Keyword("one"),
    "contains": Keyword("one"),
    "allOf": Keyword("list", in_place=True),
    "anyOf": Keyword("list", in_place=True),
    "oneOf": Keyword("list", in_place=True),
    "not": Keyword("one", in_place=True, positive=False),
    "if": Keyword("one", in_place=True, positive=False),  # narrowing the condition moves instances to "else"
    "then": Keyword("one", in_place=True),
    "else": Keyword("one", in_place=True),
    "contentSchema": Keyword("one", positive=False),  # an annotation: decoding has nothing to narrow there
}

#: Keywords by what they hold (``items`` is in both ``ONE_KEYWORDS`` and ``LIST_KEYWORDS``).
ONE_KEYWORDS = frozenset(k for k, v in KEYWORDS.items() if v.holds in ("one", "one_or_list"))
LIST_KEYWORDS = frozenset(k for k, v in KEYWORDS.items() if v.holds in ("list", "one_or_list"))
MAP_KEYWORDS = frozenset(k for k, v in KEYWORDS.items() if v.holds == "map")
#: Positive positions: narrowing a subschema there can only narrow what the whole schema accepts.
POSITIVE = frozenset(k for k, v in KEYWORDS.items() if v.positive)
#: Keywords applying their subschemas to the parent's own instance (``$ref`` does too).
IN_PLACE = frozenset(k for k, v in KEYWORDS.items() if v.in_place) | {"$ref"}
#: Keywords holding definitions, reached only through a ``$ref``.
DEFINITIONS = frozenset(k for k, v in KEYWORDS.items() if v.definition)
#: Keywords whose value is JSON data, not a schema: a ``"$ref"`` or ``"pattern"`` inside them means nothing.
DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})

#: JSON Schema keywords that constrain instances (drafts 7 to 2020-12); the rest are annotations.
VALIDATION_KEYWORDS = frozenset({
    "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "format", "maxItems", "minItems", "uniqueItems", "maxContains",
    "minContains", "contains", "maxProperties", "minProperties", "required", "dependentRequired", "dependencies",
    "dependentSchemas", "properties", "patternProperties", "additionalProperties", "propertyNames", "items",
    "prefixItems", "additionalItems", "unevaluatedItems", "unevaluatedProperties", "allOf", "anyOf", "oneOf", "not",
    "if", "then", "else", "$ref", "$dynamicRef", "$recursiveRef",
})  # fmt: skip


# -- JSON Pointer (RFC 6901) ---------------------------------------------------------------------


def escape(token: object) -> str:
    """A key (or index) as one JSON Pointer segment.

    >>> escape("a/b~c"), escape(3)
    ('a~1b~0c', '3')
    """
    return str(token).replace("~", "~0").replace("/", "~1")


def unescape(segment: str) -> str:
    """The key a JSON Pointer segment names.

    >>> unescape("a~1b~0c")
    'a/b~c'
    """
    return segment.replace("~1", "/").replace("~0", "~")


def join_pointer(parts: Iterable[object]) -> str:
    """The JSON Pointer of a path of keys and indexes (``""`` is the root).

    >>> join_pointer(["items", 0, "a/b"])
    '/items/0/a~1b'
    """
    return "".join(f"/{escape(part)}" for part in parts)


def split_pointer(pointer: str) -> list[str]:
    """The keys of a JSON Pointer (``""`` is the root: no keys); ``ValueError`` when it is not one.

    >>> split_pointer("/a~1b/0"), split_pointer("")
    (['a/b', '0'], [])
    """
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ValueError(f"{pointer!r} is not a JSON Pointer: it must be empty or start with '/'")
    return [unescape(segment) for segment in pointer.split("/")[1:]]


# -- walking -----------------------------------------------------------------------------------


def subschemas(node: Mapping[str, Any], *, positive_only: bool = False, definitions: bool = True,
               unknown: bool = False) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """``(path, subschema)`` for every subschema ``node`` holds directly, in the order of its keys.

    ``path`` starts with the keyword (``("properties", "name")``, ``("anyOf", 1)``). Boolean
    subschemas are included. ``positive_only`` keeps positive positions, ``definitions=False``
    skips ``$defs``/``definitions``, and ``unknown`` also yields the objects under keywords no draft
    defines (a ``$ref`` may point into them, as into ``{"components": {"schemas": ...}}``).

    >>> [path for path, _ in subschemas({"not": {}, "anyOf": [{}, True], "properties": {"a": {}}})]
    [('not',), ('anyOf', 0), ('anyOf', 1), ('properties', 'a')]
    """
    for key, value in node.items():
        keyword = KEYWORDS.get(key)
        if keyword is None:
            if not unknown or key in DATA_KEYWORDS or key == "$ref":
                continue
            if isinstance(value, Mapping):
                yield (key,), value
            elif isinstance(value, list):
                yield from (((key, index), item) for index, item in enumerate(value) if isinstance(item, Mapping))
            continue
        if (positive_only and not keyword.positive) or (keyword.definition and not definitions):
            continue
        if keyword.holds == "map":
            if isinstance(value, Mapping):
                yield from (((key, name), sub) for name, sub in value.items() if isinstance(sub, (Mapping, bool)))
        elif isinstance(value, (Mapping, bool)) and keyword.holds != "list":
            yield (key,), value
        elif isinstance(value, list) and keyword.holds != "one":
            yield from (((key, index), sub) for index, sub in enumerate(value) if isinstance(sub, (Mapping, bool)))


class SchemaNode(NamedTuple):
    """One schema object met by ``walk``: its JSON Pointer, itself, and its parent's pointer."""

    pointer: str
    schema: Mapping[str, Any]
    parent: str | None


def walk(root: Any, *, unknown: bool = True) -> Iterator[SchemaNode]:
    """Every schema object in ``root``, root first, depth first in key order; ``$ref`` is not followed.

    Iterative, so a deeply nested schema cannot exhaust the stack. ``unknown`` (default true) also
    walks into keywords no draft defines; see ``subschemas``.
    """
    if not isinstance(root, Mapping):
        return
    stack: list[SchemaNode] = [SchemaNode("", root, None)]
    while stack:
        node = stack.pop()
        yield node
        children = [
            SchemaNode(node.pointer + join_pointer(path), sub, node.pointer)
            for path, sub in subschemas(node.schema, unknown=unknown)
            if isinstance(sub, Mapping)
        ]
        stack.extend(reversed(children))


# -- $ref ----------------------------------------------------------------------------------------


class Refs:
    """``$ref`` resolution inside one schema document, through ``referencing``.

    ``registry`` and ``specification`` default to an empty registry (so no reference outside the
    document resolves, and nothing is fetched) and the dialect ``$schema`` names (2020-12 when it
    names none); ``guardrail.schema`` passes its own registry (the ``refs=`` documents and the
    drafts' metaschemas) when it looks for ``$ref`` loops.

    >>> refs = Refs({"$defs": {"a": {"type": "string"}}, "properties": {"x": {"$ref": "#/$defs/a", "title": "X"}}})
    >>> refs.follow(refs.root["properties"]["x"])[0]
    {'type': 'string', 'title': 'X'}
    >>> refs.lookup("#/$defs/missing") is None
    True
    """

    def __init__(self, root: Any, *, registry: referencing.Registry | None = None,
                 specification: referencing.Specification[Any] | None = None) -> None:
        self.root = root
        self._specification = specification or _specification_of(root)
        resource = self._specification.create_resource(root)
        self._root_resolver = (registry or referencing.Registry()).resolver_with_root(resource)
        self._resolvers: dict[int, Resolver[Any]] = {}
        self._index(root, self._root_resolver)

    def _index(self, document: Any, resolver: Resolver[Any]) -> None:
        """Remember the resolver (base URI) of every schema object in ``document``."""
        if not isinstance(document, Mapping) or id(document) in self._resolvers:
            return
        by_pointer: dict[str, Resolver[Any]] = {}
        for node in walk(document):
            outer = resolver if node.parent is None else by_pointer[node.parent]
            here = outer.in_subresource(self._specification.create_resource(node.schema))
            by_pointer[node.pointer] = here
            self._resolvers.setdefault(id(node.schema), here)

    def _resolver(self, node: Any) -> Resolver[Any]:
        return self._resolvers.get(id(node), self._root_resolver)

    def _lookup(self, ref: str, resolver: Resolver[Any]) -> Resolved[Any] | None:
        try:
            resolved = resolver.lookup(ref)
        except Exception:  # noqa: BLE001 - dangling, remote, or a pointer through a list: Schema.check reports those
            return None
        self._index(resolved.contents, resolved.resolver)
        return resolved

    def lookup(self, ref: str, where: Any = None) -> Any:
        """The subschema ``ref`` names, as seen from the schema object ``where`` (default: the root);
        ``None`` when it does not resolve."""
        resolved = self._lookup(ref, self._resolver(where if where is not None else self.root))
        return None if resolved is None else resolved.contents

    def follow(self, node: Any, active: frozenset[int] = frozenset()) -> tuple[Any, frozenset[int]] | None:
        """``node`` with its ``$ref`` chain followed, and ``active`` plus the subschemas followed to.

        The keywords beside a ``$ref`` win over its target's (a description next to a ``$ref``
        describes it). ``active`` holds the subschemas being expanded on the current path (by
        ``id``): a ``$ref`` back to one of them is recursion, and the answer is ``None``. A
        ``$ref`` that does not resolve is left in place.
        """
        resolver = self._resolver(node)
        while isinstance(node, Mapping) and isinstance(node.get("$ref"), str):
            resolved = self._lookup(node["$ref"], resolver)
            if resolved is None:
                break
            target = resolved.contents
            if id(target) in active:
                return None
            active = active | {id(target)}
            resolver = self._resolvers.get(id(target), resolved.resolver)
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            node = {**target, **siblings} if siblings and isinstance(target, Mapping) else target
        return node, active


def _specification_of(root: Any) -> referencing.Specification[Any]:
    declared = root.get("$schema") if isinstance(root, Mapping) else None
    default = referencing.jsonschema.DRAFT202012
    if not isinstance(declared, str):
        return default
    return referencing.jsonschema.specification_with(declared, default=default)
