"""The guard loop's events (``Guard(hooks=..., tracing=...)``): hooks, log records and OpenTelemetry spans
from ``run``, ``arun``, ``run_many``, votes and the decorator, with scripted callables as the model.

``test_events.py`` tests the events themselves; ``test_guard_stream.py`` the events of a stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
import tenacity
from test_events import exporter  # noqa: F401 - the in-memory span exporter fixture, reused

from guardrail import Guard, GuardError, TransportError, guard
from guardrail.backends.base import Prompt
from guardrail.events import AttemptEnded, Event
from guardrail.result import Attempt, Result

NAME = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
NO_WAIT = tenacity.Retrying(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(0.01),
                            retry=tenacity.retry_if_exception_type(TransportError))


def scripted(*outputs: str | Exception) -> Callable[[Prompt], str]:
    """A model that answers with ``outputs`` in turn (an exception is raised instead)."""
    queue = list(outputs)

    def model(prompt: Prompt) -> str:
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return model


class Recorder:
    """A hook object with every method, recording what it was called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def on_run_start(self, event: Any) -> None:
        self.calls.append(("run_start", event.prompt))

    def on_attempt_start(self, event: Any) -> None:
        self.calls.append(("attempt_start", (event.number, event.sampling.max_new_tokens)))

    def on_attempt_end(self, attempt: Attempt) -> None:
        self.calls.append(("attempt_end", attempt.ended))

    def on_retry(self, wait_s: float, error: BaseException) -> None:
        self.calls.append(("retry", (wait_s > 0, type(error).__name__)))

    def on_give_up(self, error: GuardError) -> None:
        self.calls.append(("give_up", len(error.attempts)))

    def on_run_end(self, result: Result[Any]) -> None:
        self.calls.append(("run_end", result.ok))


def test_a_run_tells_its_hooks_every_step_in_order() -> None:
    recorder = Recorder()
    model = scripted('{"nom": 1}', TransportError("HTTP 503"), '{"name": "Ada"}')
    result = Guard(NAME, llm=model, hooks=[recorder], retries=NO_WAIT).run("Ada", max_new_tokens=64)
    assert result.ok
    assert recorder.calls == [
        ("run_start", "Ada"),
        ("attempt_start", (1, 64)), ("attempt_end", "invalid"), ("retry", (False, "InvalidOutput")),
        ("attempt_start", (2, 64)), ("attempt_end", "error"), ("retry", (True, "TransportError")),
        ("attempt_start", (3, 64)), ("attempt_end", "valid"),
        ("run_end", True)]


def test_the_hooks_see_the_attempts_and_the_result_the_caller_gets() -> None:
    seen: list[Event] = []
    with pytest.raises(GuardError) as raised:
        Guard(NAME, llm=scripted("{}", "[]"), retries=1, hooks=seen.append).run("Ada")
    ended = [e.attempt for e in seen if isinstance(e, AttemptEnded)]
    assert ended == raised.value.attempts and all(a is b for a, b in zip(ended, raised.value.attempts, strict=True))
    assert [e.kind for e in seen][-2:] == ["give_up", "run_end"]
    assert seen[-2].error is raised.value and seen[-1].result.error is raised.value  # type: ignore[union-attr]


def test_run_many_arun_votes_and_the_decorator_report_each_run() -> None:
    seen: list[Event] = []
    g = Guard(NAME, llm=lambda prompt: '{"name": "Ada"}', hooks=[seen.append])
    g.run_many(["a", "b", "c"], concurrency=2)
    assert sorted(e.prompt for e in seen if e.kind == "run_start") == ["a", "b", "c"]  # type: ignore[union-attr]
    assert [e.kind for e in seen].count("run_end") == 3
    seen.clear()
    asyncio.run(g.arun("d"))
    assert [e.kind for e in seen] == ["run_start", "attempt_start", "attempt_end", "run_end"]
    seen.clear()
    voter = Guard(NAME, llm=lambda prompt: '{"name": "Ada"}', strategy="vote", samples=3, hooks=[seen.append])
    voter.run("e")
    assert [e.kind for e in seen] == ["run_start", "attempt_start", "attempt_end", "run_end"], "a round is one attempt"
    assert len(seen[2].attempt.samples) == 3  # type: ignore[union-attr]
    seen.clear()

    @guard(NAME, hooks=[seen.append])
    def ask(prompt: Prompt, suffix: str = "") -> str:
        return '{"name": "Ada' + suffix + '"}'

    assert ask("f", " L.") == {"name": "Ada L."}
    assert [e.kind for e in seen] == ["run_start", "attempt_start", "attempt_end", "run_end"]


