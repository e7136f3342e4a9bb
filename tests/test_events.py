"""Events of a run (``guardrail.events``): log records, hooks and OpenTelemetry spans.

``drive`` below plays the guard loop's part with the real pieces: a ``CallableBackend`` around
scripted outputs, ``validate``, and the ``RunEvents`` calls the loop makes. The guard's own calls
are tested in ``test_guard_events.py`` (and a stream's in ``test_guard_stream.py``).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guardrail import BackendError, GuardError, TransportError, validate
from guardrail.backends.base import Backend, Prompt, Sampling
from guardrail.backends.callable import CallableBackend
from guardrail.backends.remote import RemoteBackend
from guardrail.events import Observer, RunEvents, StreamEvent, engine_fallback
from guardrail.result import Attempt, Result
from guardrail.retry import InvalidOutput
from guardrail.schema import Schema

ROOT = Path(__file__).resolve().parents[1]
PERSON = Schema.load({"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}})


def scripted(*outputs: str | Exception) -> Callable[[Any], str]:
    """A model that answers with ``outputs`` in turn (an exception is raised instead)."""
    queue = list(outputs)

    def model(prompt: Any) -> str:
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return model


def drive(observer: Observer, backend: Backend, prompt: Prompt, attempts: int, waits: float = 1.5) -> Result[Any]:
    """A guard loop's calls into ``RunEvents``: call, validate, retry (failed calls after ``waits``) or give up."""
    run = observer.run(prompt, schema=PERSON.name, backend=backend, engine="llguidance")
    history: list[Attempt] = []
    sampling = Sampling(max_new_tokens=64)
    for number in range(1, attempts + 1):
        run.attempt_started(prompt, sampling)
        try:
            generation = backend.generate([prompt], PERSON, sampling)[0]
        except Exception as exc:  # recorded as the loop records it
            attempt = Attempt(prompt, None, error=f"{type(exc).__name__}: {exc}", ended="error")
            history.append(attempt)
            run.attempt_ended(attempt, error=exc)
            failure: BaseException = exc
            wait = waits
        else:
            checked = validate(PERSON, generation.text)
            attempt = Attempt(prompt, generation.text, checked.issues, duration_s=generation.duration_s or 0.0,
                              prompt_tokens=generation.prompt_tokens, completion_tokens=generation.completion_tokens,
                              ended="valid" if checked.ok else "invalid", finish_reason=generation.finish_reason)
            history.append(attempt)
            run.attempt_ended(attempt)
            if checked.ok:
                result: Result[Any] = Result(checked.value, generation.text, history)
                run.finished(result)
                return result
            failure, wait = InvalidOutput(checked.issues), 0.0
        if number < attempts:
            run.retrying(wait, failure)
    error = GuardError(f"no valid output after {attempts} attempts", history)
    run.gave_up(error)
    result = Result(None, None, history, error)
    run.finished(result)
    return result


