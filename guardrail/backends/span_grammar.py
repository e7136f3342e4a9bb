"""A grammar that holds chosen string fields to spans of the input, for llguidance (Lark syntax).

``span_lark`` rewrites a decoding schema as a Lark grammar in which every string of the chosen
fields (``guardrail.extractive``) is ``"`` + a span of the input + ``"``: llguidance's
``%regex {"substring_chunks": [...]}`` matches any run of consecutive chunks of the input, so the
model can write nothing but text that occurs there. The rest of the schema keeps llguidance's
own JSON Schema compiler: every subschema that holds no chosen field is embedded as
``%json {...}``, so only the path from the root to the chosen fields is written out here
(objects with listed properties, nullable alternatives, lists of strings).

The input is split into chunks of its JSON-escaped form: runs of word characters, runs of
whitespace, and single other characters, an escape sequence (``\\"``, ``\\n``, ``\\u00e9``)
always one chunk. A span therefore starts and ends on a chunk boundary (no half words, no half
escapes), and an intersection with a regex keeps it non-empty and free of spaces at either end.

A structure this translation does not cover (``oneOf`` beyond a nullable alternative, objects
open to other properties, ``uniqueItems``...) is embedded as ``%json`` whole: its fields are then
checked after decoding only. ``span_lark`` says which fields it holds while decoding.

Both local runtimes build and keep these grammars through ``cached_span_grammar``: one per
schema and input (an input recurs with its re-asks and votes), at most ``SPAN_GRAMMARS`` per
model, and the schema's own grammar, with a warning, when none can be built.

>>> lark, held = span_lark({"type": "object", "properties": {"city": {"type": "string"}},
...                         "required": ["city"], "additionalProperties": False}, ["/city"], "Rain in Oslo")
>>> held
('/city',)
>>> print(lark.splitlines()[0], "|", lark.splitlines()[2])
start: r1 | r1: "{" r0 "}"
"""

from __future__ import annotations

import json
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from guardrail.backends.decoding_schema import SEPARATORS
from guardrail.extractive import string_node
from guardrail.schema_walk import VALIDATION_KEYWORDS, Refs, escape

if TYPE_CHECKING:
    from guardrail.extractive import Spans
    from guardrail.schema import Schema

__all__ = ["MAX_INPUT_CHARS", "SPAN_GRAMMARS", "cached_span_grammar", "span_lark"]

#: Inputs longer than this are checked after decoding only: the span automaton grows with the
#: input, and a grammar this size would cost more per token than it saves.
MAX_INPUT_CHARS = 20_000
#: Grammars held to one input's spans kept per model (an input recurs with its re-asks and votes).
SPAN_GRAMMARS = 256
_CHUNK = re.compile(r"\\u[0-9a-fA-F]{4}|\\.|\w+|\s+|.", re.DOTALL)
_MAX_DEPTH = 32


def span_lark(schema: Any, fields: Sequence[str], text: str,
              separators: tuple[str, str] = SEPARATORS) -> tuple[str, tuple[str, ...]]:
    """``(grammar, fields held while decoding)`` for a decoding schema; no field held: ``("", ())``."""
    if len(text) > MAX_INPUT_CHARS:
        raise ValueError(f"the input has {len(text)} characters; spans are held while decoding only up to "
                         f"{MAX_INPUT_CHARS}")
    translator = _Translator(schema, tuple(fields), separators)
    start = translator.value(schema, "", 0, frozenset())
    if not translator.held:
        return "", ()
    chunks = _CHUNK.findall(json.dumps(text, ensure_ascii=False)[1:-1])
    lines = [f"start: {start}", *translator.rules,
             'span_string: "\\"" SPAN "\\""',
             f"SPAN: %regex {json.dumps({'substring_chunks': chunks}, ensure_ascii=False)} & /[^ ]|[^ ].*[^ ]/"]
    held = tuple(f for f in fields if f in translator.held)
    return "\n".join(lines) + "\n", held


_G = TypeVar("_G")


