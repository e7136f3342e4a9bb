"""The exceptions guardrail raises, one family so callers can catch them together.

::

    GuardrailError                 base of everything guardrail raises on purpose
     ├── SchemaError               the schema itself is invalid or cannot be used (raised at construction)
     ├── GuardError                no valid output within the retry policy; carries every attempt
     ├── BackendError              a model could not be loaded or called
     │    └── TransportError       a transient failure (timeout, connection, 429/5xx): retried with backoff
     └── SuiteError                a robustness suite file is malformed

Third-party exceptions raised by an LLM call are kept as ``__cause__`` of the ``GuardError``
that ends the loop, so nothing the caller could need is lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from guardrail.attempt import Attempt


class GuardrailError(Exception):
    """Base class of every error guardrail raises on purpose."""


class SchemaError(GuardrailError, ValueError):
    """The schema is invalid or uses something guardrail will not do (such as fetch a remote ``$ref``).

    ``location`` is the JSON Pointer, inside the schema, of the offending keyword.
    """

    def __init__(self, message: str, *, location: str = "", keyword: str | None = None) -> None:
        self.location = location
        self.keyword = keyword
        where = f" at {location or '/'}" if location or keyword else ""
        super().__init__(f"invalid schema{where}: {message}")


class GuardError(GuardrailError):
    """No valid output was produced within the retry policy.

    ``attempts`` holds every attempt (prompt, output, issues, timing, error), in order.
    """

    def __init__(self, message: str, attempts: Sequence[Attempt] = ()) -> None:
        self.attempts: list[Attempt] = list(attempts)
        super().__init__(message)

    @property
    def last_output(self) -> str | None:
        """The raw text of the last attempt that produced any, else ``None``."""
        for attempt in reversed(self.attempts):
            if attempt.output is not None:
                return attempt.output
        return None


class BackendError(GuardrailError):
    """A model could not be loaded or called. ``retryable`` says whether trying again may help."""

    retryable: bool = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class TransportError(BackendError):
    """A transient failure talking to a model: worth retrying after a pause.

    ``retry_after`` (seconds) is honoured by the backoff when the server sent one.
    """

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, status: int | None = None,
                 hint: str | None = None) -> None:
        self.retry_after = retry_after
        self.status = status
        super().__init__(message, hint=hint)


class SuiteError(GuardrailError, ValueError):
    """A robustness suite is malformed; the message names the file, the line when known, and the entry."""

    def __init__(self, message: str, *, source: Any = None, line: int | None = None) -> None:
        self.source = source
        self.line = line
        where = ", ".join(part for part in (None if source is None else str(source),
                                            None if line is None else f"line {line}") if part)
        super().__init__(f"{where}: {message}" if where else message)
