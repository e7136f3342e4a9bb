"""What happens during a guarded run, told three ways: log records, hooks and OpenTelemetry spans.

An ``Observer`` belongs to a guard: it holds the hooks (checked once, when the guard is built)
and the tracing choice. ``Observer.run(...)`` gives a ``RunEvents`` for one run; the guard loop
tells it what happens and it fans each event out::

    run = observer.run(prompt, schema=schema.name, backend=backend)
    run.attempt_started(request, sampling)      # before each model call
    run.attempt_ended(attempt, error=exc)       # after it, with the recorded Attempt
    run.retrying(wait_s, failure)               # when the policy retries
    run.gave_up(guard_error)                    # when it does not
    run.finished(result)                        # always, last: closes the run's span

``Observer.run(..., listener=...)`` also hands every event of that run to one function after the
hooks: that is how ``Guard.stream`` yields a run's events to its caller.

**Logging.** The ``guardrail`` logger gets one INFO record per attempt (its number, the
backend and model, how it ended, duration, tokens, the first issue), a WARNING before each
back-off wait (a failed call retried after a pause) and for engine fallbacks
(``engine_fallback``), INFO when a run gives up. Each record carries the same facts as a dict in
``record.guardrail`` for structured logging. The logger has a ``NullHandler``: configure
``logging`` to see the records.

**Hooks.** ``Guard(..., hooks=[...])`` takes plain callables, called with every event object
(each has a ``kind``), and objects with any of these methods:

==================  ===========================  =========================================
event ``kind``      method called                with
==================  ===========================  =========================================
``run_start``       ``on_run_start(event)``      ``RunStarted`` (prompt, schema, backend, model)
``attempt_start``   ``on_attempt_start(event)``  ``AttemptStarted`` (number, prompt, sampling)
``attempt_end``     ``on_attempt_end(attempt)``  the recorded ``guardrail.Attempt``
``retry``           ``on_retry(wait_s, error)``  seconds before the next attempt, the failure
``give_up``         ``on_give_up(error)``        the ``GuardError`` that ends the run
``run_end``         ``on_run_end(result)``       the ``Result`` (``ok`` false after a give-up)
``stream``          ``on_stream_event(event)``   ``StreamEvent`` (a streamed run's progress)
==================  ===========================  =========================================

Hooks run synchronously, in order, in the thread of the run. A hook that raises does not break
the run: the error is logged as a WARNING with its traceback (later failures of the same hook
method at DEBUG). An object with a misspelt ``on_`` method, or an ``async def`` hook, is refused
when the guard is built.

>>> seen = []
>>> run = Observer([seen.append]).run("Ada, 36", schema="person", backend=None)
>>> run.attempt_started("Ada, 36")
>>> [event.kind for event in seen]
['run_start', 'attempt_start']

**OpenTelemetry.** With ``opentelemetry-api`` (``pip install 'guardrail-llm[otel]'``), each run is
a span (``guardrail.run``) holding one span per attempt, named and attributed after the GenAI
semantic conventions (``chat MODEL``; ``gen_ai.operation.name``, ``gen_ai.request.model``,
``gen_ai.request.temperature`` ..., ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``,
``gen_ai.response.finish_reasons``, ``gen_ai.output.type``, ``error.type``) plus guardrail's own
(``guardrail.attempt``, ``guardrail.ended``, ``guardrail.issues``, ``guardrail.engine``,
``guardrail.schema``, ``guardrail.backend``). ``tracing=None`` (the default) traces when the
application has imported ``opentelemetry.trace`` (that is how it sets a tracer provider), so a
program that does not use OpenTelemetry never imports it; ``True`` always (an ImportError with
the install hint if it is missing), ``False`` never; ``tracer_provider=`` uses that provider.

A run with no hooks, no tracing and INFO logging off costs a few attribute checks per event.
"""

from __future__ import annotations

import inspect
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from guardrail.backends.base import Backend, Prompt, Sampling
    from guardrail.errors import GuardError
    from guardrail.result import Attempt, Result

__all__ = [
    "HOOK_METHODS",
    "AttemptEnded",
    "AttemptStarted",
    "GaveUp",
    "Observer",
    "Retrying",
    "RunEnded",
    "RunEvents",
    "RunStarted",
    "StreamEvent",
    "engine_fallback",
    "logger",
]

#: The logger every guardrail event goes to.
logger = logging.getLogger("guardrail")
logger.addHandler(logging.NullHandler())

#: The name under which the tracer is created (instrumentation scope).
TRACER_NAME = "guardrail"
OTEL_HINT = "pip install 'guardrail-llm[otel]' (opentelemetry-api)"


