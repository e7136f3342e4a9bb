"""Per-field confidence from token log-probabilities.

A backend that knows them fills ``Generation.logprobs``: the output's tokens in order, each with
the natural-log probability the model gave it (the local backend: under the *constrained
distribution*, the model's next-token distribution at temperature 1 restricted to what the
grammar allows; see ``guardrail.backends.local``). From those and the output text,
``field_confidence`` gives each leaf field of the answer (``guardrail.leaves``) a number in
[0, 1]:

    confidence(field) = exp(Σ log p(token))  over the tokens whose text overlaps the field's value

that is, the **product** of the chosen tokens' probabilities: the probability, under the
model's distribution and given everything before the value, that it spells exactly this value.
The value's span is its JSON text: a string with its quotes (the closing quote is the decision
to stop), an array with its brackets (the closing bracket is the decision to add no more items),
a number or literal as written. A token that also spells neighbouring characters (``",`` or
``: ["``) counts in full. A token that spells no character of its own (the first byte of a
multi-byte character) belongs to the character it helps spell.

Why the product and not the geometric mean: tokens the grammar forces (``"``, ``]``, the rest
of an enum value) have probability 1 and leave the product unchanged, so the figure does not
depend on how much forced syntax a value happens to share a token with; a geometric mean would
be pulled towards 1 by them, and would rate a long value whose every token was a coin flip as
confident as a short one. The product is not length-neutral, on purpose: a long value has more
places to go wrong.

The end of a number or literal is decided by the token after it (``,`` or ``}``), which is
counted only when it also spells part of the value. Fields absent from the answer have no
confidence (nothing was spelled).

>>> text = '{"city": "Oslo", "n": 3}'
>>> tokens = [('{"', 0.0), ('city', 0.0), ('": "', 0.0), ('Os', -0.1), ('lo', -0.2), ('",', 0.0),
...           (' "n', -0.5), ('": ', 0.0), ('3', -0.3), ('}', 0.0)]
>>> conf = field_confidence(text, tokens, ["/city", "/n"])
>>> round(conf["/city"], 4), round(conf["/n"], 4)
(0.7408, 0.7408)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Sequence
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

from guardrail.leaves import escape, value_leaves

#: Deeper nesting than this is not scanned (the validator refuses it anyway).
MAX_DEPTH = 200
#: How many ``{``/``[`` positions are tried when the JSON does not start the text.
MAX_STARTS = 64

_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_WS = " \t\n\r"
_LITERALS = {"true": True, "false": False, "null": None}


class _NotJson(ValueError):
    pass


def scan(text: str, start: int = 0) -> tuple[Any, dict[str, tuple[int, int]], int]:
    """Parse one JSON value at ``text[start:]`` and say where every part of it is.

    Returns the value, ``pointer -> (start, end)`` character offsets of every node (objects,
    arrays and scalars, the root included as ``""``), and where the value ends. Raises
    ``ValueError`` when the text there is not JSON. The standard ``json`` module parses but gives
    no positions, hence this small scanner.

    >>> value, spans, end = scan('{"a": [1, "x"]}')
    >>> spans["/a"], spans["/a/1"], end
    ((6, 14), (10, 13), 15)
    """
    spans: dict[str, tuple[int, int]] = {}

    def skip(i: int) -> int:
        while i < len(text) and text[i] in _WS:
            i += 1
        return i

    def value(i: int, path: str, depth: int) -> tuple[Any, int]:
        if depth > MAX_DEPTH:
            raise _NotJson("too deep")
        i = skip(i)
        if i >= len(text):
            raise _NotJson("unexpected end")
        char = text[i]
        if char == "{":
            out: dict[str, Any] = {}
            j = skip(i + 1)
            if j < len(text) and text[j] == "}":
                spans[path] = (i, j + 1)
                return out, j + 1
            while True:
                if j >= len(text) or text[j] != '"':
                    raise _NotJson("expected a key")
                key, j = scanstring(text, j + 1)
                j = skip(j)
                if j >= len(text) or text[j] != ":":
                    raise _NotJson("expected ':'")
                out[key], j = value(j + 1, f"{path}/{escape(key)}", depth + 1)
                j = skip(j)
                if j < len(text) and text[j] == ",":
                    j = skip(j + 1)
                    continue
                if j < len(text) and text[j] == "}":
                    spans[path] = (i, j + 1)
                    return out, j + 1
                raise _NotJson("expected ',' or '}'")
        if char == "[":
            items: list[Any] = []
            j = skip(i + 1)
            if j < len(text) and text[j] == "]":
                spans[path] = (i, j + 1)
                return items, j + 1
            while True:
                item, j = value(j, f"{path}/{len(items)}", depth + 1)
                items.append(item)
                j = skip(j)
                if j < len(text) and text[j] == ",":
                    j += 1
                    continue
                if j < len(text) and text[j] == "]":
                    spans[path] = (i, j + 1)
                    return items, j + 1
                raise _NotJson("expected ',' or ']'")
        if char == '"':
            string, j = scanstring(text, i + 1)
            spans[path] = (i, j)
            return string, j
        for word, literal in _LITERALS.items():
            if text.startswith(word, i):
                spans[path] = (i, i + len(word))
                return literal, i + len(word)
        match = _NUMBER.match(text, i)
        if match:
            number = match.group()
            spans[path] = (i, match.end())
            return (float(number) if any(c in number for c in ".eE") else int(number)), match.end()
        raise _NotJson(f"unexpected {char!r}")

    try:
        found, end = value(start, "", 0)
    except (_NotJson, json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise ValueError(f"not JSON at {start}: {exc}") from None
    return found, spans, end


def locate(text: str, parsed: Any = ...) -> tuple[Any, dict[str, tuple[int, int]]] | None:
    """Find the JSON value in ``text`` (the whole text, else one starting at a ``{`` or ``[``).

    With ``parsed`` (what validation read), only a value equal to it is accepted, so a fenced or
    prose-wrapped answer is located where validation found it. ``None`` when nothing matches.

    >>> locate('Sure: {"a": 1}', {"a": 1})[1]["/a"]
    (12, 13)
    """
    first = len(text) - len(text.lstrip(_WS))
    starts = [first, *[m.start() for _, m in zip(range(MAX_STARTS), re.finditer(r"[{\[]", text), strict=False)]]
    for start in dict.fromkeys(starts):
        try:
            found, spans, _ = scan(text, start)
        except ValueError:
            continue
        if parsed is ... or _same(found, parsed):
            return found, spans
    return None


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return False


def token_offsets(tokens: Sequence[tuple[str, float]]) -> list[tuple[int, int]]:
    """Each token's character range in the joined text; a token with no text of its own gets the
    range of the next token that has some (the one completing the character it started)."""
    ranges: list[tuple[int, int]] = []
    position = 0
    for piece, _ in tokens:
        ranges.append((position, position + len(piece)))
        position += len(piece)
    following: tuple[int, int] | None = None
    for i in range(len(ranges) - 1, -1, -1):
        start, end = ranges[i]
        if start == end:
            if following is not None:
                ranges[i] = following
        else:
            following = ranges[i]
    return ranges


def span_confidence(tokens: Sequence[tuple[str, float]], start: int, end: int,
                    offsets: Sequence[tuple[int, int]] | None = None) -> float | None:
    """The product of the probabilities of the tokens overlapping ``text[start:end]``, in [0, 1].

    >>> span_confidence([("ab", -0.5), ("cd", -0.5)], 1, 3) == math.exp(-1.0)
    True
    """
    ranges = token_offsets(tokens) if offsets is None else offsets
    total = 0.0
    hit = False
    for (piece_start, piece_end), (_, logprob) in zip(ranges, tokens, strict=True):
        if piece_start < end and piece_end > start:
            hit = True
            total += logprob
    if not hit or math.isnan(total):
        return None
    return min(1.0, max(0.0, math.exp(min(total, 0.0))))


def field_confidence(text: str, tokens: Sequence[tuple[str, float]] | None, leaves: Collection[str] = (),
                     parsed: Any = ...) -> dict[str, float] | None:
    """``pointer -> confidence`` for every leaf field present in the answer (module docstring).

    ``leaves`` are the schema's leaf pointers (``guardrail.leaves.schema_leaves``): they decide
    where a value stops being walked into (arrays are always whole). ``parsed`` is the value
    validation read, to find the JSON in a longer text. ``None`` when the tokens are unknown, do
    not join to ``text``, or no JSON is found.
    """
    if not tokens or "".join(piece for piece, _ in tokens) != text:
        return None
    found = locate(text, parsed)
    if found is None:
        return None
    value, spans = found
    offsets = token_offsets(tokens)
    out: dict[str, float] = {}
    for pointer in value_leaves(value, leaves):
        span = spans.get(pointer)
        if span is None:
            continue
        conf = span_confidence(tokens, span[0], span[1], offsets)
        if conf is not None:
            out[pointer] = conf
    return out
