"""The default instructions: the task and the schema, short enough for a 135M-parameter model.

A small model follows a short bullet list far better than a JSON Schema dump, and its context is
small, so ``describe_schema`` renders only what helps it fill in values: field names, types,
enums, formats, bounds and descriptions, with nested objects and arrays indented and ``$ref``
followed as validation follows it (``guardrail.schema_walk``). ``instructions`` wraps that in a
system message and adds any few-shot examples as user/assistant turns.

>>> print(describe_schema({"type": "object", "required": ["name"], "properties": {
...     "name": {"type": "string", "description": "Full name"},
...     "age": {"type": ["integer", "null"], "minimum": 0}}}))
A JSON object with these fields:
- name: string. Full name
- age (optional): integer >= 0 or null
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote

from guardrail.schema_walk import Refs, unescape, walk

__all__ = ["describe_schema", "example_json", "instructions"]

# How a format reads to a model that has seen many dates but no JSON Schema specification.
_FORMATS = {
    "date": "date YYYY-MM-DD",
    "date-time": "date-time YYYY-MM-DDTHH:MM:SS",
    "time": "time HH:MM:SS",
    "email": "email address",
    "uri": "URL",
    "url": "URL",
    "uuid": "UUID",
    "ipv4": "IPv4 address",
    "ipv6": "IPv6 address",
}
_TYPE_WORDS = {"string": "string", "integer": "integer", "number": "number", "boolean": "true/false",
               "null": "null", "object": "object", "array": "list"}
_PLURALS = {"string": "strings", "integer": "integers", "number": "numbers", "boolean": "booleans",
            "object": "objects", "array": "lists"}
_MAX_DESCRIPTION = 160  # characters; a longer description is cut, the model would not use more
_MAX_ENUM = 12  # values listed before "..."
_MAX_PATTERN = 40


def describe_schema(json_schema: Mapping[str, Any]) -> str:
    """A compact, indented description of ``json_schema`` for a prompt.

    >>> print(describe_schema({"type": "array", "items": {"type": "string"}}))
    A JSON list of strings
    """
    return _Describer(json_schema).top()


def instructions(json_schema: Mapping[str, Any], examples: Sequence[tuple[str, Any]] = ()) -> list[dict[str, str]]:
    """The system message (task and schema) plus few-shot ``(text, value)`` examples as chat turns.

    A value may be a dict or list, a pydantic model instance, or a JSON string used as is.

    >>> messages = instructions({"type": "object", "properties": {"a": {"type": "string"}}},
    ...                         [("a is x", {"a": "x"})])
    >>> [m["role"] for m in messages]
    ['system', 'user', 'assistant']
    >>> messages[2]["content"]
    '{"a": "x"}'
    """
    lines = [
        "Extract information from the user's text into JSON.",
        "Copy each value exactly as it is written in the text.",
    ]
    if _allows_null(json_schema):
        lines.append("Use null when a value is not in the text.")
    elif _has_optional(json_schema):
        lines.append("Leave out a field when its value is not in the text.")
    lines.append("Reply with the JSON only.")
    lines.append("")
    lines.append(describe_schema(json_schema))
    messages = [{"role": "system", "content": "\n".join(lines)}]
    for text, value in examples:
        messages.append({"role": "user", "content": str(text)})
        messages.append({"role": "assistant", "content": example_json(value, json_schema)})
    return messages


def example_json(value: Any, json_schema: Any = None) -> str:
    """A few-shot answer as the model should write it: one line, members in the schema's order.

    Decoding writes an object's properties in the order the schema lists them, so an example in
    another order shows the model a layout it will not be allowed to write.

    >>> example_json({"b": 1, "a": [2]}, {"properties": {"a": {}, "b": {}}})
    '{"a": [2], "b": 1}'
    """
    if isinstance(value, str):
        return value
    dump = getattr(value, "model_dump", None)  # a pydantic model instance
    if callable(dump):
        value = dump(mode="json")
    if json_schema is not None:
        value = _in_schema_order(value, Refs(json_schema), json_schema, 0)
    return json.dumps(value, ensure_ascii=False)


def _in_schema_order(value: Any, refs: Refs, node: Any, depth: int) -> Any:
    followed = refs.follow(node) if depth < 32 else None
    node = followed[0] if followed is not None else {}
    if isinstance(value, dict) and isinstance(node, Mapping):
        found = node.get("properties")
        properties: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
        first = [k for k in properties if k in value]
        return {k: _in_schema_order(value[k], refs, properties.get(k, {}), depth + 1)
                for k in [*first, *(k for k in value if k not in properties)]}
    if isinstance(value, list) and isinstance(node, Mapping) and isinstance(node.get("items"), Mapping):
        return [_in_schema_order(v, refs, node["items"], depth + 1) for v in value]
    return value


class _Describer:
    """Walks a schema once, following ``$ref`` (``guardrail.schema_walk.Refs``) and stopping at recursion."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.refs = Refs(root)
        self.active: frozenset[int] = frozenset()  # subschemas being expanded: meeting one again means recursion

    def top(self) -> str:
        node = self.resolve(self.root)
        about = _about(node)
        if _is_object(node):
            return f"A JSON object{about} with these fields:\n" + "\n".join(self.fields(node, 0))
        head, tail, nested = self.shape(node, 0)
        return "\n".join([f"A JSON {head}{about}{tail}", *nested])

    def resolve(self, node: Any) -> Any:
        """``node`` with its ``$ref`` chain followed; sibling keywords (a description) win over the target's."""
        followed = self.refs.follow(node, self.active)
        return node if followed is None else followed[0]

    @contextmanager
    def expanding(self, active: frozenset[int]) -> Iterator[None]:
        """While describing inside the subschemas ``active`` adds, a ``$ref`` back to one is recursion."""
        saved, self.active = self.active, active
        try:
            yield
        finally:
            self.active = saved

    def fields(self, node: Mapping[str, Any], depth: int) -> list[str]:
        lines: list[str] = []
        required = set(node.get("required") or ())
        indent = "  " * depth
        for name, sub in (node.get("properties") or {}).items():
            summary, nested = self.describe(sub, depth + 1)
            optional = "" if name in required else " (optional)"
            lines.append(f"{indent}- {name}{optional}: {summary}")
            lines.extend(nested)
        extra = node.get("additionalProperties")
        if not node.get("properties") and isinstance(extra, Mapping):
            summary, nested = self.describe(extra, depth + 1)
            lines.append(f"{indent}- any key: {summary}")
            lines.extend(nested)
        return lines

    def describe(self, node: Any, depth: int) -> tuple[str, list[str]]:
        """One-line summary of ``node`` (unresolved) plus indented lines for what it contains."""
        followed = self.refs.follow(node, self.active)
        if followed is None:
            return f"object like {_ref_name(node['$ref'])} (nested)", []
        node, active = followed
        if node is True or node == {}:
            return "any value", []
        if not isinstance(node, Mapping):
            return "nothing", []
        with self.expanding(active):
            head, tail, nested = self.shape(node, depth)
        description = node.get("description")
        if not (isinstance(description, str) and description.strip()):
            return head + tail, nested
        if nested and head.endswith(")"):  # "list of objects (1 to 20 items; Line items)"
            return f"{head[:-1]}; {_clip(description)}){tail}", nested
        if nested:
            return f"{head} ({_clip(description)}){tail}", nested
        return f"{head}{tail}. {_clip(description)}", nested

    def shape(self, node: Mapping[str, Any], depth: int) -> tuple[str, str, list[str]]:
        """``(head, tail, nested)``: "list of objects", ", each with:", the field lines."""
        if "const" in node:
            return f"exactly {json.dumps(node['const'], ensure_ascii=False)}", "", []
        if isinstance(node.get("enum"), list):
            return _choices(node["enum"]), "", []
        for key in ("anyOf", "oneOf"):
            options = node.get(key)
            if isinstance(options, list) and options:
                return self.alternatives(options, depth)
        if isinstance(node.get("allOf"), list) and len(node["allOf"]) == 1:
            first = self.resolve(node["allOf"][0])
            merged = {**(first if isinstance(first, Mapping) else {}), **{k: v for k, v in node.items() if k != "allOf"}}
            return self.shape(merged, depth)
        types = node.get("type")
        names = [types] if isinstance(types, str) else list(types) if isinstance(types, list) else []
        if not names:
            names = ["object"] if "properties" in node else ["array"] if "items" in node else []
        parts: list[str] = []
        tail = ""
        nested: list[str] = []
        for name in (n for n in names if n != "null"):
            if name == "object" and node.get("properties"):
                parts.append("object")
                tail, nested = " with:", self.fields(node, depth)
            elif name == "object" and isinstance(node.get("additionalProperties"), Mapping):
                summary, _ = self.describe(node["additionalProperties"], depth + 1)
                parts.append(f"object mapping names to: {summary}")
            elif name == "array":
                head, tail, nested = self.items(node, depth)
                parts.append(head)
            else:
                parts.append(_scalar(name, node))
        if "null" in names:
            parts.append("null")
        return _either(parts) if parts else "any value", tail, nested

    def items(self, node: Mapping[str, Any], depth: int) -> tuple[str, str, list[str]]:
        bounds = _count_bounds(node.get("minItems"), node.get("maxItems"), "item")
        raw = node.get("items")
        if not isinstance(raw, Mapping):
            return "list" + bounds, "", []
        followed = self.refs.follow(raw, self.active)
        if followed is not None:  # else recursion: describe() names it
            items, active = followed
            if _is_object(items) and items.get("properties"):
                with self.expanding(active):
                    lines = self.fields(items, depth)
                return f"list of objects{bounds}", ", each with:", lines
            types = items.get("type") if isinstance(items, Mapping) else None
            simple = not {"enum", "const", "format", "anyOf", "oneOf"} & set(items)
            if isinstance(types, str) and types in _PLURALS and simple:
                return f"list of {_PLURALS[types]}{bounds}", "", []
        summary, nested = self.describe(raw, depth)
        return f"list{bounds} of: {summary}", "", nested

    def alternatives(self, options: list[Any], depth: int) -> tuple[str, str, list[str]]:
        parts: list[str] = []
        tail = ""
        nested: list[str] = []
        nullable = False
        for option in options:
            resolved = self.resolve(option)
            if isinstance(resolved, Mapping) and resolved.get("type") == "null":
                nullable = True
                continue
            summary, lines = self.describe(option, depth)
            if lines and not nested:  # one structured alternative keeps its field lines
                summary, tail, nested = summary.removesuffix(" with:").removesuffix(", each with:"), (
                    ", each with:" if summary.endswith(", each with:") else " with:"), lines
            parts.append(summary)
        if nullable:
            parts.append("null")
        return _either(parts), tail, nested