# -- the events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStarted:
    """A run began: the caller's prompt, the schema's name, the backend's name and model."""

    kind: ClassVar[str] = "run_start"
    prompt: Any
    schema: str
    backend: str | None
    model: str | None


@dataclass(frozen=True)
class AttemptStarted:
    """An attempt (a model call, or a vote round) is about to be made, with this prompt and sampling."""

    kind: ClassVar[str] = "attempt_start"
    number: int
    prompt: Any
    sampling: Sampling | None


@dataclass(frozen=True)
class AttemptEnded:
    """An attempt ended; ``attempt`` is what the run's history records for it."""

    kind: ClassVar[str] = "attempt_end"
    number: int
    attempt: Attempt


@dataclass(frozen=True)
class Retrying:
    """Attempt ``number`` failed and another follows after ``wait_s`` seconds (0 for a re-ask)."""

    kind: ClassVar[str] = "retry"
    number: int
    wait_s: float
    error: BaseException


@dataclass(frozen=True)
class GaveUp:
    """The run ends without a valid output."""

    kind: ClassVar[str] = "give_up"
    error: GuardError


@dataclass(frozen=True)
class RunEnded:
    """The run is over: ``result.ok`` says how."""

    kind: ClassVar[str] = "run_end"
    result: Result[Any]


@dataclass(frozen=True)
class StreamEvent:
    """Progress of a streamed attempt: the new answer ``text`` and ``reasoning`` text, the partial
    ``value`` so far (``guardrail.partial``), the JSON Pointers it just ``completed``, and whether
    the model has finished (``done``)."""

    kind: ClassVar[str] = "stream"
    attempt: int
    text: str = ""
    reasoning: str = ""
    value: Any = None
    completed: tuple[str, ...] = ()
    done: bool = False


Event = RunStarted | AttemptStarted | AttemptEnded | Retrying | GaveUp | RunEnded | StreamEvent

#: For each event kind: the hook method called, and the arguments it gets from the event.
HOOK_METHODS: dict[str, tuple[str, Callable[[Any], tuple[Any, ...]]]] = {
    "run_start": ("on_run_start", lambda e: (e,)),
    "attempt_start": ("on_attempt_start", lambda e: (e,)),
    "attempt_end": ("on_attempt_end", lambda e: (e.attempt,)),
    "retry": ("on_retry", lambda e: (e.wait_s, e.error)),
    "give_up": ("on_give_up", lambda e: (e.error,)),
    "run_end": ("on_run_end", lambda e: (e.result,)),
    "stream": ("on_stream_event", lambda e: (e,)),
}
_METHOD_NAMES = frozenset(name for name, _ in HOOK_METHODS.values())


# -- logging helpers --------------------------------------------------------------------------


def engine_fallback(schema: str, engine: str, fallback: str | None, reason: str) -> None:
    """Log (WARNING) that ``engine`` cannot constrain ``schema`` and ``fallback`` is used
    (``None``: generation is unconstrained, validation still runs)."""
    then = f"using {fallback}" if fallback else "generating unconstrained (validation still runs)"
    logger.warning("guardrail: the %s engine cannot compile schema %r (%s); %s", engine, schema, reason, then,
                   extra={"guardrail": {"event": "engine_fallback", "schema": schema, "engine": engine,
                                        "fallback": fallback, "reason": reason}})


# -- hooks ---------------------------------------------------------------------------------------


class _Hooks:
    """The hooks of a guard, checked once: for each event kind, the functions to call."""

    def __init__(self, hooks: Iterable[Any]) -> None:
        self.by_kind: dict[str, list[tuple[Any, Callable[..., Any]]]] = {kind: [] for kind in HOOK_METHODS}
        self._warned: set[tuple[int, str]] = set()
        for position, hook in enumerate(hooks):
            _refuse_async(hook, position)
            methods = {name for name in dir(hook) if name.startswith("on_") and not name.startswith("on__")}
            if methods:
                unknown = sorted(methods - _METHOD_NAMES)
                if unknown:
                    raise TypeError(f"hook {position} ({_name(hook)}) has {', '.join(unknown)}, which guardrail never "
                                    f"calls; hook methods are {', '.join(sorted(_METHOD_NAMES))}")
                for kind, (method, _) in HOOK_METHODS.items():
                    bound = getattr(hook, method, None)
                    if bound is None:
                        continue
                    if not callable(bound):
                        raise TypeError(f"hook {position} ({_name(hook)}): {method} is not callable")
                    _refuse_async(bound, position)
                    self.by_kind[kind].append((hook, bound))
            elif callable(hook):
                for kind in HOOK_METHODS:
                    self.by_kind[kind].append((hook, hook))
            else:
                raise TypeError(f"hook {position} must be a callable taking an event, or an object with any of "
                                f"{', '.join(sorted(_METHOD_NAMES))}; got {type(hook).__name__}")
        self.any = any(self.by_kind.values())

    def emit(self, event: Event) -> None:
        called = self.by_kind[event.kind]
        if not called:
            return
        method, arguments = HOOK_METHODS[event.kind]
        for hook, function in called:
            try:
                if function is hook:  # a plain callable gets the event itself
                    function(event)
                else:
                    function(*arguments(event))
            except Exception as exc:  # noqa: BLE001 - a hook never breaks the run
                self._report(hook, method, exc)

    def _report(self, hook: Any, method: str, exc: Exception) -> None:
        key = (id(hook), method)
        first = key not in self._warned
        self._warned.add(key)
        logger.log(logging.WARNING if first else logging.DEBUG,
                   "guardrail: hook %s raised in %s (the run goes on): %s: %s", _name(hook), method,
                   type(exc).__name__, exc, exc_info=exc,
                   extra={"guardrail": {"event": "hook_error", "hook": _name(hook), "method": method}})