def test_one_record_per_attempt_and_a_warning_before_a_back_off(caplog: pytest.LogCaptureFixture) -> None:
    model = scripted(TransportError("HTTP 503 from the server"), '{"name": "Ada"}')
    with caplog.at_level(logging.INFO, logger="guardrail"):
        Guard(NAME, llm=model, retries=NO_WAIT).run("Ada")
    records = [(r.levelname, r.guardrail["event"]) for r in caplog.records]  # type: ignore[attr-defined]
    assert records == [("INFO", "attempt"), ("WARNING", "backoff"), ("INFO", "attempt")]
    assert "attempt 2 of 'schema' via callable ended valid" in caplog.records[2].getMessage()


def test_a_guard_s_runs_and_attempts_are_opentelemetry_spans(exporter: Any) -> None:  # noqa: F811
    from opentelemetry.trace import StatusCode

    g = Guard(NAME, llm=scripted('{"nom": 1}', '{"name": "Ada"}'), tracer_provider=exporter.provider)
    g.run([{"role": "user", "content": "Ada"}])
    *attempts, run = exporter.get_finished_spans()
    assert [s.name for s in attempts] == ["chat", "chat"] and run.name == "guardrail.run"
    assert all(s.parent is not None and s.parent.span_id == run.context.span_id for s in attempts)
    assert [s.attributes["guardrail.ended"] for s in attempts] == ["invalid", "valid"]
    assert attempts[0].attributes["gen_ai.request.temperature"] == 0.0
    assert dict(run.attributes) == {"guardrail.schema": "schema", "guardrail.backend": "callable",
                                    "guardrail.attempts": 2, "guardrail.ok": True}
    assert run.status.status_code is StatusCode.UNSET
    exporter.clear()
    with pytest.raises(GuardError):
        Guard(NAME, llm=scripted("no"), retries=0, tracer_provider=exporter.provider).run("Ada")
    *_, failed = exporter.get_finished_spans()
    assert failed.status.status_code is StatusCode.ERROR and failed.attributes["guardrail.ok"] is False


def test_tracing_options_are_checked_when_the_guard_is_built() -> None:
    with pytest.raises(ValueError, match="tracing must be None"):
        Guard(NAME, llm=scripted(), tracing="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="hook 0 must be a callable taking an event"):
        Guard(NAME, llm=scripted(), hooks=[42])
    g = Guard(NAME, llm=scripted(), tracing=False)
    assert g.observer.quiet or logging.getLogger("guardrail").isEnabledFor(logging.INFO)


def test_a_quiet_run_builds_no_event_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    from guardrail import events

    built: list[str] = []
    for name in ("RunStarted", "AttemptStarted", "AttemptEnded", "Retrying", "RunEnded"):
        original = getattr(events, name)
        monkeypatch.setattr(events, name, lambda *a, _o=original, _n=name, **k: built.append(_n) or _o(*a, **k))
    assert Guard(NAME, llm=scripted('{"nom": 1}', '{"name": "Ada"}')).run("Ada").ok
    assert built == [], "with no hook, events cost attribute checks only"
    seen: list[Event] = []
    Guard(NAME, llm=scripted('{"name": "Ada"}'), hooks=[seen.append]).run("Ada")
    assert built == ["RunStarted", "AttemptStarted", "AttemptEnded", "RunEnded"]
