"""The OpenAI-compatible remote backend (``guardrail.backends.remote``).

Two kinds of test:

* error mapping, retries and request shapes against ``tests/fault_proxy.py`` with no upstream: a
  loopback HTTP server answering canned statuses and canned chat completions (fast, no model);
* the real thing, marked ``server``: llama-cpp-python's OpenAI-compatible server, started once
  per session on a free loopback port with the embedded SmolLM2-135M GGUF and one thread, with
  the fault proxy in front where faults or request times are needed. Skipped, with the reason,
  when llama_cpp's server or the GGUF is not installed.
"""

from __future__ import annotations

import asyncio
import json
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from fault_proxy import Exchange, Fault, FaultProxy, completion
from llama_server import MODEL_ALIAS, llama_server, server_missing
from typer.testing import CliRunner

from guardrail import BackendError, Guard, GuardError, TransportError
from guardrail.backends import resolve
from guardrail.backends.base import Sampling
from guardrail.backends.embedded import find_embedded_gguf
from guardrail.backends.remote import STRUCTURED_MODES, RemoteBackend, TransportTimeout, _structured_fields
from guardrail.report import run_report
from guardrail.report.cli import register
from guardrail.schema import Schema
from guardrail.suite import parse_suite

NAME = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def max_in_flight(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    open_now = peak = 0
    for _, step in events:
        open_now += step
        peak = max(peak, open_now)
    return peak


# -- without a model: canned answers from the loopback proxy ----------------------------------


def test_a_base_url_selects_the_remote_backend_and_model_names_the_servers_model() -> None:
    guard: Guard[Any] = Guard(NAME, base_url="http://127.0.0.1:9/v1/", model="smollm2", timeout_s=5)
    backend = guard.backend
    assert isinstance(backend, RemoteBackend)
    assert (backend.base_url, backend.model, backend.timeout_s, backend.structured) == (
        "http://127.0.0.1:9/v1", "smollm2", 5.0, "auto")
    with pytest.raises(ValueError, match="structured must be one of"):
        resolve(None, "m", base_url="http://127.0.0.1:9/v1", structured="grammar")
    with pytest.raises(ValueError, match="base_url"):
        resolve(None, "m", base_url="127.0.0.1:9")
    with pytest.raises(ValueError, match="not both"):
        resolve(lambda p: "{}", None, base_url="http://127.0.0.1:9/v1")


def test_each_mode_puts_the_schema_where_its_servers_read_it() -> None:
    schema = {"type": "object"}
    assert _structured_fields("json_schema", schema, "my contact!", strict=True) == {
        "response_format": {"type": "json_schema", "json_schema": {"name": "my_contact_", "schema": schema,
                                                                   "strict": True}}}
    assert _structured_fields("json_object", schema, "x", False) == {
        "response_format": {"type": "json_object", "schema": schema}}
    assert _structured_fields("vllm", schema, "x", False) == {"structured_outputs": {"json": schema}}
    assert _structured_fields("guided_json", schema, "x", False) == {"guided_json": schema}
    assert _structured_fields("prompt", schema, "x", False) == {}
    assert set(STRUCTURED_MODES) == {"auto", "json_schema", "json_object", "vllm", "guided_json", "prompt"}


def test_request_carries_sampling_the_tightened_schema_and_the_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    with FaultProxy(None, [completion('{"name": "Ada"}'), completion("not json"), completion('{"name": "Ada"}')]) as proxy:
        guard: Guard[Any] = Guard(NAME, base_url=proxy.url + "/v1", model="m", structured="vllm", seed=7, top_k=5,
                                  repetition_penalty=1.1, max_new_tokens=33)
        assert guard.run("Ada Lovelace").value == {"name": "Ada"}
        unconstrained = guard.run("Ada Lovelace", constrained=False)
        sent, free, _ = (e.body for e in proxy.exchanges())
        headers = proxy.exchanges()[0].headers
    assert headers["Authorization"] == "Bearer sk-test-123"
    assert (sent["model"], sent["temperature"], sent["max_tokens"], sent["seed"], sent["top_k"]) == ("m", 0.0, 33, 7, 5)
    assert sent["repetition_penalty"] == sent["repeat_penalty"] == 1.1
    assert sent["messages"][0]["role"] == "system" and sent["messages"][-1] == {"role": "user",
                                                                                "content": "Ada Lovelace"}
    # The decoding schema: strings capped, objects closed; validation still uses the user's schema.
    assert sent["structured_outputs"]["json"]["properties"]["name"]["maxLength"] == 200
    assert sent["structured_outputs"]["json"]["additionalProperties"] is False
    # Unconstrained (the report's comparison mode) sends no schema, and the invalid answer is re-asked.
    assert "structured_outputs" not in free and "response_format" not in free
    assert [a.ended for a in unconstrained.attempts] == ["invalid", "valid"]


def test_503_with_and_without_retry_after_is_retried_with_backoff_and_recorded() -> None:
    faults = [Fault(503, headers={"Retry-After": "1"}), Fault(503), completion('{"name": "Ada"}')]
    with FaultProxy(None, faults) as proxy:
        guard: Guard[Any] = Guard(NAME, base_url=proxy.url + "/v1", model="m")
        result = guard.run("Ada")
        first, second, third = proxy.exchanges()
    assert result.value == {"name": "Ada"}
    assert [a.ended for a in result.attempts] == ["error", "error", "valid"]
    assert result.attempts[0].error.startswith("TransportError: HTTP 503 Service Unavailable from POST")
    assert "(Retry-After: 1 s)" in result.attempts[0].error and "Retry-After" not in result.attempts[1].error
    assert second.started - first.ended >= 1.0, "Retry-After: 1 must be honoured"
    assert third.started - second.ended >= 0.5, "the default backoff waits at least 0.5 s"


def test_429_carries_retry_after_and_status() -> None:
    with FaultProxy(None, [Fault(429, headers={"Retry-After": "0.2"})]) as proxy:
        backend = RemoteBackend(proxy.url + "/v1", "m", structured="prompt")
        with pytest.raises(TransportError) as caught:
            backend.generate(["hi"], Schema.load(NAME), Sampling())
    assert (caught.value.status, caught.value.retry_after) == (429, 0.2)
    assert backend.log[-1].status == 429 and backend.log[-1].error is not None


@pytest.mark.parametrize(("status", "hint"), [(400, "bad request body"), (401, "OPENAI_API_KEY"),
                                              (403, "OPENAI_API_KEY"), (404, "base_url")])
def test_other_4xx_end_at_once_with_a_clear_error(status: int, hint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    body = {"error": {"message": "bad request body", "type": "invalid_request_error"}}
    with FaultProxy(None, [Fault(status, body=body)] * 3) as proxy:
        guard: Guard[Any] = Guard(NAME, base_url=proxy.url + "/v1", model="m", structured="prompt", retries=2)
        with pytest.raises(GuardError, match="not retried") as caught:
            guard.run("Ada")
        assert len(proxy.exchanges()) == 1
    cause = caught.value.__cause__
    assert type(cause) is BackendError and hint in str(cause) and f"HTTP {status}" in str(cause)
    assert len(caught.value.attempts) == 1 and caught.value.attempts[0].ended == "error"


def test_connection_refused_is_a_transport_error_naming_the_url() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    guard: Guard[Any] = Guard(NAME, base_url=f"http://127.0.0.1:{port}/v1", model="m", retries=1)
    with pytest.raises(GuardError, match="failed 2 times") as caught:
        guard.run("Ada")
    assert all(f"cannot connect to http://127.0.0.1:{port}/v1/chat/completions" in (a.error or "")
               for a in caught.value.attempts)
    assert isinstance(caught.value.__cause__, TransportError)


def test_a_timeout_is_recorded_as_such_and_retried() -> None:
    with FaultProxy(None, [completion('{"name": "late"}'), completion('{"name": "Ada"}')]) as proxy:
        proxy.faults[0].delay_s = 1.5
        guard: Guard[Any] = Guard(NAME, base_url=proxy.url + "/v1", model="m", timeout_s=0.3)
        result = guard.run_many(["Ada"])[0]
    assert result.value == {"name": "Ada"}
    assert [a.ended for a in result.attempts] == ["timeout", "valid"]
    assert "TransportTimeout: could not get a response from" in (result.attempts[0].error or "")
    assert issubclass(TransportTimeout, TimeoutError) and issubclass(TransportTimeout, TransportError)


def test_auto_steps_down_from_json_schema_when_the_server_refuses_it() -> None:
    refusal = Fault(422, body={"detail": [{"loc": ["body", "response_format", "type"],
                                           "msg": "Input should be 'text' or 'json_object'"}]})
    with FaultProxy(None, [refusal, completion('{"name": "Ada"}'), completion('{"name": "Bo"}')]) as proxy:
        guard: Guard[Any] = Guard(NAME, base_url=proxy.url + "/v1", model="m")
        with pytest.warns(RuntimeWarning, match="refused structured output as 'json_schema'"):
            assert guard.run("Ada").value == {"name": "Ada"}
        assert guard.run("Bo").value == {"name": "Bo"}
        kinds = [e.body["response_format"]["type"] for e in proxy.exchanges()]
    assert kinds == ["json_schema", "json_object", "json_object"]
    assert guard.backend.describe()["structured"] == "auto (json_object)"


def test_a_chosen_mode_that_the_server_refuses_is_not_stepped_down() -> None:
    refusal = Fault(422, body={"detail": "response_format: json_schema is not supported"})
    with FaultProxy(None, [refusal]) as proxy:
        guard: Guard[Any] = Guard(NAME, base_url=proxy.url + "/v1", model="m", structured="json_schema")
        with pytest.raises(GuardError, match="may not support structured='json_schema'"):
            guard.run("Ada")


def test_without_a_model_name_the_servers_only_model_is_used() -> None:
    models = Fault(200, body={"object": "list", "data": [{"id": "only-one", "object": "model"}]})
    with FaultProxy(None, [models, completion('{"name": "Ada"}')], faulted="/v1/") as proxy:
        guard: Guard[Any] = Guard(NAME, base_url=proxy.url + "/v1")
        assert guard.run("Ada").value == {"name": "Ada"}
        listing, chat = proxy.exchanges()
    assert (listing.method, listing.path, chat.body["model"]) == ("GET", "/v1/models", "only-one")


def test_logprobs_refusals_and_lengths_are_read_from_the_response() -> None:
    with_logprobs = completion('{"name": "A"}')
    with_logprobs.body["choices"][0]["logprobs"] = {"content": [{"token": '{"name": "A"}', "logprob": -0.25}]}
    refusal = completion("")
    refusal.body["choices"][0]["message"] = {"role": "assistant", "content": None, "refusal": "I can't."}
    cut = completion('{"name": "A', finish_reason="length")
    with FaultProxy(None, [with_logprobs, refusal, cut]) as proxy:
        backend = RemoteBackend(proxy.url + "/v1", "m", logprobs=True)
        schema, sampling = Schema.load(NAME), Sampling()
        first, second, third = (backend.generate(["x"], schema, sampling)[0] for _ in range(3))
        assert proxy.exchanges()[0].body["logprobs"] is True
    assert first.logprobs == [('{"name": "A"}', -0.25)] and first.finish_reason == "stop"
    assert (first.prompt_tokens, first.completion_tokens) == (10, 5)
    assert second.text == "I can't."
    assert third.finish_reason == "length"


def test_run_many_keeps_up_to_n_requests_in_flight() -> None:
    slow = [completion('{"name": "Ada"}') for _ in range(6)]
    for fault in slow:
        fault.delay_s = 0.3
    with FaultProxy(None, slow) as proxy:
        guard: Guard[Any] = Guard(NAME, base_url=proxy.url + "/v1", model="m")
        results = guard.run_many(["Ada"] * 6, concurrency=3)
        spans = [(e.started, e.ended) for e in proxy.exchanges()]
    assert all(r.ok for r in results)
    assert max_in_flight(spans) == 3
    assert max_in_flight([(r.started, r.ended) for r in guard.backend.log]) == 3


def test_the_async_client_is_closed_with_its_event_loop() -> None:
    with FaultProxy(None, [completion('{"name": "Ada"}'), completion('{"name": "Bo"}')]) as proxy:
        guard: Guard[Any] = Guard(NAME, base_url=proxy.url + "/v1", model="m")
        assert asyncio.run(guard.arun("Ada")).value == {"name": "Ada"}
        clients = [held[0] for held in guard.backend._aclients.values()]  # type: ignore[attr-defined]
        assert asyncio.run(guard.arun("Bo")).value == {"name": "Bo"}  # a new loop gets a new client
    assert all(c.is_closed for c in clients)


def test_a_report_records_the_server_but_never_the_api_key(tmp_path: Path) -> None:
    suite = {"name": "names", "schema": NAME, "instruction": "Extract the name.",
             "cases": [{"id": "a", "input": "Ada Lovelace wrote notes", "gold": {"name": "Ada"}},
                       {"id": "b", "input": "Bo Diddley played guitar", "gold": {"name": "Bo"}}]}
    with FaultProxy(None, [completion('{"name": "Ada"}') for _ in range(4)]) as proxy:
        done = run_report(parse_suite(suite), "m", ["case"], [0.5], 1, out_dir=tmp_path, n_boot=10,
                          backend_options={"base_url": proxy.url + "/v1", "api_key": "sk-secret"},
                          concurrency=2)
        sent = proxy.exchanges()
    assert done.rows_done == 4 and len(sent) == 4
    assert all(e.headers["Authorization"] == "Bearer sk-secret" for e in sent)
    for name in ("run.json", "report.json", "report.md", "report.html", "results.jsonl"):
        assert "sk-secret" not in (tmp_path / name).read_text(), name


# -- against llama-cpp-python's OpenAI-compatible server on loopback --------------------------

CODE = {"type": "object", "required": ["code", "count"],
        "properties": {"code": {"enum": ["XQ-7", "ZZ-9"]}, "count": {"type": "integer", "minimum": 100}}}
PERSON = {"type": "object", "required": ["name", "city"],
          "properties": {"name": {"type": "string"}, "city": {"type": "string"}}}


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    """The base URL (``http://127.0.0.1:PORT/v1``) of a llama-cpp-python server running the embedded GGUF."""
    missing = server_missing()
    if missing:
        pytest.skip(missing)
    try:
        gguf = find_embedded_gguf()
    except BackendError as exc:
        pytest.skip(f"the embedded GGUF is not installed: {exc}")
    with llama_server(gguf, threads=1) as base_url:
        yield base_url


@pytest.fixture
def proxy(server: str) -> Iterator[FaultProxy]:
    """A fault proxy in front of the server (empty fault queue: it only forwards and logs)."""
    with FaultProxy(server.removesuffix("/v1")) as running:
        yield running


def chat_exchanges(proxy: FaultProxy) -> list[Exchange]:
    return proxy.exchanges("/chat/completions")


@pytest.mark.server
def test_server_side_constrained_output_is_valid_where_the_same_prompt_alone_is_not(proxy: FaultProxy) -> None:
    prompt = "Ticket code XQ-7, 250 units."
    constrained: Guard[Any] = Guard(CODE, base_url=proxy.url + "/v1", model=MODEL_ALIAS, structured="json_object",
                                    max_new_tokens=48, retries=1)
    result = constrained.run(prompt)  # sync path
    again = asyncio.run(constrained.arun(prompt))  # async path
    assert result.value == again.value == {"code": "XQ-7", "count": 250}
    assert [a.ended for a in result.attempts] == ["valid"] and result.attempts[0].completion_tokens
    sent = chat_exchanges(proxy)[0].body["response_format"]
    assert sent["type"] == "json_object" and sent["schema"]["properties"]["code"] == {"enum": ["XQ-7", "ZZ-9"]}

    free: Guard[Any] = Guard(CODE, base_url=proxy.url + "/v1", model=MODEL_ALIAS, structured="prompt",
                             max_new_tokens=48, retries=0)
    first = free.run_many([prompt])[0].attempts[0]
    assert first.ended == "invalid", f"the model's unconstrained answer was expected to be invalid: {first.output!r}"


@pytest.mark.server
def test_auto_mode_settles_on_json_object_with_llama_cpp_python(proxy: FaultProxy) -> None:
    guard: Guard[Any] = Guard(PERSON, base_url=proxy.url + "/v1", max_new_tokens=48)  # no model: the server's only
    with pytest.warns(RuntimeWarning, match="refused structured output as 'json_schema'"):
        result = guard.run("Carla Dias works downtown in Braga")
    assert result.value == {"name": "Carla Dias", "city": "Braga"}
    assert [(r.status, r.structured) for r in guard.backend.log] == [(200, None), (500, "json_schema"),
                                                                     (200, "json_object")]
    assert guard.backend.describe()["structured"] == "auto (json_object)"
    assert guard.backend.model == MODEL_ALIAS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # settled: no second warning, no second refusal
        guard.run("Diego Alves was born in Faro")
    assert [e.body["response_format"]["type"] for e in chat_exchanges(proxy)] == ["json_schema", "json_object",
                                                                                 "json_object"]


@pytest.mark.server
def test_prompt_only_output_is_validated_and_re_asked_with_the_issues(proxy: FaultProxy) -> None:
    """Greedy SmolLM2-135M echoes this text instead of JSON when nothing constrains it.

    The re-ask (its previous answer and the issues, as chat turns) goes back to the server; the
    135M model usually repeats itself, so the test asserts the loop, not the model's recovery.
    """
    guard: Guard[Any] = Guard(PERSON, base_url=proxy.url + "/v1", model=MODEL_ALIAS, structured="prompt",
                              max_new_tokens=48, retries=1)
    result = guard.run_many(["Bruno Lima moved to Porto last spring"])[0]
    first, second = result.attempts
    assert first.ended == "invalid" and first.issues and first.output
    ask, reask = (e.body for e in chat_exchanges(proxy))
    assert "response_format" not in ask and "response_format" not in reask
    assert reask["messages"][:-2] == ask["messages"]
    assert reask["messages"][-2] == {"role": "assistant", "content": first.output}
    assert first.issues[0].message in reask["messages"][-1]["content"]
    assert result.ok == (second.ended == "valid")
    assert result.ok or "no valid output after 2 attempts" in str(result.error)

    fixed = Guard(PERSON, base_url=proxy.url + "/v1", model=MODEL_ALIAS, structured="json_object",
                  max_new_tokens=48).run("Bruno Lima moved to Porto last spring")
    assert fixed.value == {"name": "Bruno Lima", "city": "Porto"}, "the server-side constraint fixes the same prompt"


@pytest.mark.server
def test_503_twice_is_retried_with_backoff_then_forwarded_to_the_server(proxy: FaultProxy) -> None:
    proxy.add(Fault(503, headers={"Retry-After": "1"}), Fault(503))
    guard: Guard[Any] = Guard(PERSON, base_url=proxy.url + "/v1", model=MODEL_ALIAS, structured="json_object",
                              max_new_tokens=48)
    result = guard.run("Carla Dias works downtown in Braga")
    assert result.value == {"name": "Carla Dias", "city": "Braga"}
    assert [a.ended for a in result.attempts] == ["error", "error", "valid"]
    assert all("TransportError: HTTP 503" in (a.error or "") for a in result.attempts[:2])
    first, second, third = chat_exchanges(proxy)
    assert (first.injected, second.injected, third.injected, third.status) == (True, True, False, 200)
    assert second.started - first.ended >= 1.0, "Retry-After: 1 was not honoured"
    assert third.started - second.ended >= 0.5, "no backoff before the third attempt"


@pytest.mark.server
def test_a_wrong_path_is_a_404_that_is_not_retried(server: str) -> None:
    guard: Guard[Any] = Guard(PERSON, base_url=server.removesuffix("/v1"), model=MODEL_ALIAS, retries=3)
    with pytest.raises(GuardError, match="not retried") as caught:
        guard.run("Carla Dias works downtown in Braga")
    assert len(caught.value.attempts) == 1 and len(guard.backend.log) == 1
    assert "HTTP 404" in str(caught.value) and "check base_url" in str(caught.value)


@pytest.mark.server
def test_a_server_too_slow_for_the_timeout_is_recorded_and_retried(proxy: FaultProxy) -> None:
    proxy.add(Fault(503, delay_s=6.0))  # never seen: the client gives up first
    guard: Guard[Any] = Guard(PERSON, base_url=proxy.url + "/v1", model=MODEL_ALIAS, structured="json_object",
                              max_new_tokens=48, timeout_s=5.0)
    result = guard.run_many(["Carla Dias works downtown in Braga"])[0]
    assert [a.ended for a in result.attempts] == ["timeout", "valid"]
    assert "within 5 s" in (result.attempts[0].error or "")
    assert 5.0 <= result.attempts[0].duration_s < 6.0


@pytest.mark.server
def test_concurrency_n_keeps_n_requests_in_flight(proxy: FaultProxy) -> None:
    """Seen from the client and the proxy: requests overlap. llama-cpp-python's server then computes
    them one at a time (it holds a lock per model), so this shows bounded concurrency, not speed."""
    texts = ["Ana Souza lives in Lisbon", "Carla Dias works in Braga", "Diego Alves was born in Faro",
             "Eva Reis moved to Coimbra"]
    guard: Guard[Any] = Guard(PERSON, base_url=proxy.url + "/v1", model=MODEL_ALIAS, structured="json_object",
                              max_new_tokens=32, retries=0)
    results = guard.run_many(texts, concurrency=4)
    assert all(r.attempts for r in results)
    together = [(e.started, e.ended) for e in chat_exchanges(proxy)]
    assert len(together) == 4 and max_in_flight(together) >= 3
    assert max_in_flight([(r.started, r.ended) for r in guard.backend.log]) >= 3

    start = len(chat_exchanges(proxy))
    guard.run_many(texts[:2], concurrency=1)
    one_by_one = [(e.started, e.ended) for e in chat_exchanges(proxy)[start:]]
    assert len(one_by_one) == 2 and max_in_flight(one_by_one) == 1


@pytest.mark.server
def test_a_report_runs_against_the_server(proxy: FaultProxy, tmp_path: Path) -> None:
    suite = {"name": "people", "schema": PERSON, "instruction": "Extract the person's name and city as JSON.",
             "cases": [{"id": "p1", "input": "Ana Souza lives in Lisbon", "gold": {"name": "Ana Souza", "city": "Lisbon"}},
                       {"id": "p2", "input": "Carla Dias works in Braga", "gold": {"name": "Carla Dias", "city": "Braga"}}]}
    path = tmp_path / "people.yaml"
    path.write_text(json.dumps(suite), encoding="utf-8")
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """guardrail (test app)"""

    register(app)
    out = tmp_path / "out"
    done = CliRunner().invoke(app, ["report", str(path), "--base-url", proxy.url + "/v1", "--model", MODEL_ALIAS,
                                    "--structured", "json_object", "--concurrency", "2", "--perturb", "case",
                                    "--severity", "0.3", "--seeds", "1", "--max-new-tokens", "32", "--out", str(out)])
    assert done.exit_code == 0, done.output
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["rows_done"] == 4 and report["run"]["complete"]
    assert report["model"]["backend"] == "remote" and report["model"]["base_url"] == proxy.url + "/v1"
    assert json.loads((out / "run.json").read_text())["config"]["backend"]["structured"] == "json_object"
    assert report["score"] is not None
    spans = [(e.started, e.ended) for e in chat_exchanges(proxy)]
    assert len(spans) >= 4 and max_in_flight(spans) == 2