def _scalar(name: str, node: Mapping[str, Any]) -> str:
    text = _TYPE_WORDS.get(name, name)
    if name == "string":
        fmt = node.get("format")
        if isinstance(fmt, str):
            text = _FORMATS.get(fmt, f"string ({fmt})")
        pattern = node.get("pattern")
        if (isinstance(pattern, str) and len(pattern) <= _MAX_PATTERN and not fmt
                and not node.get("description")):
            text += f" matching {pattern}"
    elif name in ("integer", "number"):
        text += _number_bounds(node)
    return text


def _number_bounds(node: Mapping[str, Any]) -> str:
    low, high = node.get("minimum"), node.get("maximum")
    xlow, xhigh = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")
    if _num(low) and _num(high):
        return f" {low} to {high}"
    parts = []
    if _num(low):
        parts.append(f">= {low}")
    if _num(xlow):
        parts.append(f"> {xlow}")
    if _num(high):
        parts.append(f"<= {high}")
    if _num(xhigh):
        parts.append(f"< {xhigh}")
    return (" " + " and ".join(parts)) if parts else ""


def _count_bounds(low: Any, high: Any, unit: str) -> str:
    if _num(low) and _num(high):
        return f" ({low} to {high} {unit}s)"
    if _num(high):
        return f" (at most {high} {unit}{'s' if high != 1 else ''})"
    if _num(low) and low:
        return f" (at least {low} {unit}{'s' if low != 1 else ''})"
    return ""


