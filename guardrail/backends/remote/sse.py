"""Streaming: ``_EventReader`` reads chat-completion chunks sent as server-sent events."""

from __future__ import annotations

import json
from typing import Any

import httpx

from guardrail.backends.base import StreamDelta
from guardrail.backends.remote.wire import _TRANSIENT_STATUS, _finish_reason, _snippet
from guardrail.errors import BackendError, TransportError
from guardrail.reasoning import server_reasoning


def _is_event_stream(response: httpx.Response) -> bool:
    return "text/event-stream" in response.headers.get("content-type", "")


class _EventReader:
    """Reads a stream of chat-completion chunks sent as server-sent events, one line at a time.

    It decides what each line means (a delta, the end, an error) and does no I/O, so the sync and
    async drivers only read lines. ``end()`` is called when the connection closes.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.lines = 0
        self.events = 0
        self.done = False
        self.finish_reason: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self._data: list[str] = []
        self._event = ""

    def line(self, line: str) -> StreamDelta | None:
        """The delta a line completes, if any (a blank line ends an event)."""
        self.lines += 1
        if self.done:
            return None
        if not line:
            return self._dispatch()
        if line.startswith(":"):  # a comment: servers send them as keep-alive pings
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name not in ("id", "retry"):
            raise TransportError(f"the stream from {self.url} is not server-sent events: line {self.lines} is "
                                 f"{_snippet(line, 120)!r}")
        return None

    def end(self) -> StreamDelta:
        """The connection closed: the final delta, or a ``TransportError`` if the answer was cut off."""
        if self._data:  # the last event may lack its blank line
            self._dispatch()
        if not self.done and self.finish_reason is None:
            raise TransportError(f"the stream from {self.url} ended before the answer was complete "
                                 f"(connection closed after {self.events} events, without [DONE])")
        return StreamDelta(final=True, prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                           finish_reason=self.finish_reason)

    def _dispatch(self) -> StreamDelta | None:
        data, event = "\n".join(self._data), self._event
        self._data, self._event = [], ""
        if not data:
            return None
        self.events += 1
        if data.strip() == "[DONE]":
            self.done = True
            return None
        try:
            chunk = json.loads(data)
        except ValueError:
            raise TransportError(f"the stream from {self.url} sent an event whose data is not JSON "
                                 f"(event {self.events}): {_snippet(data, 120)!r}") from None
        if not isinstance(chunk, dict):
            raise TransportError(f"the stream from {self.url} sent an event that is not a JSON object "
                                 f"(event {self.events}): {_snippet(data, 120)!r}")
        if event == "error" or "error" in chunk:
            raise self._error(chunk.get("error", chunk))
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = usage.get("prompt_tokens", self.prompt_tokens)
            self.completion_tokens = usage.get("completion_tokens", self.completion_tokens)
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return None  # the usage-only chunk, or one with nothing in it
        first = choices[0]
        if first.get("finish_reason") is not None:
            self.finish_reason = _finish_reason(first["finish_reason"])
        delta = first.get("delta")
        if not isinstance(delta, dict):
            return None
        text = delta.get("content")
        thought = server_reasoning(delta)
        if not text and not thought:
            return None
        return StreamDelta(text if isinstance(text, str) else "", thought or "")

    def _error(self, error: Any) -> BackendError:
        """An error the server sent inside the stream, mapped by its code like an HTTP status."""
        message = error.get("message") if isinstance(error, dict) else error
        code = error.get("code") if isinstance(error, dict) else None
        status = code if isinstance(code, int) else None
        text = f"the server reported an error in the stream from {self.url}: {_snippet(str(message))}"
        if status is not None and 400 <= status < 500 and status not in _TRANSIENT_STATUS:
            failed = BackendError(text)
            failed.status = status  # type: ignore[attr-defined]
            return failed
        return TransportError(text, status=status)