def cached_span_grammar(cache: OrderedDict[tuple[Any, ...], _G], lock: AbstractContextManager[Any], schema: Schema,
                        string_cap: int | None, spans: Spans, plain: _G, *, target: Callable[[], Any],
                        compile_lark: Callable[[str], _G], refused: str = "", stacklevel: int = 1) -> _G:
    """The grammar holding ``spans.fields`` to spans of ``spans.text``, kept in ``cache`` (guarded by
    ``lock``); ``plain``, the schema's own grammar, with a warning, when it cannot be built.

    Kept per (schema, ``string_cap``, fields, input), at most ``SPAN_GRAMMARS``, the least recently
    used out first; a fallback to ``plain`` is kept too, so its warning comes once per input.
    On a miss, ``target()`` gives the decoding schema and ``compile_lark`` compiles the Lark
    grammar ``span_lark`` writes from it (raising ``EngineRefused`` or ``ValueError`` if it cannot);
    ``refused``: why not to try at all. ``stacklevel``: as the caller would give ``warnings.warn``.
    """
    from guardrail.backends.local.engines import EngineRefused

    key = (schema.hash, string_cap, spans.fields, spans.text)
    with lock:
        found = cache.get(key)
        if found is not None:
            cache.move_to_end(key)
            return found
    reason = refused
    if not refused:
        decoding = target()
        try:
            lark, held = span_lark(decoding, spans.fields, spans.text)
            found = compile_lark(lark) if held else None
            if not held:
                reason = "no chosen field lies where the grammar can hold it"
        except (ValueError, EngineRefused) as exc:
            reason = str(exc)
    if found is None:
        warnings.warn(f"guardrail: extractive fields of schema {schema.name!r} are checked after decoding only: "
                      f"{reason}", RuntimeWarning, stacklevel=stacklevel + 1)
        found = plain
    with lock:
        cache[key] = found
        while len(cache) > SPAN_GRAMMARS:
            cache.popitem(last=False)
    return found


