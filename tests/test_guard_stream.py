"""``Guard.stream``/``astream`` and the decorator's ``.stream``, driven by scripted callables.

The model is a plain Python function returning iterators of chunks (``CallableBackend`` streams
them as they come); the local runtimes, the llama.cpp server and the CLI have their own tests
(``test_local_stream.py``, ``test_streaming_remote.py``, ``test_cli.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import tenacity
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrail import Guard, GuardError, Result, StreamEvent, TransportError, guard
from guardrail.backends.base import Prompt
from guardrail.events import Event
from guardrail.leaves import resolve

NAME = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
NO_WAIT = tenacity.Retrying(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_none(),
                            retry=tenacity.retry_if_exception_type(TransportError))


def chunked(text: str, size: int = 4) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def scripted(*outputs: str | list[str | Exception]) -> Callable[[Prompt], Iterator[str]]:
    """A model that answers with ``outputs`` in turn, each as a stream of chunks (a str is cut in 4s);
    an exception in a list of chunks is raised there, after the chunks before it."""
    queue = list(outputs)

    def model(prompt: Prompt) -> Iterator[str]:
        answer = queue.pop(0)
        for piece in chunked(answer) if isinstance(answer, str) else answer:
            if isinstance(piece, Exception):
                raise piece
            yield piece

    return model


def kinds(events: list[Event]) -> list[str]:
    """Event kinds, runs of ``stream`` events shown once."""
    out: list[str] = []
    for event in events:
        if not (event.kind == "stream" and out and out[-1] == "stream"):
            out.append(event.kind)
    return out


def same_run(a: Result[Any], b: Result[Any]) -> None:
    """Two results of the same scripted outputs: equal in everything but timing."""
    assert (a.value, a.raw, a.ok) == (b.value, b.raw, b.ok)
    assert len(a.attempts) == len(b.attempts)
    for x, y in zip(a.attempts, b.attempts, strict=True):
        assert (x.prompt, x.output, x.issues, x.ended, x.error, x.reasoning, x.finish_reason) == \
               (y.prompt, y.output, y.issues, y.ended, y.error, y.reasoning, y.finish_reason)


# -- partial values ----------------------------------------------------------------------------

LEAVES = st.sampled_from([{"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"},
                          {"type": "null"}])
SCHEMAS = st.recursive(LEAVES, lambda inner: st.one_of(
    st.builds(lambda items: {"type": "array", "items": items, "maxItems": 4}, inner),
    st.dictionaries(st.text(min_size=1, max_size=4), inner, max_size=4).map(
        lambda members: {"type": "object", "properties": members, "required": sorted(members)}),
), max_leaves=8)


def instances(node: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Valid instances of a schema from ``SCHEMAS``."""
    if node["type"] == "object":
        return st.fixed_dictionaries({key: instances(sub) for key, sub in node["properties"].items()})
    if node["type"] == "array":
        return st.lists(instances(node["items"]), max_size=node["maxItems"])
    return {"string": st.text(max_size=8), "integer": st.integers(), "boolean": st.booleans(), "null": st.none(),
            "number": st.floats(allow_nan=False, allow_infinity=False)}[node["type"]]


def is_prefix(partial: Any, final: Any) -> bool:
    """Whether ``partial`` shows only what ``final`` holds: members and items so far, scalars whole."""
    if isinstance(partial, dict):
        return isinstance(final, dict) and all(k in final and is_prefix(v, final[k]) for k, v in partial.items())
    if isinstance(partial, list):
        return (isinstance(final, list) and len(partial) <= len(final)
                and all(is_prefix(a, b) for a, b in zip(partial, final, strict=False)))
    return type(partial) is type(final) and partial == final


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=SCHEMAS, data=st.data())
def test_every_partial_value_is_a_prefix_of_the_final_value(schema: dict[str, Any], data: st.DataObject) -> None:
    instance = data.draw(instances(schema), label="instance")
    text = json.dumps(instance, ensure_ascii=data.draw(st.booleans(), label="ascii"))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(len(text) - 1, 1)), max_size=12), label="cuts"))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True) if text[a:b]]
    shown: list[StreamEvent] = []
    result = None
    for event in Guard(schema, llm=lambda prompt: iter(chunks), retries=0).stream("Give it"):
        if isinstance(event, StreamEvent):
            shown.append(event)
            if event.value is not None:  # None until the document has begun
                assert is_prefix(event.value, instance), (event.value, instance)
            for pointer in event.completed:
                assert resolve(event.value, pointer) == resolve(instance, pointer)
        elif event.kind == "run_end":
            result = event.result
    assert result is not None and result.ok and result.value == instance
    assert "".join(e.text for e in shown) == text, "the stream shows the whole answer, once"
    assert shown[-1].done and shown[-1].value == instance
    completed = [p for e in shown for p in e.completed]
    assert len(completed) == len(set(completed)) and "" in completed, "each value completes once, the root last"
    assert completed[-1] == ""


