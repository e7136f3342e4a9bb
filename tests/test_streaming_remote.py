"""Streaming from llama-cpp-python's OpenAI-compatible server (marker ``server``).

The server is ``tests/test_remote_backend.py``'s ``server`` fixture (the embedded SmolLM2-135M
GGUF on a loopback port, one thread), with a fault proxy in front. Skipped, with the reason,
when llama_cpp's server or the GGUF is not installed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
import tenacity
from fault_proxy import Fault, FaultProxy
from llama_server import MODEL_ALIAS
from test_remote_backend import PERSON, server  # noqa: F401 - the server fixture, reused

from guardrail import Guard, StreamEvent, TransportError, validate
from guardrail.backends.base import Sampling, StreamDelta, assemble
from guardrail.backends.remote import RemoteBackend
from guardrail.schema import Schema

pytestmark = pytest.mark.server

PROMPT = [{"role": "system", "content": "Extract the person's name and city as JSON."},
          {"role": "user", "content": "Carla Dias works downtown in Braga"}]
SAMPLING = Sampling(max_new_tokens=48)


@pytest.fixture
def forwarding(server: str) -> Iterator[FaultProxy]:  # noqa: F811 - ``server`` is the imported fixture
    """A fault proxy in front of the server: it forwards, logs, and cuts streams when told."""
    with FaultProxy(server.removesuffix("/v1")) as running:
        yield running


def test_a_stream_from_the_server_is_the_answer_generate_gives_token_by_token(forwarding: FaultProxy) -> None:
    proxy = forwarding
    schema = Schema.load(PERSON)
    backend = RemoteBackend(proxy.url + "/v1", MODEL_ALIAS, structured="json_object")
    deltas = list(backend.stream(PROMPT, schema, SAMPLING))

    async def astream() -> list[StreamDelta]:
        return [d async for d in backend.astream(PROMPT, schema, SAMPLING)]

    again = asyncio.run(astream())
    whole = backend.generate([PROMPT], schema, SAMPLING)[0]
    streamed = assemble(deltas)
    assert streamed.text == assemble(again).text == whole.text, "greedy: the stream spells the same answer"
    assert json.loads(streamed.text) == {"name": "Carla Dias", "city": "Braga"}
    assert validate(schema, streamed.text).ok
    assert len(deltas) > 5 and all(not d.final for d in deltas[:-1]), "one delta per token or so"
    assert deltas[-1].final and deltas[-1].text == "" and deltas[-1].finish_reason == "stop"
    sent = [e.body for e in proxy.exchanges("/chat/completions")]
    assert [b["stream"] for b in sent] == [True, True, False]
    assert sent[0]["response_format"]["type"] == "json_object" and sent[0]["messages"] == PROMPT
    assert [(r.status, r.error) for r in backend.log] == [(200, None)] * 3


def test_a_stream_cut_by_the_proxy_is_a_transport_error(forwarding: FaultProxy) -> None:
    proxy = forwarding
    proxy.add(Fault(forward=True, cut_after_events=4), Fault(forward=True, cut_after_events=4, clean_close=True))
    backend = RemoteBackend(proxy.url + "/v1", MODEL_ALIAS, structured="json_object")
    schema = Schema.load(PERSON)
    received: list[StreamDelta] = []
    with pytest.raises(TransportError, match="RemoteProtocolError"):
        received.extend(backend.stream(PROMPT, schema, SAMPLING))
    assert received and not any(d.final for d in received), "deltas came, the final one never did"
    with pytest.raises(TransportError, match="ended before the answer was complete"):
        list(backend.stream(PROMPT, schema, SAMPLING))
    assert [e.cut for e in proxy.exchanges("/chat/completions")] == [True, True]
    assert all(r.error for r in backend.log)


def test_a_guard_streams_from_the_server_and_retries_a_stream_cut_mid_way(forwarding: FaultProxy) -> None:
    proxy = forwarding
    proxy.add(Fault(forward=True, cut_after_events=6))
    retries = tenacity.Retrying(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(0.01),
                                retry=tenacity.retry_if_exception_type(TransportError))
    g = Guard(PERSON, base_url=proxy.url + "/v1", model=MODEL_ALIAS, structured="json_object", retries=retries,
              max_new_tokens=48)
    events = list(g.stream(PROMPT))
    assert [e.kind for e in events if e.kind != "stream"] == [
        "run_start", "attempt_start", "attempt_end", "retry", "attempt_start", "attempt_end", "run_end"]
    cut = [e for e in events if isinstance(e, StreamEvent) and e.attempt == 1]
    whole = [e for e in events if isinstance(e, StreamEvent) and e.attempt == 2]
    assert cut and not any(e.done for e in cut), "the first answer broke off"
    result = events[-1].result  # type: ignore[union-attr]
    first = result.attempts[0]
    assert first.output is None and first.ended == "error" and first.error.startswith("TransportError: ")
    assert len(whole) > 5 and whole[-1].done and whole[-1].value == result.value
    assert result.value == g.run(PROMPT).value, "the streamed answer is the one run gets"
    assert [e.body["stream"] for e in proxy.exchanges("/chat/completions")] == [True, True, False]