class _Translator:
    def __init__(self, root: Any, fields: tuple[str, ...], separators: tuple[str, str]) -> None:
        self.root = root
        self.fields = fields
        self.item_separator, self.key_separator = separators
        self.refs = Refs(root)
        self.rules: list[str] = []
        self.held: set[str] = set()
        self._names = 0
        self._options = {"whitespace_flexible": False, "item_separator": separators[0],
                         "key_separator": separators[1]}

    def rule(self, body: str) -> str:
        """A new rule with ``body``; returns its name."""
        name = f"r{self._names}"
        self._names += 1
        self.rules.append(f"{name}: {body}")
        return name

    def needed(self, path: str) -> bool:
        return any(f == path or f.startswith(path + "/") for f in self.fields)

    def value(self, node: Any, path: str, depth: int, active: frozenset[int]) -> str:
        """An expression for the values of ``node`` at ``path``."""
        if not self.needed(path) or depth > _MAX_DEPTH:
            return self.json(node)
        followed = self.refs.follow(node, active)
        if followed is None:  # recursion: leave it to the JSON compiler
            return self.json(node)
        node, active = followed
        if not isinstance(node, Mapping):
            return self.json(node)
        if path in self.fields:
            found = self.span_field(node)
            if found is not None:
                self.held.add(path)
                return found
            return self.json(node)
        all_of = node.get("allOf")
        if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], Mapping):
            merged = {**all_of[0], **{k: v for k, v in node.items() if k != "allOf"}}
            return self.value(merged, path, depth + 1, active)
        for key in ("anyOf", "oneOf"):
            branches = node.get(key)
            if isinstance(branches, list) and set(node) - {key, "description", "title"} == set():
                others = [b for b in branches if not _is_null(b)]
                if len(others) == 1 and len(branches) == 2:  # Optional[X]
                    return f'({self.value(others[0], path, depth + 1, active)} | "null")'
                return self.json(node)
        types = node.get("type")
        names = [types] if isinstance(types, str) else list(types) if isinstance(types, list) else ["object"]
        if set(names) <= {"object", "null"} and "object" in names and self.closed_object(node):
            body = self.object(node, path, depth, active)
            return f'({body} | "null")' if "null" in names else body
        return self.json(node)

    def span_field(self, node: Mapping[str, Any]) -> str | None:
        """The expression for a chosen field: a span string or a list of them (None: not one).

        The fields were chosen on the user's schema; the ``maxLength`` and no-newline ``pattern`` the
        decoding schema added to their strings are not shape keywords, so they do not count here.
        """
        if string_node(node) is not None:
            return '(span_string | "null")' if _nullable(node) else "span_string"
        types = node.get("type")
        translated = {"type", "items", "minItems", "maxItems"}  # any other constraint: left to the JSON compiler
        if (types in ("array", ["array", "null"], ["null", "array"]) and string_node(node.get("items")) is not None
                and not set(node) & (VALIDATION_KEYWORDS - translated)):
            item = '(span_string | "null")' if _nullable(node["items"]) else "span_string"
            low, high = node.get("minItems", 0), node.get("maxItems")
            if not isinstance(low, int) or not (high is None or isinstance(high, int)):
                return None
            body = self.items(item, low, high)
            if isinstance(types, list):
                body = f'({body} | "null")'
            return body
        return None

    def items(self, item: str, low: int, high: int | None) -> str:
        sep = _literal(self.item_separator)
        if high == 0:
            return self.rule('"[" "]"')
        more_low = max(low - 1, 0)
        repeat = f"{{{more_low},}}" if high is None else f"{{{more_low},{high - 1}}}"
        filled = f'"[" {item} ({sep} {item}){repeat} "]"'
        return self.rule(filled if low >= 1 else f'"[" "]" | {filled}')

    def closed_object(self, node: Mapping[str, Any]) -> bool:
        """An object of listed properties and nothing else, each member written out in turn."""
        translated = {"type", "properties", "required", "additionalProperties"}
        return (isinstance(node.get("properties"), Mapping) and node.get("additionalProperties") is False
                and not set(node) & (VALIDATION_KEYWORDS - translated))

    def object(self, node: Mapping[str, Any], path: str, depth: int, active: frozenset[int]) -> str:
        """Members in the schema's order, each optional one present or not, separated as the layout says."""
        required = set(node.get("required") or ())
        members = []
        for name, sub in node["properties"].items():
            key = _literal(json.dumps(name, ensure_ascii=False) + self.key_separator)
            members.append((f"{key} {self.value(sub, f'{path}/{escape(name)}', depth + 1, active)}", name in required))
        sep = _literal(self.item_separator)
        following: str | None = None  # the rule for "members from i on, at least one"
        empty_after = True  # whether no member from i on is required
        for member, is_required in reversed(members):
            choices = []
            if empty_after:
                choices.append(member)
            if following is not None:
                choices.append(f"{member} {sep} {following}")
                if not is_required:
                    choices.append(following)
            following = self.rule(" | ".join(choices))
            empty_after = empty_after and not is_required
        if following is None:
            return self.rule('"{" "}"')
        return self.rule(f'"{{" {following} "}}"' + (' | "{" "}"' if empty_after else ""))

    def json(self, node: Any) -> str:
        """``node`` left to llguidance's JSON Schema compiler, with the root's definitions beside it."""
        document: Any = node if isinstance(node, Mapping) else ({} if node is True else {"not": {}})
        document = dict(document)
        if _has_ref(document) and isinstance(self.root, Mapping):
            for key in ("$defs", "definitions"):
                if isinstance(self.root.get(key), Mapping):
                    document.setdefault(key, self.root[key])
        document["x-guidance"] = self._options
        return self.rule(f"%json {json.dumps(document, ensure_ascii=False)}")


def _literal(text: str) -> str:
    """A Lark string literal for ``text``."""
    return json.dumps(text, ensure_ascii=False)


def _is_null(node: Any) -> bool:
    return isinstance(node, Mapping) and (node.get("type") == "null" or ("const" in node and node["const"] is None))


def _nullable(node: Any) -> bool:
    if not isinstance(node, Mapping):
        return False
    types = node.get("type")
    if isinstance(types, list):
        return "null" in types
    return any(_is_null(b) for key in ("anyOf", "oneOf") for b in node.get(key) or [])


def _has_ref(node: Any) -> bool:
    if isinstance(node, Mapping):
        return "$ref" in node or any(_has_ref(v) for k, v in node.items() if k not in ("enum", "const"))
    if isinstance(node, list):
        return any(_has_ref(v) for v in node)
    return False
