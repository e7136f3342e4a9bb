"""A loopback HTTP proxy that injects faults, for testing how a remote backend copes.

``FaultProxy(upstream, faults)`` listens on 127.0.0.1 (a free port). Each request to a faulted path
(by default ``POST .../chat/completions``) takes the next ``Fault`` from the queue: a canned
answer (``503`` with or without ``Retry-After``, a ``400``, a chat completion ...), optionally after
a delay, or a delayed forward. With the queue empty, requests are forwarded to ``upstream`` (the
real server); with no upstream they get a 502. Every exchange is logged with its start and end
times (``time.monotonic``, the clock ``RemoteBackend.log`` uses), status, whether it was injected,
the request body and headers, so tests can see retries, backoff pauses and overlap.

A stream can be cut: ``Fault(forward=True, cut_after_events=N)`` forwards the request, then sends
only the first N server-sent events of the answer and closes the connection, short of the
``Content-Length`` it announced (``clean_close=True``: announcing no length, so the close looks
like a normal end of the body). ``sse(...)`` is a canned event stream.

The server is a ``ThreadingHTTPServer``: concurrent requests are handled (and forwarded) at once.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Fault:
    """What to do with one request: answer ``status``/``body``/``headers`` after ``delay_s``, or,
    with ``forward``, forward it to the upstream after ``delay_s`` (a slow server). With
    ``cut_after_events``, send only that many server-sent events of the answer, then close."""

    status: int = 503
    body: Any = field(default_factory=lambda: {"error": {"message": "injected fault", "type": "server_error"}})
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    forward: bool = False
    cut_after_events: int | None = None
    clean_close: bool = False


def sse(*events: Any, done: bool = True) -> Fault:
    """A canned 200 server-sent event stream: each event a JSON object (or raw text), then ``[DONE]``."""
    lines = [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events]
    body = "".join(lines) + ("data: [DONE]\n\n" if done else "")
    return Fault(200, body.encode(), headers={"Content-Type": "text/event-stream"})


def chunk(content: str | None = None, *, reasoning: str | None = None, finish_reason: str | None = None,
          usage: dict[str, int] | None = None) -> dict[str, Any]:
    """One chat-completion stream chunk, as OpenAI-compatible servers send it."""
    delta: dict[str, Any] = {}
    if content is not None:
        delta["content"] = content
    if reasoning is not None:
        delta["reasoning_content"] = reasoning
    out: dict[str, Any] = {"id": "chatcmpl-canned", "object": "chat.completion.chunk", "created": 0, "model": "canned",
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
    if usage is not None:
        out["usage"] = usage
    return out


def completion(text: str, *, finish_reason: str = "stop", prompt_tokens: int = 10, completion_tokens: int = 5) -> Fault:
    """A canned 200 chat completion whose message content is ``text``."""
    return Fault(200, {
        "id": "chatcmpl-canned", "object": "chat.completion", "created": 0, "model": "canned",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })


@dataclass
class Exchange:
    """One request the proxy handled."""

    method: str
    path: str
    started: float
    ended: float
    status: int
    injected: bool
    body: Any
    headers: dict[str, str]
    cut: bool = False


class FaultProxy:
    """See the module docstring. Use as a context manager, or ``start()`` and ``stop()``."""

    def __init__(self, upstream: str | None = None, faults: Iterable[Fault] = (), *,
                 faulted: str = "/chat/completions") -> None:
        self.upstream = urllib.parse.urlsplit(upstream) if upstream else None
        self.faults: deque[Fault] = deque(faults)
        self.faulted = faulted
        self.log: list[Exchange] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                proxy._handle(self)

            def do_POST(self) -> None:
                proxy._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (append ``/v1`` for an OpenAI-compatible base URL)."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def exchanges(self, path_part: str | None = None) -> list[Exchange]:
        """The logged exchanges (those whose path contains ``path_part``), in order of arrival."""
        with self._lock:
            chosen = [e for e in self.log if path_part is None or path_part in e.path]
        return sorted(chosen, key=lambda e: e.started)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- handling ------------------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        started = time.monotonic()
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        fault = None
        if self.faulted in request.path:
            with self._lock:
                fault = self.faults.popleft() if self.faults else None
        if fault is not None and fault.delay_s:
            time.sleep(fault.delay_s)
        if fault is not None and not fault.forward:
            payload = fault.body if isinstance(fault.body, bytes) else (
                fault.body.encode() if isinstance(fault.body, str) else json.dumps(fault.body).encode())
            status, headers = fault.status, {"Content-Type": "application/json", **fault.headers}
        else:
            status, headers, payload = self._forward(request, raw)
        # Logged (and ``ended`` taken) just before the answer is written, so a client that has its
        # answer finds the exchange logged, and its next request never seems to overlap this one.
        cut = fault is not None and fault.cut_after_events is not None
        exchange = Exchange(request.command, request.path, started, time.monotonic(), status,
                            fault is not None and not fault.forward, body, dict(request.headers), cut)
        with self._lock:
            self.log.append(exchange)
        try:
            request.send_response(status)
            for name, value in headers.items():
                request.send_header(name, value)
            if fault is not None and fault.cut_after_events is not None:
                sent = _first_events(payload, fault.cut_after_events)
                if fault.clean_close:  # no length announced: the client reads to the close
                    request.send_header("Connection", "close")
                else:
                    request.send_header("Content-Length", str(len(payload)))
                request.end_headers()
                request.wfile.write(sent)
                request.close_connection = True
                return
            request.send_header("Content-Length", str(len(payload)))
            request.end_headers()
            request.wfile.write(payload)
        except OSError:  # the client gave up (a timeout test): nothing to answer
            pass

    def _forward(self, request: BaseHTTPRequestHandler, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.upstream is None:
            return 502, {"Content-Type": "application/json"}, b'{"error": {"message": "the proxy has no upstream"}}'
        conn = http.client.HTTPConnection(self.upstream.hostname or "127.0.0.1", self.upstream.port, timeout=600)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(request.command, request.path, body=raw or None, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            kept = {k: v for k, v in response.getheaders()
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server")}
            return response.status, kept, payload
        except OSError as exc:
            return 502, {"Content-Type": "application/json"}, json.dumps({"error": {"message": str(exc)}}).encode()
        finally:
            conn.close()


def _first_events(payload: bytes, count: int) -> bytes:
    """The first ``count`` server-sent events of a body (each ends with a blank line)."""
    ends = [m.end() for m in re.finditer(rb"\r?\n\r?\n", payload)]
    return payload[: ends[count - 1]] if 0 < count <= len(ends) else payload[:0] if count <= 0 else payload