def test_the_value_is_a_snapshot_later_pieces_do_not_change() -> None:
    events = [e for e in Guard(NAME, llm=scripted('{"name": "Ada", "age": 36}')).stream("Ada, 36")
              if isinstance(e, StreamEvent)]
    values = [e.value for e in events]
    # Read after the stream has ended: each event kept what it showed then.
    assert values[0] == {} and {"name": "Ada"} in values and values[-1] == {"name": "Ada", "age": 36}
    assert [p for e in events for p in e.completed] == ["/name", "/age", ""]


# -- re-asks and failures, as run has them -----------------------------------------------------

def test_a_stream_that_ends_invalid_is_re_asked_and_ends_as_run_ends() -> None:
    outputs = ['{"name": 7}', '{"name": "Ada", "age": 36}']
    seen: list[Event] = []
    streamed = list(Guard(NAME, llm=scripted(*outputs), hooks=[seen.append]).stream("Ada, 36"))
    assert kinds(streamed) == ["run_start", "attempt_start", "stream", "attempt_end", "retry", "attempt_start",
                               "stream", "attempt_end", "run_end"]
    assert seen == streamed, "hooks get every event the caller gets, in the same order"
    ended = [e for e in streamed if e.kind == "attempt_end"]
    assert [e.attempt.ended for e in ended] == ["invalid", "valid"]  # type: ignore[union-attr]
    assert ended[0].attempt.issues[0].path == "/name"  # type: ignore[union-attr]
    second = [e for e in streamed if isinstance(e, StreamEvent) and e.attempt == 2]
    assert len(second) > 3 and second[-1].value == {"name": "Ada", "age": 36}, "the re-ask streams too"
    final = streamed[-1].result  # type: ignore[union-attr]
    same_run(final, Guard(NAME, llm=scripted(*outputs)).run("Ada, 36"))
    assert "Your previous answer" in final.attempts[1].prompt and outputs[0] in final.attempts[1].prompt


def test_a_stream_cut_mid_way_is_retried_and_nothing_half_read_is_returned() -> None:
    cut: list[str | Exception] = ['{"name": "A', TransportError("connection reset mid-stream")]
    streamed = list(Guard(NAME, llm=scripted(cut, '{"name": "Ada"}'), retries=NO_WAIT).stream("Ada"))
    assert kinds(streamed) == ["run_start", "attempt_start", "stream", "attempt_end", "retry", "attempt_start",
                               "stream", "attempt_end", "run_end"]
    first = next(e for e in streamed if e.kind == "attempt_end").attempt  # type: ignore[union-attr]
    assert first.output is None and first.ended == "error" and first.error == "TransportError: connection reset mid-stream"
    shown = [e for e in streamed if isinstance(e, StreamEvent) and e.attempt == 1]
    assert shown and all(e.value is None or e.value == {} for e in shown), "the cut name never showed"
    result = streamed[-1].result  # type: ignore[union-attr]
    assert result.value == {"name": "Ada"} and result.raw == '{"name": "Ada"}'


def test_a_run_that_gives_up_ends_its_events_then_raises_as_run_does() -> None:
    events: list[Event] = []
    with pytest.raises(GuardError, match="no valid output after 2 attempts") as raised:
        events.extend(Guard(NAME, llm=scripted("{}", '{"nom": 1}'), retries=1).stream("Ada"))
    assert kinds(events)[-2:] == ["give_up", "run_end"]
    assert events[-1].result.error is raised.value  # type: ignore[union-attr]


def test_a_reasoning_model_streams_its_thinking_apart_and_the_answer_still_validates() -> None:
    chunks = ["<thi", "nk>The user wants", " the name.</th", 'ink>\n\n{"na', 'me": "Ada"}']
    events = [e for e in Guard(NAME, llm=lambda prompt: iter(chunks)).stream("Ada") if e.kind in ("stream", "run_end")]
    shown = [e for e in events if isinstance(e, StreamEvent)]
    assert "".join(e.reasoning for e in shown) == "The user wants the name."
    assert "".join(e.text for e in shown) == '{"name": "Ada"}'
    assert all("think" not in e.text for e in shown)
    attempt = events[-1].result.attempts[0]  # type: ignore[union-attr]
    assert (attempt.output, attempt.reasoning, attempt.ended) == ('{"name": "Ada"}', "The user wants the name.", "valid")


