"""Incremental partial JSON (``guardrail.partial``): what a stream shows is always final."""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrail.leaves import escape, split
from guardrail.partial import PartialJSON, PartialUpdate

SCALARS = (st.none() | st.booleans() | st.integers(-(10**20), 10**20)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner,
                                                                                            max_size=5), max_leaves=25)
CONTAINERS = st.lists(VALUES, max_size=5) | st.dictionaries(st.text(max_size=6), VALUES, max_size=5)
# What models write around the JSON; validation digs the document out of each of these.
BEFORE = ["", "  \n", "Sure! ", "```json\n", "Here is the record:\n```json\n", "Answer: "]
AFTER = ["", "\n", "\n```", "\n```\nHope this helps."]


def same(a: Any, b: Any) -> bool:
    """Equal, with types compared too (``1 != 1.0 != True`` here) and key order kept."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def is_prefix(part: Any, final: Any) -> bool:
    """``part`` shows only final things: present leaves are final, lists are leading items, keys a subset."""
    if isinstance(final, dict):
        return isinstance(part, dict) and set(part) <= set(final) and all(is_prefix(v, final[k]) for k, v in part.items())
    if isinstance(final, list):
        return (isinstance(part, list) and len(part) <= len(final)
                and all(is_prefix(p, f) for p, f in zip(part, final, strict=False)))
    return same(part, final)


def resolve(value: Any, pointer: str) -> Any:
    for key in split(pointer):
        value = value[int(key)] if isinstance(value, list) else value[key]
    return value


def pointers(value: Any, at: str = "") -> set[str]:
    """Every JSON Pointer in ``value``: each value inside it, and the whole (``""``)."""
    found = {at}
    if isinstance(value, dict):
        for key, item in value.items():
            found |= pointers(item, f"{at}/{escape(key)}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found |= pointers(item, f"{at}/{index}")
    return found


def stream(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(text)}), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def check_stream(text: str, final: Any, chunks: list[str]) -> list[PartialUpdate]:
    """Feed the chunks; check every update against the final value; return the updates."""
    reader = PartialJSON()
    seen: set[str] = set()
    previous: Any = None
    updates = []
    for chunk in chunks:
        update = reader.feed(chunk)
        updates.append(update)
        assert update.error is None, (text, update.error)
        snapshot = copy.deepcopy(update.value)
        if update.started:
            assert is_prefix(snapshot, final), (snapshot, final)
            if previous is not None:
                assert is_prefix(previous, snapshot), "a member or item disappeared or changed"
            previous = snapshot
        for pointer in update.completed:
            assert pointer not in seen, f"{pointer!r} completed twice"
            seen.add(pointer)
            assert same(resolve(update.value, pointer), resolve(final, pointer)), pointer
    end = reader.finish()
    updates.append(end)
    seen.update(end.completed)
    assert end.done and end.error is None
    assert same(end.value, final), (end.value, final)
    assert seen == pointers(final), "every value inside the document completes exactly once"
    return updates


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=CONTAINERS, data=st.data())
def test_every_partial_value_is_a_prefix_of_the_final_one(value: Any, data: st.DataObject) -> None:
    ensure_ascii = data.draw(st.booleans(), "ensure_ascii")  # True: \uXXXX escapes and surrogate pairs
    indent = data.draw(st.sampled_from([None, 2]), "indent")
    document = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)
    text = data.draw(st.sampled_from(BEFORE), "before") + document + data.draw(st.sampled_from(AFTER), "after")
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=40), "cuts")
    final = json.loads(document)
    check_stream(text, final, stream(text, cuts))


@settings(max_examples=100, deadline=None)
@given(value=SCALARS, data=st.data())
def test_a_top_level_scalar_is_the_value_at_the_end(value: Any, data: st.DataObject) -> None:
    text = json.dumps(value, ensure_ascii=data.draw(st.booleans())) + data.draw(st.sampled_from(["", " ", "\n"]))
    updates = check_stream(text, json.loads(text), stream(text, data.draw(st.lists(st.integers(0, len(text))))))
    assert all(not u.started for u in updates[:-1]), "a scalar shows only once the text has ended"


def test_a_half_written_scalar_never_shows() -> None:
    for text in ['{"a": "hel', '{"a": 12', '{"a": tr', '{"a": -', '{"a": "x\\', '{"a": "\\u00', '{"a": 1.5e']:
        reader = PartialJSON()
        assert reader.feed(text).value == {}, text
        assert reader.finish().value == {} and not reader.done
    assert PartialJSON().feed('{"list": [1, 2, {"b": "x"}, "ab').value == {"list": [1, 2, {"b": "x"}]}


def test_escapes_and_unicode_split_at_every_character() -> None:
    document = '{"k\\"ey": "a\\"b\\\\c\\/d\\n\\t\\u00e9\\ud83d\\ude00 z\\ud800\\n!\\udc00", "é": ["😀"]}'
    expected = json.loads(document)
    for cut in range(len(document) + 1):
        for step in (1, 3):
            chunks = [document[:cut], *(document[i : i + step] for i in range(cut, len(document), step))]
            assert check_stream(document, expected, chunks)[-1].value == expected


def test_completed_pointers_are_escaped_and_inner_before_outer() -> None:
    update = PartialJSON().feed('{"a/b": {"c~d": [true, {}]}, "": 0}')
    assert update.completed == ("/a~1b/c~0d/0", "/a~1b/c~0d/1", "/a~1b/c~0d", "/a~1b", "/", "")


def test_prose_and_fences_before_the_document_are_skipped_as_validation_does() -> None:
    for text in ['```json\n{"a": 1}\n```', 'Sure! Here it is: {"a": 1} Anything else?', 'the answer is {"a": 1}',
                 '3 items follow: {"a": 1}', 'nothing yet\n[{"a": 1}]']:
        reader = PartialJSON()
        reader.feed(text)
        assert reader.done and reader.value in ({"a": 1}, [{"a": 1}]), text
    # A text that starts as a scalar is that scalar only if nothing else follows.
    assert PartialJSON().feed('"yes" {"a": 1}').value == {"a": 1}
    reader = PartialJSON()
    reader.feed("42  ")
    assert reader.finish().value == 42


def test_a_syntax_error_stops_the_reader_and_says_where() -> None:
    reader = PartialJSON()
    first = reader.feed('{"a": 1, "b": [2,')
    stopped = reader.feed(' ]}')
    assert stopped.error == "not valid JSON at offset 18 of the text: expected a value, found ']'"
    assert stopped.value == first.value == {"a": 1, "b": [2]} and not stopped.done and not stopped.completed
    assert reader.feed('{"later": 1}').value == {"a": 1, "b": [2]}, "nothing more is read after an error"
    for bad, message in [('{"a": NaN}', "expected a value, found 'N'"), ('{"a": 01}', "'01' is not a JSON number"),
                         ('{"a" 1}', "expected ':'"), ("{'a': 1}", "member name in double quotes"),
                         ('{"a": "x\ny"}', "control character '\\n' inside a string"),
                         ('{"a": "\\q"}', "invalid escape \\q"), ('{"a": "\\u12G4"}', "'G' is not a hex digit"),
                         ('{"a": nul}', "expected 'null', found 'nul}'"), ('[1 2]', "expected ',' or ']'")]:
        error = PartialJSON().feed(bad).error
        assert error is not None and message in error, (bad, error)
        with pytest.raises(json.JSONDecodeError):
            json.loads(bad.replace("NaN", "Nan"))


def test_misuse_is_a_clear_error() -> None:
    reader = PartialJSON()
    with pytest.raises(TypeError, match="takes text"):
        reader.feed(b"{}")  # type: ignore[arg-type]
    reader.finish()
    with pytest.raises(ValueError, match="after finish"):
        reader.feed("{}")
