"""The exceptions the remote backend raises besides ``guardrail.errors``' own."""

from __future__ import annotations

from guardrail.errors import BackendError, TransportError


class TransportTimeout(TransportError, TimeoutError):
    """The server did not answer within the timeout: retried, and recorded as ``ended="timeout"``."""


class _ModeRefused(Exception):
    """The server refused a structured-output mode (400/422 naming it); ``auto`` steps down."""

    def __init__(self, mode: str, error: BackendError, detail: str) -> None:
        self.mode = mode
        self.error = error
        self.detail = detail
        super().__init__(str(error))