def test_async_streams_give_the_same_events_and_result() -> None:
    outputs = ['{"name": 7}', '{"name": "Ada"}']

    async def collect() -> list[Event]:
        return [event async for event in Guard(NAME, llm=scripted(*outputs)).astream("Ada")]

    events = asyncio.run(collect())
    streamed = list(Guard(NAME, llm=scripted(*outputs)).stream("Ada"))
    assert kinds(events) == kinds(streamed)
    same_run(events[-1].result, streamed[-1].result)  # type: ignore[union-attr]


def test_a_stream_read_only_in_part_ends_the_run() -> None:
    seen: list[Event] = []
    events = Guard(NAME, llm=scripted('{"name": "Ada", "age": 36}'), hooks=[seen.append]).stream("Ada")
    for event in events:
        if isinstance(event, StreamEvent):
            break
    events.close()  # type: ignore[attr-defined]
    assert kinds(seen)[-2:] == ["give_up", "run_end"]
    assert "the caller stopped reading the stream" in str(seen[-2].error)  # type: ignore[union-attr]


def test_voting_refuses_to_stream_with_the_reason() -> None:
    voter = Guard(NAME, llm=scripted('{"name": "Ada"}'), strategy="vote", samples=3)
    with pytest.raises(ValueError, match="strategy='vote' cannot stream: it draws several samples per round"):
        voter.stream("Ada")


def test_a_bad_prompt_or_context_is_refused_when_stream_is_called() -> None:
    g = Guard(NAME, llm=scripted())
    with pytest.raises(TypeError, match="prompt message 0: a chat message must be a dict"):
        g.stream(["Ada"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="context must be a dict"):
        g.stream("Ada", context="Ada")  # type: ignore[arg-type]


def test_a_raising_hook_does_not_break_a_stream(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: Event) -> None:
        raise RuntimeError("the hook is broken")

    with caplog.at_level(logging.WARNING, logger="guardrail"):
        events = list(Guard(NAME, llm=scripted('{"name": "Ada"}'), hooks=[broken]).stream("Ada"))
    assert events[-1].result.value == {"name": "Ada"}  # type: ignore[union-attr]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # Logged once per hook method (a plain callable takes every kind), later failures at DEBUG.
    assert warned[0].startswith("guardrail: hook test_a_raising_hook_does_not_break_a_stream.<locals>.broken raised "
                                "in on_run_start (the run goes on): RuntimeError: the hook is broken")
    assert len(warned) == len(set(warned)) == len({e.kind for e in events})


# -- the decorator ------------------------------------------------------------------------------

def test_the_decorator_streams_and_runs_with_context() -> None:
    @guard(NAME, retries=1)
    def ask(prompt: Prompt, style: str) -> Iterator[str]:
        assert style == "terse"
        yield from chunked('{"name": "Ada"}')

    assert ask("Ada", "terse") == {"name": "Ada"}
    events = list(ask.stream("Ada", "terse", context={"source": "crm"}))  # type: ignore[attr-defined]
    assert kinds(events) == ["run_start", "attempt_start", "stream", "attempt_end", "run_end"]
    result = ask.run("Ada", style="terse")  # type: ignore[attr-defined]
    assert result.ok and result.value == {"name": "Ada"}


def test_an_async_decorated_function_streams_asynchronously() -> None:
    @guard(NAME)
    async def ask(prompt: Prompt) -> AsyncIterator[str]:
        async def pieces() -> AsyncIterator[str]:
            for piece in chunked('{"name": "Ada"}'):
                yield piece

        return pieces()

    async def main() -> tuple[Any, list[Event], Result[Any]]:
        return (await ask("Ada"), [e async for e in ask.stream("Ada")],  # type: ignore[attr-defined]
                await ask.run("Ada"))  # type: ignore[attr-defined]

    value, events, result = asyncio.run(main())
    assert value == result.value == {"name": "Ada"}
    assert len([e for e in events if isinstance(e, StreamEvent)]) > 3


def test_a_backend_that_cannot_stream_streams_its_whole_answer_at_once() -> None:
    from collections.abc import Sequence

    from guardrail.backends.base import Backend, Generation, Sampling
    from guardrail.schema import Schema

    class Whole(Backend):
        wants_instructions = False

        def generate(self, prompts: Sequence[Prompt], schema: Schema, sampling: Sampling) -> list[Generation]:
            return [Generation('{"name": "Ada"}', completion_tokens=5, finish_reason="stop") for _ in prompts]

    [shown] = [e for e in Guard(NAME, llm=Whole()).stream("Ada") if isinstance(e, StreamEvent)]
    assert (shown.text, shown.value, shown.completed, shown.done) == ('{"name": "Ada"}', {"name": "Ada"}, ("/name", ""),
                                                                       True)
