"""Extractive answers: string values copied verbatim from the input.

In extraction most string values must be spans of the text the answer is drawn from: a name, a
playlist, an address. A small model under a schema grammar still invents them (it copies the
few-shot example's playlist, or "corrects" a name's spelling). ``Guard(..., extractive=True)``
makes such values spans of the input, twice over:

* while decoding, on the local runtimes with the llguidance engine, the string's characters are
  constrained to substrings of the input (``guardrail.backends.span_grammar``), so the model
  cannot write anything else;
* after decoding, on every backend, a value that is not in the input is an ``Issue`` at its JSON
  Pointer (``keyword="extractive"``), re-asked like any other.

Which strings: *eligible* leaves are string fields (or lists of strings) with no ``enum``,
``const``, ``format`` or ``pattern`` (those say what the value looks like, not where it comes
from). ``extractive=True`` takes every eligible leaf; a list of JSON Pointers takes those fields.
``null`` stays allowed wherever the schema allows it, so "not in the text" remains an answer.

>>> schema = {"type": "object", "properties": {"city": {"type": "string"}, "day": {"type": "string", "format": "date"},
...           "tags": {"type": "array", "items": {"type": "string"}}}}
>>> extractive_fields(schema, True)
('/city', '/tags')
>>> [i.path for i in span_issues({"city": "Oslo", "tags": ["rain", "snow"]}, ("/city", "/tags"), "Rain in Oslo")]
['/tags/0', '/tags/1']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from guardrail.attempt import Issue
from guardrail.errors import SchemaError
from guardrail.leaves import leaf_schemas, value_leaves

__all__ = ["Spans", "chosen_fields", "extractive_fields", "is_span_string", "span_issues", "string_node"]

#: String keywords that say what a value looks like rather than where it comes from.
_SHAPED = ("enum", "const", "format", "pattern")


@dataclass(frozen=True)
class Spans:
    """The input whose spans the ``fields`` (JSON Pointers of string leaves) must be copied from."""

    text: str
    fields: tuple[str, ...]


def string_node(node: Any) -> Mapping[str, Any] | None:
    """The string schema of a leaf that holds a string or null, else None (``anyOf`` with null included)."""
    if not isinstance(node, Mapping):
        return None
    types = node.get("type")
    names = [types] if isinstance(types, str) else list(types) if isinstance(types, list) else []
    if names:
        return node if "string" in names and set(names) <= {"string", "null"} else None
    for key in ("anyOf", "oneOf"):
        branches = node.get(key)
        if isinstance(branches, list) and branches:
            strings = [b for b in branches if not (isinstance(b, Mapping) and b.get("type") == "null")]
            if len(strings) == 1:
                return string_node(strings[0])
    return None


def is_span_string(node: Any) -> bool:
    """Whether ``node`` is a string (or nullable string) schema free of shape keywords."""
    found = string_node(node)
    return found is not None and not any(k in found for k in _SHAPED) and not any(k in node for k in _SHAPED)


def _eligible(leaf: Any) -> bool:
    if is_span_string(leaf):
        return True
    if isinstance(leaf, Mapping) and (leaf.get("type") == "array" or leaf.get("type") == ["array", "null"]):
        return is_span_string(leaf.get("items"))
    return False


def extractive_fields(json_schema: Any, option: bool | Sequence[str]) -> tuple[str, ...]:
    """The JSON Pointers ``extractive=option`` constrains (empty for ``False``).

    ``SchemaError`` when ``True`` finds no eligible leaf, or a pointer in the list names no
    eligible leaf of the schema (``location`` is that pointer).
    """
    try:
        return chosen_fields(json_schema, option)
    except _NotEligible as exc:
        raise SchemaError(str(exc), location=exc.pointer) from None


class _NotEligible(ValueError):
    def __init__(self, message: str, pointer: str = "") -> None:
        super().__init__(message)
        self.pointer = pointer


def chosen_fields(json_schema: Any, option: bool | Sequence[str]) -> tuple[str, ...]:
    """``extractive_fields`` with a plain ``ValueError`` (its message names the pointer) for suite files."""
    if option is False or option is None:
        return ()
    leaves = leaf_schemas(json_schema)
    eligible = [pointer for pointer, node in leaves.items() if _eligible(node)]
    if option is True:
        if not eligible:
            raise _NotEligible("true, but the schema has no string field to copy from the input (each string has "
                               "an enum, const, format or pattern, or there is none)")
        return tuple(eligible)
    if isinstance(option, str) or not isinstance(option, Sequence):
        raise TypeError(f"extractive must be True, False or a list of JSON Pointers, got {option!r}")
    for pointer in option:
        if pointer not in leaves:
            raise _NotEligible(f"{pointer!r} is not a field of the schema (its fields: {', '.join(leaves) or 'none'})",
                               str(pointer))
        if pointer not in eligible:
            raise _NotEligible(f"{pointer!r} holds no free text to copy from the input (a string, or a list of "
                               "strings, without enum, const, format or pattern)", str(pointer))
    if not option:
        raise _NotEligible("the list of fields is empty (use false to turn it off)")
    return tuple(dict.fromkeys(option))


def span_issues(value: Any, fields: Sequence[str], text: str) -> list[Issue]:
    """An issue for each string of the ``fields`` of ``value`` that does not occur in ``text``."""
    issues = []
    found = value_leaves(value, fields)
    for pointer in fields:
        if pointer not in found:
            continue
        leaf = found[pointer]
        strings = [(pointer, leaf)] if isinstance(leaf, str) else (
            [(f"{pointer}/{i}", item) for i, item in enumerate(leaf) if isinstance(item, str)]
            if isinstance(leaf, list) else [])
        for where, string in strings:
            if string not in text:
                issues.append(Issue(path=where, message=f"{string!r} is not in the input: copy it exactly as "
                                    "written there", value=string, keyword="extractive"))
    return issues