class Recorder:
    """A hook object with some of the methods."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def on_attempt_end(self, attempt: Attempt) -> None:
        self.calls.append(("attempt_end", attempt.ended))

    def on_retry(self, wait_s: float, error: BaseException) -> None:
        self.calls.append(("retry", (wait_s, type(error).__name__)))

    def on_give_up(self, error: GuardError) -> None:
        self.calls.append(("give_up", len(error.attempts)))


# -- logging ---------------------------------------------------------------------------------


def test_one_info_record_per_attempt_and_a_warning_per_backoff(caplog: pytest.LogCaptureFixture) -> None:
    backend = CallableBackend(scripted('{"nom": "Ada"}', TransportError("HTTP 503 from the server"), '{"name": "Ada"}'))
    with caplog.at_level(logging.INFO, logger="guardrail"):
        result = drive(Observer(), backend, "Ada Lovelace", attempts=3)
    assert result.ok
    records = [(r.levelname, r.guardrail["event"], r.getMessage()) for r in caplog.records]  # type: ignore[attr-defined]
    assert [(level, event) for level, event, _ in records] == [
        ("INFO", "attempt"), ("INFO", "attempt"), ("WARNING", "backoff"), ("INFO", "attempt")]
    first, second, backoff, third = (message for _, _, message in records)
    assert "attempt 3 of 'schema' via callable ended valid" in third
    assert first.startswith("guardrail: attempt 1 of 'schema' via callable ended invalid in ")
    assert "1 issue, first /name: required property is missing" in first and "tokens unknown" in first
    assert "ended error" in second and "TransportError: HTTP 503 from the server" in second
    assert backoff == ("guardrail: attempt 2 of 'schema' failed (TransportError: HTTP 503 from the server); "
                       "retrying in 1.50 s")
    assert caplog.records[3].guardrail == {  # type: ignore[attr-defined]
        "event": "attempt", "attempt": 3, "schema": "schema", "backend": "callable", "model": None, "ended": "valid",
        "duration_s": result.attempts[2].duration_s, "prompt_tokens": None, "completion_tokens": None,
        "finish_reason": None, "issues": 0, "error": None}


def test_giving_up_is_logged_and_an_engine_fallback_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="guardrail"):
        drive(Observer(), CallableBackend(scripted("no", "still no")), "Ada", attempts=2)
        engine_fallback("invoice", "llguidance", "xgrammar", "unsupported keyword 'not'")
        engine_fallback("invoice", "outlines_core", None, "too large")
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("INFO", "guardrail: gave up on 'schema' after 2 attempts: no valid output after 2 attempts") in messages
    assert messages[-2:] == [
        ("WARNING", "guardrail: the llguidance engine cannot compile schema 'invoice' (unsupported keyword 'not'); "
                    "using xgrammar"),
        ("WARNING", "guardrail: the outlines_core engine cannot compile schema 'invoice' (too large); generating "
                    "unconstrained (validation still runs)")]
    assert not any("retrying" in m for _, m in messages), "a re-ask after invalid output is no back-off"


# -- hooks -----------------------------------------------------------------------------------


def test_hook_objects_get_their_methods_and_callables_get_every_event() -> None:
    recorder, seen = Recorder(), list[Any]()
    backend = CallableBackend(scripted("nope", TransportError("reset"), "still nope"))
    result = drive(Observer([recorder, seen.append]), backend, "Ada", attempts=3, waits=0.25)
    assert recorder.calls == [("attempt_end", "invalid"), ("retry", (0.0, "InvalidOutput")),
                              ("attempt_end", "error"), ("retry", (0.25, "TransportError")),
                              ("attempt_end", "invalid"), ("give_up", 3)]
    assert [e.kind for e in seen] == ["run_start", "attempt_start", "attempt_end", "retry", "attempt_start",
                                      "attempt_end", "retry", "attempt_start", "attempt_end", "give_up", "run_end"]
    assert [e.number for e in seen if e.kind == "attempt_start"] == [1, 2, 3]
    assert seen[0].schema == "schema" and seen[0].backend == "callable" and seen[0].prompt == "Ada"
    assert seen[-1].result is result and not result.ok


def test_a_hook_that_raises_is_logged_once_with_its_traceback_and_the_run_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def on_attempt_end(self, attempt: Attempt) -> None:
            raise KeyError("dashboard is down")

    after = Recorder()
    with caplog.at_level(logging.DEBUG, logger="guardrail"):
        result = drive(Observer([Broken(), after]), CallableBackend(scripted("x", '{"name": "Ada"}')), "Ada", 2)
    assert result.ok and [c for c, _ in after.calls] == ["attempt_end", "retry", "attempt_end"]
    failures = [r for r in caplog.records if r.guardrail.get("event") == "hook_error"]  # type: ignore[attr-defined]
    assert [r.levelname for r in failures] == ["WARNING", "DEBUG"]
    assert failures[0].getMessage() == ("guardrail: hook test_a_hook_that_raises_is_logged_once_with_its_traceback_"
                                        "and_the_run_goes_on.<locals>.Broken raised in on_attempt_end (the run goes "
                                        "on): KeyError: 'dashboard is down'")
    assert failures[0].exc_info is not None and failures[0].exc_info[0] is KeyError


def test_bad_hooks_are_refused_when_the_observer_is_built() -> None:
    class Typo:
        def on_attempt_ended(self, attempt: Attempt) -> None: ...

    class Async:
        async def on_attempt_end(self, attempt: Attempt) -> None: ...

    async def coroutine(event: Any) -> None: ...

    with pytest.raises(TypeError, match=r"hook 1 \(.*Typo\) has on_attempt_ended, which guardrail never calls; "
                                        "hook methods are on_attempt_end, on_attempt_start"):
        Observer([print, Typo()])
    with pytest.raises(TypeError, match="is async; hooks are called synchronously"):
        Observer([Async()])
    with pytest.raises(TypeError, match=r"hook 0 .* is async"):
        Observer([coroutine])
    with pytest.raises(TypeError, match="hook 0 must be a callable taking an event, or an object with any of"):
        Observer([42])
    with pytest.raises(ValueError, match="tracing must be None"):
        Observer(tracing="yes")  # type: ignore[arg-type]
    single: list[Any] = []
    Observer(single.append).run("p", schema="s", backend=None)  # one hook on its own is fine
    assert [e.kind for e in single] == ["run_start"]


def test_stream_events_reach_only_the_hooks_that_take_them() -> None:
    class Streams:
        def __init__(self) -> None:
            self.events: list[StreamEvent] = []

        def on_stream_event(self, event: StreamEvent) -> None:
            self.events.append(event)

    streams = Streams()
    run = Observer([streams, Recorder()]).run("p", schema="s", backend=None)
    assert run.wants_stream and not Observer([Recorder()]).run("p", schema="s", backend=None).wants_stream
    run.attempt_started("p")
    run.stream(StreamEvent(attempt=1, text='{"name": "A', value={}, completed=()))
    assert [(e.kind, e.attempt, e.text) for e in streams.events] == [("stream", 1, '{"name": "A')]


def test_a_run_with_nothing_listening_is_quiet() -> None:
    assert Observer().quiet and not Observer([print]).quiet
    run = Observer().run("p", schema="s", backend=None)
    assert isinstance(run, RunEvents) and run._span is None and not run._hooks.any


# -- OpenTelemetry -----------------------------------------------------------------------------


@pytest.fixture
def exporter() -> Iterator[Any]:
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    memory.provider = provider  # type: ignore[attr-defined]
    yield memory
    provider.shutdown()


def test_one_span_per_run_and_per_attempt_with_genai_attributes(exporter: Any) -> None:
    from opentelemetry.trace import SpanKind, StatusCode

    backend = RemoteBackend("http://127.0.0.1:9/v1", "smollm2")  # only described here, never called
    fake = CallableBackend(scripted('{"nom": 1}', TransportError("HTTP 503"), '{"name": "Ada"}'))
    fake.describe = backend.describe  # type: ignore[method-assign]
    observer = Observer(tracer_provider=exporter.provider)
    result = drive(observer, fake, "Ada Lovelace", attempts=3)
    assert result.ok
    spans = exporter.get_finished_spans()
    run = next(s for s in spans if s.name == "guardrail.run")
    attempts = [s for s in spans if s is not run]
    assert [s.name for s in attempts] == ["text_completion smollm2"] * 3
    assert all(s.parent is not None and s.parent.span_id == run.context.span_id for s in attempts)
    assert all(s.kind is SpanKind.CLIENT for s in attempts)
    first, failed, valid = (dict(s.attributes) for s in attempts)
    assert first == {"gen_ai.operation.name": "text_completion", "gen_ai.request.model": "smollm2",
                     "gen_ai.output.type": "json", "guardrail.attempt": 1, "guardrail.schema": "schema",
                     "guardrail.backend": "remote", "guardrail.engine": "llguidance",
                     "gen_ai.request.temperature": 0.0, "gen_ai.request.max_tokens": 64,
                     "guardrail.ended": "invalid", "guardrail.issues": 1, "guardrail.extracted": False}
    assert failed["error.type"] == "TransportError" and attempts[1].status.status_code is StatusCode.ERROR
    assert [e.name for e in attempts[1].events] == ["exception"]
    assert valid["guardrail.ended"] == "valid" and attempts[2].status.status_code is StatusCode.UNSET
    assert dict(run.attributes) == {"guardrail.schema": "schema", "guardrail.backend": "remote",
                                    "gen_ai.request.model": "smollm2", "guardrail.engine": "llguidance",
                                    "guardrail.attempts": 3, "guardrail.ok": True}
    assert [(e.name, e.attributes["guardrail.wait_s"]) for e in run.events] == [("guardrail.retry", 0.0),
                                                                                ("guardrail.retry", 1.5)]


def test_token_usage_finish_reasons_and_a_give_up_reach_the_spans(exporter: Any) -> None:
    from opentelemetry.trace import StatusCode

    from guardrail.backends.base import Generation

    def model(prompt: Any) -> Generation:
        return Generation('{"name": "Ada', prompt_tokens=40, completion_tokens=8, finish_reason="length")

    drive(Observer(tracer_provider=exporter.provider), CallableBackend(model), [{"role": "user", "content": "Ada"}],
          attempts=2)
    *attempts, run = exporter.get_finished_spans()
    assert [s.name for s in attempts] == ["chat", "chat"]
    assert attempts[0].attributes["gen_ai.usage.input_tokens"] == 40
    assert attempts[0].attributes["gen_ai.usage.output_tokens"] == 8
    assert tuple(attempts[0].attributes["gen_ai.response.finish_reasons"]) == ("length",)
    assert run.status.status_code is StatusCode.ERROR and run.status.description == "no valid output after 2 attempts"
    assert (run.attributes["gen_ai.usage.input_tokens"], run.attributes["gen_ai.usage.output_tokens"]) == (80, 16)
    assert run.attributes["guardrail.ok"] is False


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_opentelemetry_is_not_imported_by_a_program_that_does_not_use_it() -> None:
    out = run_python("""
        import sys
        from guardrail.events import Observer
        from guardrail.backends.callable import CallableBackend
        from guardrail.result import Attempt, Result
        run = Observer().run("p", schema="s", backend=CallableBackend(lambda p: "{}"))
        run.attempt_started("p")
        attempt = Attempt("p", "{}", ended="valid")
        run.attempt_ended(attempt)
        run.finished(Result({}, "{}", [attempt]))
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
    """)
    assert out == "[]"


def test_automatic_tracing_follows_the_applications_global_provider() -> None:
    pytest.importorskip("opentelemetry.sdk")
    out = run_python("""
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from guardrail.events import Observer
        from guardrail.result import Attempt, Result
        memory = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(memory))
        trace.set_tracer_provider(provider)
        tracer = trace.get_tracer("app")
        with tracer.start_as_current_span("request") as outer:
            run = Observer().run("p", schema="s", backend=None)
            run.attempt_started("p")
            attempt = Attempt("p", "{}", ended="valid")
            run.attempt_ended(attempt)
            run.finished(Result({}, "{}", [attempt]))
        spans = {s.name: s for s in memory.get_finished_spans()}
        print(sorted(spans), spans["guardrail.run"].parent.span_id == spans["request"].context.span_id)
    """)
    assert out == "['guardrail.run', 'request', 'text_completion'] True"


def test_tracing_true_without_opentelemetry_says_what_to_install() -> None:
    out = run_python("""
        import sys
        sys.modules["opentelemetry"] = None  # as if it were not installed
        from guardrail.events import Observer
        try:
            Observer(tracing=True)
        except ImportError as exc:
            print(exc)
    """)
    assert out == "tracing=True needs OpenTelemetry: pip install 'guardrail-llm[otel]' (opentelemetry-api)"


def test_a_backend_that_cannot_describe_itself_does_not_break_the_run() -> None:
    class Mute(CallableBackend):
        def describe(self) -> dict[str, Any]:
            raise BackendError("not loaded")

    seen: list[Any] = []
    result = drive(Observer([seen.append]), Mute(scripted('{"name": "Ada"}')), "Ada", attempts=1)
    assert result.ok and seen[0].backend is None