def _refuse_async(function: Any, position: int) -> None:
    if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(type(function).__call__):
        raise TypeError(f"hook {position} ({_name(function)}) is async; hooks are called synchronously: use a "
                        "plain function (it may hand work to a queue or schedule a task)")


def _name(hook: Any) -> str:
    return getattr(hook, "__qualname__", None) or type(hook).__qualname__


# -- OpenTelemetry ----------------------------------------------------------------------------


def _tracer(tracing: bool | None, provider: Any) -> Any:
    """The tracer to use now, or ``None``; ``opentelemetry`` is imported only when it must be."""
    if tracing is False:
        return None
    if provider is not None:
        return provider.get_tracer(TRACER_NAME, _version())
    if tracing is None and "opentelemetry.trace" not in sys.modules:
        return None  # the application does not use OpenTelemetry: nothing to import or pay
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise ImportError(f"tracing=True needs OpenTelemetry: {OTEL_HINT}") from exc
    return trace.get_tracer(TRACER_NAME, _version())


def _version() -> str:
    # The package is imported by the time anything traces; importing it here would be a circle
    # (the guard loop imports this module).
    return str(getattr(sys.modules.get("guardrail"), "__version__", "unknown"))


# -- the observer and one run's events ---------------------------------------------------


class Observer:
    """A guard's hooks and tracing; ``run()`` starts the events of one run. See the module docstring.

    ``hooks``: callables and hook objects; ``tracing``: ``None`` (trace when the application uses
    OpenTelemetry), ``True`` or ``False``; ``tracer_provider``: an OpenTelemetry ``TracerProvider``
    to use instead of the global one.
    """

    def __init__(self, hooks: Iterable[Any] | Any = (), *, tracing: bool | None = None,
                 tracer_provider: Any = None) -> None:
        if isinstance(hooks, (str, bytes)) or not isinstance(hooks, Iterable):
            hooks = [hooks]  # one hook given on its own
        if tracing not in (None, True, False):
            raise ValueError(f"tracing must be None (automatic), True or False, got {tracing!r}")
        self.hooks = _Hooks(hooks)
        self.tracing = tracing
        self.tracer_provider = tracer_provider
        self._tracer: Any = None if tracing is None and tracer_provider is None else _tracer(tracing, tracer_provider)

    @property
    def quiet(self) -> bool:
        """True when nothing listens: no hooks, no tracing, INFO logging off (events are then near free)."""
        return not self.hooks.any and self._current_tracer() is None and not logger.isEnabledFor(logging.INFO)

    def run(self, prompt: Prompt, *, schema: str, backend: Backend | None, engine: str | None = None,
            listener: Callable[[Event], None] | None = None) -> RunEvents:
        """The events of one run of ``prompt`` (emits ``run_start``).

        ``listener``: called with every event of this run after the hooks (``Guard.stream`` hands
        them to its caller this way); unlike a hook's, its exceptions propagate.
        """
        return RunEvents(self, prompt, schema, backend, engine, self._current_tracer(), listener)

    def _current_tracer(self) -> Any:
        if (self._tracer is None and self.tracing is None and self.tracer_provider is None
                and "opentelemetry.trace" in sys.modules):  # the application has taken OpenTelemetry up
            self._tracer = _tracer(None, None)
        return self._tracer


