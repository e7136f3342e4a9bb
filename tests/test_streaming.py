"""Streaming from backends (``Backend.stream``/``astream``), without a model server.

Callable streams use scripted chunk functions; the remote backend reads canned server-sent
event streams from the loopback fault proxy (``tests/fault_proxy.py``). The same against the real
llama.cpp server: ``tests/test_streaming_remote.py``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from fault_proxy import Fault, FaultProxy, chunk, completion, sse

from guardrail import BackendError, TransportError
from guardrail.backends.base import Backend, Generation, Prompt, Sampling, StreamDelta, assemble
from guardrail.backends.callable import CallableBackend
from guardrail.backends.remote import RemoteBackend
from guardrail.schema import Schema

NAME = Schema.load({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]})
SAMPLING = Sampling(max_new_tokens=32)
PIECES = ['{"na', 'me": "A', "da", '"}']


def collect(backend: Backend, prompt: Prompt = "Ada") -> list[StreamDelta]:
    return list(backend.stream(prompt, NAME, SAMPLING))


def acollect(backend: Backend, prompt: Prompt = "Ada") -> list[StreamDelta]:
    async def run() -> list[StreamDelta]:
        return [delta async for delta in backend.astream(prompt, NAME, SAMPLING)]

    return asyncio.run(run())


# -- the default: a backend that cannot stream -------------------------------------------------


class Whole(Backend):
    """A backend with only ``generate``: the default ``stream`` yields its result as one delta."""

    wants_instructions = False

    def generate(self, prompts: Sequence[Prompt], schema: Schema, sampling: Sampling) -> list[Generation]:
        return [Generation(f'{{"name": "{p}"}}', prompt_tokens=3, completion_tokens=5, finish_reason="stop")
                for p in prompts]


def test_a_backend_that_cannot_stream_yields_its_whole_answer_as_one_final_delta() -> None:
    expected = [StreamDelta('{"name": "Ada"}', final=True, prompt_tokens=3, completion_tokens=5, finish_reason="stop")]
    assert collect(Whole()) == acollect(Whole()) == expected
    assert assemble(expected) == Generation('{"name": "Ada"}', 3, 5, "stop")


# -- callables -----------------------------------------------------------------------------


def test_a_generator_function_streams_its_chunks_and_generate_joins_them() -> None:
    def model(prompt: Prompt) -> Iterator[str]:
        yield from PIECES

    backend = CallableBackend(model)
    deltas = collect(backend)
    assert [d.text for d in deltas] == [*PIECES, ""] and [d.final for d in deltas] == [False] * 4 + [True]
    assert acollect(backend) == deltas
    assert backend.generate(["Ada"], NAME, SAMPLING)[0].text == '{"name": "Ada"}'
    assert asyncio.run(backend.agenerate(["Ada"], NAME, SAMPLING))[0].text == '{"name": "Ada"}'


def test_async_generators_and_async_functions_returning_iterators_stream() -> None:
    async def agen(prompt: Prompt) -> AsyncIterator[str]:
        for piece in PIECES:
            await asyncio.sleep(0)
            yield piece

    async def returns_iterator(prompt: Prompt) -> Iterator[str]:
        return iter(PIECES)

    for fn in (agen, returns_iterator):
        backend = CallableBackend(fn)
        assert [d.text for d in acollect(backend)] == [*PIECES, ""], fn.__name__
        assert [d.text for d in collect(backend)] == [*PIECES, ""], f"{fn.__name__} from sync code"
        assert backend.generate(["Ada"], NAME, SAMPLING)[0].text == '{"name": "Ada"}'


def test_a_function_returning_text_streams_it_as_one_delta() -> None:
    backend = CallableBackend(lambda prompt: '{"name": "Ada"}')
    assert collect(backend) == acollect(backend) == [StreamDelta('{"name": "Ada"}', final=True)]


def test_openai_style_chunks_and_stream_deltas_carry_reasoning_counts_and_the_finish_reason() -> None:
    chunks: list[Any] = [
        chunk(reasoning="The name is Ada."), chunk('{"name": '), chunk('"Ada"}', finish_reason="stop"),
        {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 7}},
    ]
    backend = CallableBackend(lambda prompt: iter(chunks))
    deltas = collect(backend)
    assert [(d.text, d.reasoning) for d in deltas] == [("", "The name is Ada."), ('{"name": ', ""), ('"Ada"}', ""),
                                                      ("", ""), ("", "")]
    assert deltas[-1] == StreamDelta(final=True, prompt_tokens=12, completion_tokens=7, finish_reason="stop")
    assert assemble(deltas) == Generation('{"name": "Ada"}', 12, 7, "stop", reasoning="The name is Ada.")
    own = CallableBackend(lambda prompt: iter([StreamDelta("{}", "hmm"), StreamDelta(final=True, finish_reason="length")]))
    assert collect(own)[-1] == StreamDelta(final=True, finish_reason="length")


def test_a_chunk_of_the_wrong_type_is_a_clear_error() -> None:
    backend = CallableBackend(lambda prompt: iter(["{", 42]))
    stream = backend.stream("Ada", NAME, SAMPLING)
    assert next(stream).text == "{"
    with pytest.raises(BackendError, match=r"the LLM function's stream yielded int \(chunk 2\)"):
        next(stream)


def test_a_blocking_sync_generator_does_not_block_the_event_loop() -> None:
    released = threading.Event()

    def model(prompt: Prompt) -> Iterator[str]:
        yield '{"name": '
        if not released.wait(timeout=30):  # only the event loop can set it
            raise AssertionError("the event loop was blocked by the generator")
        yield '"Ada"}'

    async def run() -> list[str]:
        texts = []
        async for delta in CallableBackend(model).astream("Ada", NAME, SAMPLING):
            texts.append(delta.text)
            if len(texts) == 1:
                asyncio.get_running_loop().call_soon(released.set)
        return texts

    assert asyncio.run(run()) == ['{"name": ', '"Ada"}', ""]


# -- remote: canned event streams from the loopback proxy ---------------------------------------


def remote(proxy: FaultProxy, **options: Any) -> RemoteBackend:
    return RemoteBackend(proxy.url + "/v1", "m", **options)


def test_a_remote_stream_yields_deltas_reasoning_and_a_final_delta_with_usage() -> None:
    events = [chunk(reasoning="Ada is "), chunk(reasoning="the name."), chunk('{"name":'),
              chunk(' "Ada"}', finish_reason="stop"),
              {"id": "x", "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 9}}]
    stream = sse(*events)
    stream.body = b": ping - 2024-01-01 00:00:00\n\n" + stream.body  # a keep-alive comment, as servers send
    with FaultProxy(None, [stream, sse(*events)]) as proxy:
        backend = remote(proxy, structured="json_object")
        deltas = collect(backend)
        again = acollect(backend)
        sent = proxy.exchanges()[0].body
    assert deltas == again
    assert [(d.text, d.reasoning) for d in deltas[:-1]] == [("", "Ada is "), ("", "the name."), ('{"name":', ""),
                                                           (' "Ada"}', "")]
    assert deltas[-1] == StreamDelta(final=True, prompt_tokens=20, completion_tokens=9, finish_reason="stop")
    assert (sent["stream"], sent["stream_options"]) == (True, {"include_usage": True})
    assert sent["response_format"]["type"] == "json_object" and sent["messages"] == [{"role": "user", "content": "Ada"}]
    assert [(r.status, r.error) for r in backend.log] == [(200, None), (200, None)]


def test_a_finish_reason_without_done_is_a_complete_stream_but_neither_is_a_cut() -> None:
    with FaultProxy(None, [sse(chunk("{}", finish_reason="length"), done=False),
                           sse(chunk('{"name": "A'), done=False)]) as proxy:
        backend = remote(proxy)
        assert collect(backend)[-1] == StreamDelta(final=True, finish_reason="length")
        with pytest.raises(TransportError, match=r"ended before the answer was complete \(connection closed after 1 "
                                                 r"events, without \[DONE\]\)"):
            collect(backend)
    assert backend.log[-1].error is not None and "ended before" in backend.log[-1].error


@pytest.mark.parametrize(("stream", "error", "message"), [
    (Fault(200, b"<html>\n<body>Bad gateway</body>\n", headers={"Content-Type": "text/event-stream"}), TransportError,
     r"is not server-sent events: line 1 is '<html>'"),
    (sse("{not json"), TransportError, r"sent an event whose data is not JSON \(event 1\): '\{not json'"),
    (sse('["a list"]'), TransportError, "sent an event that is not a JSON object"),
    (sse(chunk("{"), {"error": {"message": "engine overloaded", "code": 503}}), TransportError,
     "the server reported an error in the stream from .*: engine overloaded"),
    (sse({"error": {"message": "context length exceeded", "code": 400}}), BackendError, "context length exceeded"),
])
def test_bad_streams_are_errors_naming_what_was_wrong(stream: Fault, error: type[Exception], message: str) -> None:
    with FaultProxy(None, [stream]) as proxy, pytest.raises(error, match=message) as caught:
        collect(remote(proxy))
    assert error is TransportError or not isinstance(caught.value, TransportError), "a 400 is not retried"


def test_a_connection_cut_mid_stream_is_a_transport_error() -> None:
    full = sse(chunk('{"name": '), chunk('"Ada"'), chunk("}", finish_reason="stop"))
    cut = Fault(200, full.body, headers=full.headers, cut_after_events=2)
    clean = Fault(200, full.body, headers=full.headers, cut_after_events=2, clean_close=True)
    with FaultProxy(None, [cut, clean]) as proxy:
        backend = remote(proxy)
        received: list[str] = []
        with pytest.raises(TransportError, match=r"RemoteProtocolError talking to .*/chat/completions"):
            for delta in backend.stream("Ada", NAME, SAMPLING):
                received.append(delta.text)
        assert received == ['{"name": ', '"Ada"'], "what came before the cut was handed out, but never a final delta"
        with pytest.raises(TransportError, match="ended before the answer was complete"):
            acollect(backend)
        assert [e.cut for e in proxy.exchanges()] == [True, True]


def test_errors_before_the_stream_map_as_for_a_whole_answer() -> None:
    refusal = Fault(422, body={"detail": [{"loc": ["body", "response_format", "type"], "msg": "Input should be 'text'"}]})
    with FaultProxy(None, [Fault(503, headers={"Retry-After": "2"}), refusal, sse(chunk("{}", finish_reason="stop")),
                           completion('{"name": "Ada"}')]) as proxy:
        backend = remote(proxy)
        with pytest.raises(TransportError) as caught:
            collect(backend)
        assert (caught.value.status, caught.value.retry_after) == (503, 2.0)
        with pytest.warns(RuntimeWarning, match="refused structured output as 'json_schema'"):
            assert [d.text for d in collect(backend)] == ["{}", ""]
        # A server that ignores "stream": true and answers one JSON completion streams it as one delta.
        assert collect(backend) == [StreamDelta('{"name": "Ada"}', final=True, prompt_tokens=10, completion_tokens=5,
                                                finish_reason="stop")]
        kinds = [e.body.get("response_format", {}).get("type") for e in proxy.exchanges()]
    assert kinds == ["json_schema", "json_schema", "json_object", "json_object"]


def test_a_remote_answer_keeps_the_servers_reasoning() -> None:
    answer = completion('{"name": "Ada"}')
    answer.body["choices"][0]["message"]["reasoning_content"] = "The name is Ada."
    with FaultProxy(None, [answer]) as proxy:
        generation = remote(proxy).generate(["Ada"], NAME, SAMPLING)[0]
    assert (generation.text, generation.reasoning) == ('{"name": "Ada"}', "The name is Ada.")
