"""The retry policy: how many attempts, how long to wait, and which failures are worth a retry.

Two kinds of failure meet here. An output that fails validation is re-asked at once, with the
issues (waiting would not help). An exception from the model call (a timeout, a dropped
connection, a 429 or 5xx) is retried after an exponential backoff with jitter, at least as long
as the server's ``Retry-After``. Anything else (a bug in the caller's code, a 400) is not
retried: it ends the loop as a ``GuardError`` with the exception chained.

The policy is a ``tenacity`` object, so users can pass their own ``Retrying``/``AsyncRetrying``;
guardrail keeps its stop and wait, and adds the re-ask on invalid output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tenacity
from tenacity import RetryCallState
from tenacity.retry import retry_base
from tenacity.wait import wait_base

from guardrail.errors import BackendError, TransportError
from guardrail.result import Issue

_TRANSIENT_STATUS = frozenset({408, 409, 425, 429})


class InvalidOutput(Exception):
    """Raised inside the loop when an output fails validation: it triggers a re-ask."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = list(issues)
        super().__init__("; ".join(str(i) for i in issues[:3]))


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (``status``, ``status_code`` or ``response.status_code``)."""
    for holder in (exc, getattr(exc, "response", None)):
        for name in ("status", "status_code"):
            value = getattr(holder, name, None)
            if isinstance(value, int):
                return value
    return None


def is_transient(exc: BaseException) -> bool:
    """True for failures that may pass on a later try: timeouts, connection errors, 408/429/5xx."""
    if isinstance(exc, BackendError):
        return exc.retryable
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    status = status_of(exc)
    return status is not None and (status in _TRANSIENT_STATUS or status >= 500)


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait, from ``TransportError.retry_after`` or a ``Retry-After`` header."""
    if isinstance(exc, TransportError) and exc.retry_after is not None:
        return exc.retry_after
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is not None:
        try:
            return max(0.0, float(headers.get("retry-after")))
        except (TypeError, ValueError):
            return None
    return None


class retry_on_failure(retry_base):  # noqa: N801 - tenacity's naming for strategies
    """Retry invalid outputs and transient exceptions; give up on anything else."""

    def __call__(self, retry_state: RetryCallState) -> bool:
        outcome = retry_state.outcome
        if outcome is None or not outcome.failed:
            return False
        exc = outcome.exception()
        return isinstance(exc, InvalidOutput) or (exc is not None and is_transient(exc))


class wait_for_failure(wait_base):  # noqa: N801
    """No pause before a re-ask; ``backoff`` (at least ``Retry-After``) before retrying a failed call."""

    def __init__(self, backoff: Any) -> None:
        self.backoff = backoff

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome is not None else None
        if exc is None or isinstance(exc, InvalidOutput):
            return 0.0
        return max(float(self.backoff(retry_state)), retry_after(exc) or 0.0)


#: The default backoff between retries of a failed call: 0.5 s, 1 s, 2 s ... up to 8 s, with jitter.
DEFAULT_BACKOFF = tenacity.wait_exponential_jitter(multiplier=0.5, max=8.0, jitter=0.25)


def build_policy(retries: int | tenacity.BaseRetrying, *, backoff: Any = None) -> tenacity.BaseRetrying:
    """The tenacity policy for ``retries``.

    ``retries=N`` allows N retries after the first attempt (N + 1 attempts). A tenacity
    ``Retrying``/``AsyncRetrying`` keeps its own ``stop``, ``wait`` (for failed calls) and
    ``retry`` (for exceptions), and invalid outputs are re-asked on top of it.

    >>> build_policy(2).stop.max_attempt_number
    3
    """
    if isinstance(retries, tenacity.BaseRetrying):
        return retries.copy(
            retry=tenacity.retry_if_exception_type(InvalidOutput) | retries.retry,
            wait=wait_for_failure(retries.wait),
            reraise=False,
        )
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a whole number >= 0 or a tenacity Retrying, got {retries!r}")
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(retries + 1),
        wait=wait_for_failure(backoff or DEFAULT_BACKOFF),
        retry=retry_on_failure(),
        reraise=False,
    )