class RunEvents:
    """One run's events: call the methods as the run goes; each logs, calls hooks and traces."""

    __slots__ = ("_attempt_span", "_backend", "_described", "_emits", "_hooks", "_listener", "_span", "_tracer",
                 "engine", "number", "prompt", "schema", "started")

    def __init__(self, observer: Observer, prompt: Prompt, schema: str, backend: Backend | None, engine: str | None,
                 tracer: Any, listener: Callable[[Event], None] | None = None) -> None:
        self._hooks = observer.hooks
        self._listener = listener
        #: Whether anything takes event objects (hooks or the listener): else none is built.
        self._emits = observer.hooks.any or listener is not None
        self._tracer = tracer
        self._backend = backend
        self._described: dict[str, Any] | None = None
        self._span: Any = None
        self._attempt_span: Any = None
        self.prompt = prompt
        self.schema = schema
        self.engine = engine
        #: The number of the current attempt (1 for the first; 0 before any).
        self.number = 0
        self.started = time.monotonic()
        if tracer is not None:
            self._span = tracer.start_span("guardrail.run", attributes=_clean({
                "guardrail.schema": schema, "guardrail.backend": self._info("backend"),
                "gen_ai.request.model": self._info("model"), "guardrail.engine": self._engine()}))
        if self._emits:
            self._emit(RunStarted(prompt, schema, self._info("backend"), self._info("model")))

    @property
    def wants_stream(self) -> bool:
        """Whether any hook (or the listener) takes stream events (else a streamed run need not build them)."""
        return self._listener is not None or bool(self._hooks.by_kind["stream"])

    def _emit(self, event: Event) -> None:
        if self._hooks.any:
            self._hooks.emit(event)
        if self._listener is not None:
            self._listener(event)

    def attempt_started(self, prompt: Prompt, sampling: Sampling | None = None) -> None:
        """An attempt begins (its number is the previous one plus 1)."""
        self.number += 1
        if self._tracer is not None:
            self._start_attempt_span(prompt, sampling)
        if self._emits:
            self._emit(AttemptStarted(self.number, prompt, sampling))

    def attempt_ended(self, attempt: Attempt, error: BaseException | None = None) -> None:
        """The current attempt ended as ``attempt`` records; ``error``, the exception of a failed call."""
        if logger.isEnabledFor(logging.INFO):
            self._log_attempt(attempt)
        if self._attempt_span is not None:
            self._end_attempt_span(attempt, error)
        if self._emits:
            self._emit(AttemptEnded(self.number, attempt))

    def retrying(self, wait_s: float, error: BaseException) -> None:
        """Another attempt follows the current one after ``wait_s`` seconds (0: a re-ask)."""
        if wait_s > 0 and logger.isEnabledFor(logging.WARNING):
            logger.warning("guardrail: attempt %d of %r failed (%s: %s); retrying in %.2f s", self.number, self.schema,
                           type(error).__name__, error, wait_s,
                           extra={"guardrail": {"event": "backoff", "attempt": self.number, "schema": self.schema,
                                                "wait_s": wait_s, "error": f"{type(error).__name__}: {error}"}})
        if self._span is not None:
            self._span.add_event("guardrail.retry", {"guardrail.attempt": self.number, "guardrail.wait_s": wait_s,
                                                     "error.type": type(error).__name__})
        if self._emits:
            self._emit(Retrying(self.number, wait_s, error))

    def gave_up(self, error: GuardError) -> None:
        """The run ends without a valid output."""
        if logger.isEnabledFor(logging.INFO):
            first_line = str(error).splitlines()[0] if str(error) else ""
            logger.info("guardrail: gave up on %r after %d attempt%s: %s", self.schema, self.number,
                        "s" * (self.number != 1), first_line,
                        extra={"guardrail": {"event": "give_up", "schema": self.schema, "attempts": self.number,
                                             "error": str(error)}})
        if self._span is not None:
            self._span.set_status(_status(error_text=str(error).splitlines()[0] if str(error) else "gave up"))
        if self._emits:
            self._emit(GaveUp(error))

    def stream(self, event: StreamEvent) -> None:
        """A streamed attempt made progress (hooks and the listener see it; see ``wants_stream``)."""
        if self._emits:
            self._emit(event)

    def finished(self, result: Result[Any]) -> None:
        """The run is over (call once, last): ends its span and calls ``on_run_end``."""
        if self._attempt_span is not None:  # a driver that never reported the end of its attempt
            self._attempt_span.end()
            self._attempt_span = None
        if self._span is not None:
            span, self._span = self._span, None
            attributes: dict[str, Any] = {"guardrail.attempts": len(result.attempts), "guardrail.ok": result.ok}
            inputs = [a.prompt_tokens for a in result.attempts if a.prompt_tokens is not None]
            outputs = [a.completion_tokens for a in result.attempts if a.completion_tokens is not None]
            if inputs:
                attributes["gen_ai.usage.input_tokens"] = sum(inputs)
            if outputs:
                attributes["gen_ai.usage.output_tokens"] = sum(outputs)
            span.set_attributes(attributes)
            span.end()
        if self._emits:
            self._emit(RunEnded(result))

    # -- helpers ---------------------------------------------------------------------------

    def _info(self, key: str) -> Any:
        """``backend.describe()[key]`` (described once per run, and only when something listens)."""
        if self._backend is None:
            return None
        if self._described is None:
            try:
                self._described = dict(self._backend.describe())
            except Exception:  # noqa: BLE001 - describing is best effort
                self._described = {}
        value = self._described.get(key)
        return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)

    def _engine(self) -> str | None:
        return self.engine or self._info("engine")

    def _log_attempt(self, attempt: Attempt) -> None:
        tokens = (f"{attempt.prompt_tokens}+{attempt.completion_tokens} tokens"
                  if attempt.prompt_tokens is not None or attempt.completion_tokens is not None else "tokens unknown")
        detail = ""
        if attempt.issues:
            detail = f"; {len(attempt.issues)} issue{'s' * (len(attempt.issues) != 1)}, first {attempt.issues[0]}"
        elif attempt.error:
            detail = f"; {attempt.error}"
        backend, model = self._info("backend"), self._info("model")
        via = f"{backend} ({model})" if model else str(backend)
        logger.info("guardrail: attempt %d of %r via %s ended %s in %.2f s, %s%s", self.number, self.schema, via,
                    attempt.ended, attempt.duration_s, tokens, detail,
                    extra={"guardrail": {"event": "attempt", "attempt": self.number, "schema": self.schema,
                                         "backend": backend, "model": model, "ended": attempt.ended,
                                         "duration_s": attempt.duration_s, "prompt_tokens": attempt.prompt_tokens,
                                         "completion_tokens": attempt.completion_tokens,
                                         "finish_reason": attempt.finish_reason, "issues": len(attempt.issues),
                                         "error": attempt.error}})

    def _start_attempt_span(self, prompt: Prompt, sampling: Sampling | None) -> None:
        from opentelemetry import trace

        if self._attempt_span is not None:
            self._attempt_span.end()
        model = self._info("model")
        operation = "text_completion" if isinstance(prompt, str) else "chat"
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation, "gen_ai.request.model": model, "gen_ai.output.type": "json",
            "guardrail.attempt": self.number, "guardrail.schema": self.schema,
            "guardrail.backend": self._info("backend"), "guardrail.engine": self._engine(),
        }
        if sampling is not None:
            attributes.update({"gen_ai.request.temperature": sampling.temperature, "gen_ai.request.top_p": sampling.top_p,
                               "gen_ai.request.top_k": sampling.top_k, "gen_ai.request.seed": sampling.seed,
                               "gen_ai.request.max_tokens": sampling.max_new_tokens})
        parent = trace.set_span_in_context(self._span) if self._span is not None else None
        self._attempt_span = self._tracer.start_span(f"{operation} {model}" if model else operation, context=parent,
                                                     kind=trace.SpanKind.CLIENT, attributes=_clean(attributes))

    def _end_attempt_span(self, attempt: Attempt, error: BaseException | None) -> None:
        span, self._attempt_span = self._attempt_span, None
        attributes: dict[str, Any] = {"guardrail.ended": attempt.ended, "guardrail.issues": len(attempt.issues),
                                      "guardrail.extracted": attempt.extracted,
                                      "gen_ai.usage.input_tokens": attempt.prompt_tokens,
                                      "gen_ai.usage.output_tokens": attempt.completion_tokens}
        reasons = [a.finish_reason for a in (attempt.samples or [attempt]) if a.finish_reason]
        if reasons:
            attributes["gen_ai.response.finish_reasons"] = reasons
        if attempt.samples:
            attributes["guardrail.samples"] = len(attempt.samples)
        if error is not None or attempt.error:
            attributes["error.type"] = type(error).__name__ if error is not None else (attempt.error or "").split(":")[0]
            if error is not None:
                span.record_exception(error)
            span.set_status(_status(error_text=attempt.error or f"{type(error).__name__}: {error}"))
        span.set_attributes(_clean(attributes))
        span.end()


def _status(*, error_text: str) -> Any:
    from opentelemetry.trace import Status, StatusCode

    return Status(StatusCode.ERROR, error_text)


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    """OpenTelemetry attributes must not be ``None``: drop those."""
    return {k: v for k, v in attributes.items() if v is not None}