def _either(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def _about(node: Any) -> str:
    description = node.get("description") if isinstance(node, Mapping) else None
    return f" ({_clip(description)})" if isinstance(description, str) and description.strip() else ""


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _choices(values: list[Any]) -> str:
    shown = [json.dumps(v, ensure_ascii=False) for v in values[:_MAX_ENUM]]
    if len(values) > _MAX_ENUM:
        return "one of " + ", ".join(shown) + ", ..."
    if len(shown) == 1:
        return f"exactly {shown[0]}"
    return "one of " + ", ".join(shown[:-1]) + " or " + shown[-1]


def _clip(text: str) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= _MAX_DESCRIPTION else one_line[: _MAX_DESCRIPTION - 3].rstrip() + "..."


def _is_object(node: Any) -> bool:
    if not isinstance(node, Mapping):
        return False
    types = node.get("type")
    return types == "object" or (types is None and isinstance(node.get("properties"), Mapping))


def _ref_name(ref: str) -> str:
    """The last segment of a ``$ref``, as a name: ``#/$defs/My%20Model`` -> ``My Model``."""
    return unescape(unquote(ref.rsplit("/", 1)[-1]))


def _allows_null(schema: Any) -> bool:
    for node in (n.schema for n in walk(schema)):
        types = node.get("type")
        if types == "null" or (isinstance(types, list) and "null" in types):
            return True
        if isinstance(node.get("enum"), list) and None in node["enum"]:
            return True
    return False


def _has_optional(schema: Any) -> bool:
    for node in (n.schema for n in walk(schema)):
        properties = node.get("properties")
        if isinstance(properties, Mapping) and set(properties) - set(node.get("required") or ()):
            return True
    return False
