"""The decoding schema: the user's schema tightened against runaway output, for every runtime.

Constrained decoding keeps a small model inside the schema's shape, but inside a string it can
still write until the token budget runs out (``"phone": "+81 3 1234 5678 } 2022-01-22 ...``).
Grammars are therefore compiled from a *decoding* schema: strings without ``maxLength`` get
``string_cap``; free strings may also get a no-newline ``pattern``; objects that list their
properties get ``additionalProperties: false``. Every output it allows is valid against the user's
schema too, which is the one validation always uses. The JSON is laid out on one line
(``SEPARATORS``), so there is no whitespace to run on either.

The local runtimes (transformers, llama.cpp) compile it; the remote backend sends it to servers.
"""

from __future__ import annotations

import copy
from typing import Any

from guardrail.schema_walk import DATA_KEYWORDS, MAP_KEYWORDS, VALIDATION_KEYWORDS, subschemas

__all__ = ["DEFAULT_STRING_CAP", "SEPARATORS", "VALIDATION_KEYWORDS", "decoding_schema", "validation_keywords"]

#: ``maxLength`` given to strings that have none. About 50 tokens: enough for names, addresses,
#: one-sentence summaries; short enough that a string that never closes ends soon.
DEFAULT_STRING_CAP = 200
#: How the JSON is laid out: on one line with these separators, as ``json.dumps`` writes it (and
#: so as the few-shot examples show it). Free whitespace lets a small model wander into runs of
#: newlines; on a sample of the shipped schemas the fixed layout was as accurate and 8% shorter.
SEPARATORS = (", ", ": ")
# A free string may not contain a line break: a newline inside a value is how a small model starts
# writing prose or the rest of the document into one field.
_NO_NEWLINE = "^[^\\n\\r]*$"


def decoding_schema(json_schema: Any, *, string_cap: int | None = DEFAULT_STRING_CAP,
                    forbid_newlines: bool = False, cap_patterns: bool = True, close_objects: bool = True) -> Any:
    """The schema the decoder is held to: ``json_schema`` tightened against runaway output.

    Every output it allows is valid against ``json_schema`` too, so the user's schema stays the
    one that validates. Changes, in positive positions only (never under ``not`` or ``if``):

    * a string without ``maxLength``, ``enum`` or ``const`` gets ``maxLength: string_cap``
      (at least its ``minLength``); ``string_cap=None`` leaves strings alone, and
      ``cap_patterns=False`` leaves those with a ``pattern`` or ``format`` alone (for engines that
      cannot apply both: outlines_core lets ``maxLength`` replace the pattern);
    * with ``forbid_newlines``, such a string that also has no ``pattern`` or ``format`` gets a
      pattern that rejects line breaks;
    * with ``close_objects``, an object that lists ``properties`` and says nothing about other
      properties gets ``additionalProperties: false``, unless the schema combines object schemas
      (``allOf``, ``$ref`` beside ``properties``...), where closing one part would reject the
      properties of another.

    >>> decoding_schema({"type": "object", "properties": {"a": {"type": "string"}}}, string_cap=50)
    {'type': 'object', 'properties': {'a': {'type': 'string', 'maxLength': 50}}, 'additionalProperties': False}
    """
    result = copy.deepcopy(json_schema)
    close = close_objects and not _combines_objects(result)
    _tighten(result, string_cap, forbid_newlines, cap_patterns, close)
    return result


def _tighten(node: Any, cap: int | None, forbid_newlines: bool, cap_patterns: bool, close: bool) -> None:
    if not isinstance(node, dict):
        return
    types = node.get("type")
    is_string = types == "string" or (isinstance(types, list) and "string" in types)
    if is_string and not {"maxLength", "enum", "const"} & node.keys():
        if cap is not None and (cap_patterns or not {"pattern", "format"} & node.keys()):
            minimum = node.get("minLength")
            node["maxLength"] = max(cap, minimum) if isinstance(minimum, int) else cap
        if forbid_newlines and not {"pattern", "format"} & node.keys():
            node["pattern"] = _NO_NEWLINE
    if (close and isinstance(node.get("properties"), dict)
            and not {"additionalProperties", "patternProperties", "unevaluatedProperties"} & node.keys()):
        node["additionalProperties"] = False
    # Positive positions only: narrowing inside not, if or propertyNames would widen (or shift) the whole.
    for _, sub in subschemas(node, positive_only=True):
        _tighten(sub, cap, forbid_newlines, cap_patterns, close)


def _combines_objects(node: Any) -> bool:
    """True if object schemas are merged anywhere (then no object may be closed)."""
    if isinstance(node, list):
        return any(_combines_objects(item) for item in node)
    if not isinstance(node, dict):
        return False
    if isinstance(node.get("allOf"), list) and len(node["allOf"]) > 1:
        return True
    if ("$ref" in node or "$dynamicRef" in node or "allOf" in node) and {
        "properties", "required", "patternProperties", "additionalProperties"
    } & node.keys():
        return True
    if "dependentSchemas" in node or "dependencies" in node or "if" in node:
        return True
    return any(_combines_objects(value) for key, value in node.items() if key not in DATA_KEYWORDS)


def validation_keywords(node: Any) -> set[str]:
    """Every validation keyword used anywhere in a schema (an unreachable $defs entry included).

    ``maxLength``/``minLength`` next to ``pattern`` or ``format`` count as ``"length with pattern"``,
    which the fallback engines drop.
    """
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            if key in DATA_KEYWORDS:  # values, not schemas
                found |= {key} & VALIDATION_KEYWORDS
            elif key in MAP_KEYWORDS and isinstance(value, dict):  # names -> schemas
                found |= {key} & VALIDATION_KEYWORDS
                stack.extend(value.values())
            elif key in VALIDATION_KEYWORDS:
                found.add(key)
                stack.append(value)
            elif isinstance(value, (dict, list)) and key not in ("required", "type"):
                stack.append(value)  # an unknown keyword holding schemas ($defs in older drafts...)
        if {"maxLength", "minLength"} & item.keys() and {"pattern", "format"} & item.keys():
            found.add("length with pattern")
    return found
