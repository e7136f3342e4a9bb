"""``RemoteBackend``: requests to the server, sync and async, streamed or not; errors mapped where
they happen, the ``auto`` mode's step down, and the log of requests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import httpx

from guardrail.backends.base import Backend, Generation, Prompt, Sampling, StreamDelta, whole
from guardrail.backends.decoding_schema import DEFAULT_STRING_CAP, decoding_schema
from guardrail.backends.remote.errors import TransportTimeout, _ModeRefused
from guardrail.backends.remote.records import RequestRecord
from guardrail.backends.remote.settings import (
    API_KEY_ENV,
    AUTO_ORDER,
    CONNECT_TIMEOUT_S,
    DEFAULT_STRUCTURED,
    DEFAULT_TIMEOUT_S,
    LOG_SIZE,
    STRUCTURED_MODES,
)
from guardrail.backends.remote.sse import _EventReader, _is_event_stream
from guardrail.backends.remote.wire import (
    _TRANSIENT_STATUS,
    _generation,
    _is_success,
    _refuses_mode,
    _server_message,
    _snippet,
    _structured_fields,
    parse_retry_after,
)
from guardrail.errors import BackendError, TransportError

if TYPE_CHECKING:
    from guardrail.schema import Schema


class RemoteBackend(Backend):
    """Chat completions from an OpenAI-compatible server at ``base_url`` (e.g. ``http://host:8000/v1``).

    Options: ``model`` (the server's model name; default: its only one), ``api_key`` (default:
    ``$OPENAI_API_KEY``), ``structured`` (one of ``STRUCTURED_MODES``, default ``"auto"``),
    ``timeout_s`` (per request; default ``DEFAULT_TIMEOUT_S``), ``strict`` (OpenAI's strict
    schema mode), ``string_cap`` (``maxLength`` for free strings in the schema sent), ``logprobs``,
    ``headers`` and ``extra_body`` (merged into each request body).
    """

    batches = False
    wants_instructions = True
    reads_images = True

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        structured: str = DEFAULT_STRUCTURED,
        timeout_s: float | None = None,
        strict: bool = False,
        string_cap: int | None = DEFAULT_STRING_CAP,
        logprobs: bool = False,
        headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not re.match(r"https?://", base_url):
            raise ValueError(f"base_url must be an http:// or https:// URL such as http://127.0.0.1:8000/v1, "
                             f"got {base_url!r}")
        if structured not in STRUCTURED_MODES:
            raise ValueError(f"structured must be one of {', '.join(STRUCTURED_MODES)}; got {structured!r}")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.structured = structured
        self.timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s)
        self.strict = strict
        self.string_cap = string_cap
        self.logprobs = logprobs
        self.extra_body = dict(extra_body or {})
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self._headers = {"Accept": "application/json", **({"Authorization": f"Bearer {key}"} if key else {}),
                         **dict(headers or {})}
        self._key_given = bool(key)
        # ``auto`` steps down through AUTO_ORDER; the other modes stay as chosen.
        self._mode = AUTO_ORDER[0] if structured == "auto" else structured
        self._mode_lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        # One async client per event loop; a keeper async generator closes it at loop shutdown.
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[httpx.AsyncClient, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self.log: deque[RequestRecord] = deque(maxlen=LOG_SIZE)

    # -- the Backend interface -------------------------------------------------------------

    @property
    def mode(self) -> str:
        """The structured-output mode in use now (``auto`` resolved to what the server accepted)."""
        return self._mode

    def generate(self, prompts: Sequence[Prompt], schema: Schema, sampling: Sampling) -> list[Generation]:
        return [self._one(prompt, schema, sampling) for prompt in prompts]

    async def agenerate(self, prompts: Sequence[Prompt], schema: Schema, sampling: Sampling) -> list[Generation]:
        return [await self._aone(prompt, schema, sampling) for prompt in prompts]

    def stream(self, prompt: Prompt, schema: Schema, sampling: Sampling) -> Iterator[StreamDelta]:
        """Stream one chat completion as server-sent events; see ``guardrail.backends.remote``."""
        client = self._sync_client()
        if self.model is None:
            self._set_model(self._send_sync(client, "GET", "/models", None, None))
        url = self.base_url + "/chat/completions"
        while True:
            mode = self._mode if sampling.constrained else "prompt"
            started = time.monotonic()
            try:
                with client.stream("POST", url, json=self._payload(prompt, schema, sampling, mode, stream=True)) as response:
                    if not _is_success(response) or not _is_event_stream(response):
                        response.read()
                        yield whole(_generation(self._read(response, url, started, mode), time.monotonic() - started))
                        return
                    reader = _EventReader(url)
                    try:
                        for line in response.iter_lines():
                            if (delta := reader.line(line)) is not None:
                                yield delta
                        final = reader.end()
                    except BackendError as exc:  # what the stream said was wrong (HTTP errors: below)
                        self._record(started, url, response.status_code, str(exc), mode)
                        raise
            except _ModeRefused as refused:
                self._step_down(refused)
                continue
            except httpx.HTTPError as exc:
                raise self._failed(url, started, exc, mode) from exc
            self._record(started, url, response.status_code, None, mode)
            yield final
            return

    async def astream(self, prompt: Prompt, schema: Schema, sampling: Sampling) -> AsyncIterator[StreamDelta]:
        """Async ``stream``."""
        client = await self._async_client()
        if self.model is None:
            self._set_model(await self._send_async(client, "GET", "/models", None, None))
        url = self.base_url + "/chat/completions"
        while True:
            mode = self._mode if sampling.constrained else "prompt"
            started = time.monotonic()
            try:
                async with client.stream("POST", url,
                                         json=self._payload(prompt, schema, sampling, mode, stream=True)) as response:
                    if not _is_success(response) or not _is_event_stream(response):
                        await response.aread()
                        yield whole(_generation(self._read(response, url, started, mode), time.monotonic() - started))
                        return
                    reader = _EventReader(url)
                    try:
                        async for line in response.aiter_lines():
                            if (delta := reader.line(line)) is not None:
                                yield delta
                        final = reader.end()
                    except BackendError as exc:  # what the stream said was wrong (HTTP errors: below)
                        self._record(started, url, response.status_code, str(exc), mode)
                        raise
            except _ModeRefused as refused:
                self._step_down(refused)
                continue
            except httpx.HTTPError as exc:
                raise self._failed(url, started, exc, mode) from exc
            self._record(started, url, response.status_code, None, mode)
            yield final
            return

    def describe(self) -> dict[str, Any]:
        structured = self._mode if self.structured != "auto" else f"auto ({self._mode})"
        return {"backend": "remote", "base_url": self.base_url, "model": self.model, "structured": structured,
                "httpx": httpx.__version__}

    def close(self) -> None:
        """Close the sync connection pool (async pools close with their event loop)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __del__(self) -> None:
        # Close the pooled keep-alive connections with the backend, not at interpreter exit.
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        return f"RemoteBackend({self.base_url!r}, model={self.model!r}, structured={self.structured!r})"

    # -- one prompt, sync and async ----------------------------------------------------------

    def _one(self, prompt: Prompt, schema: Schema, sampling: Sampling) -> Generation:
        client = self._sync_client()
        if self.model is None:
            self._set_model(self._send_sync(client, "GET", "/models", None, None))
        while True:
            mode = self._mode if sampling.constrained else "prompt"
            started = time.monotonic()
            try:
                body = self._send_sync(client, "POST", "/chat/completions", self._payload(prompt, schema, sampling,
                                                                                          mode), mode)
            except _ModeRefused as refused:
                self._step_down(refused)
                continue
            return _generation(body, time.monotonic() - started)

    async def _aone(self, prompt: Prompt, schema: Schema, sampling: Sampling) -> Generation:
        client = await self._async_client()
        if self.model is None:
            self._set_model(await self._send_async(client, "GET", "/models", None, None))
        while True:
            mode = self._mode if sampling.constrained else "prompt"
            started = time.monotonic()
            try:
                body = await self._send_async(client, "POST", "/chat/completions",
                                              self._payload(prompt, schema, sampling, mode), mode)
            except _ModeRefused as refused:
                self._step_down(refused)
                continue
            return _generation(body, time.monotonic() - started)

    # -- the request body ----------------------------------------------------------------------

    def _payload(self, prompt: Prompt, schema: Schema, sampling: Sampling, mode: str, *,
                 stream: bool = False) -> dict[str, Any]:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": sampling.temperature,
                                "max_tokens": sampling.max_new_tokens, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        if sampling.top_p is not None:
            body["top_p"] = sampling.top_p
        if sampling.top_k is not None:
            body["top_k"] = sampling.top_k
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.repetition_penalty is not None:
            body["repetition_penalty"] = body["repeat_penalty"] = sampling.repetition_penalty
        if self.logprobs:
            body["logprobs"], body["top_logprobs"] = True, 0  # llama-cpp-python returns none without top_logprobs
        body.update(_structured_fields(mode, self._schema_to_send(schema), schema.name, self.strict))
        body.update(self.extra_body)
        return body

    def _schema_to_send(self, schema: Schema) -> Any:
        if not isinstance(schema.json_schema, dict):
            return None
        return decoding_schema(schema.json_schema, string_cap=self.string_cap or None)

    # -- HTTP, with errors mapped at the edge ----------------------------------------------------

    def _sync_client(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                self._client = httpx.Client(headers=self._headers, timeout=self._timeout())
            return self._client

    async def _async_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        held = self._aclients.get(loop)
        if held is None:
            client = httpx.AsyncClient(headers=self._headers, timeout=self._timeout(),
                                       limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
            keeper = _close_at_shutdown(client)
            await keeper.__anext__()  # started: asyncio closes it (and so the client) at loop shutdown
            held = self._aclients[loop] = (client, keeper)
        return held[0]

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, CONNECT_TIMEOUT_S))

    def _send_sync(self, client: httpx.Client, method: str, path: str, body: dict[str, Any] | None,
                   mode: str | None) -> Any:
        url = self.base_url + path
        started = time.monotonic()
        try:
            response = client.request(method, url, json=body)
        except httpx.HTTPError as exc:
            raise self._failed(url, started, exc, mode) from exc
        return self._read(response, url, started, mode)

    async def _send_async(self, client: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None,
                          mode: str | None) -> Any:
        url = self.base_url + path
        started = time.monotonic()
        try:
            response = await client.request(method, url, json=body)
        except httpx.HTTPError as exc:
            raise self._failed(url, started, exc, mode) from exc
        return self._read(response, url, started, mode)

    def _failed(self, url: str, started: float, exc: httpx.HTTPError, mode: str | None) -> TransportError:
        """An exception from httpx (no HTTP status) as a retried ``TransportError``."""
        if isinstance(exc, httpx.TimeoutException):
            phase = "connect to" if isinstance(exc, httpx.ConnectTimeout) else "get a response from"
            limit = min(self.timeout_s, CONNECT_TIMEOUT_S) if phase == "connect to" else self.timeout_s
            error: TransportError = TransportTimeout(f"could not {phase} {url} within {limit:g} s")
        elif isinstance(exc, httpx.ConnectError):
            error = TransportError(f"cannot connect to {url}: {exc}", hint="is the server running at that address?")
        else:
            error = TransportError(f"{type(exc).__name__} talking to {url}: {exc}")
        self._record(started, url, None, str(error), mode)
        return error

    def _read(self, response: httpx.Response, url: str, started: float, mode: str | None) -> Any:
        """The JSON body of a 2xx response; anything else as the error it maps to."""
        status = response.status_code
        if 200 <= status < 300:
            try:
                body = response.json()
            except ValueError:
                error: BackendError = BackendError(f"{url} answered {status} with a body that is not JSON: "
                                                   f"{_snippet(response.text)!r}")
                self._record(started, url, status, str(error), mode)
                raise error from None
            self._record(started, url, status, None, mode)
            return body
        error = self._http_error(response, url, mode)
        self._record(started, url, status, str(error), mode)
        if self.structured == "auto" and mode is not None and _refuses_mode(status, response.text, mode):
            raise _ModeRefused(mode, error, _server_message(response))
        raise error

    def _http_error(self, response: httpx.Response, url: str, mode: str | None) -> BackendError:
        status = response.status_code
        reason = response.reason_phrase or ""
        what = f"HTTP {status} {reason}".rstrip() + f" from {response.request.method} {url}"
        detail = _server_message(response)
        if (status in _TRANSIENT_STATUS or status >= 500) and not _refuses_mode(status, response.text, mode):
            wait = parse_retry_after(response.headers.get("retry-after"))
            told = f" (Retry-After: {wait:g} s)" if wait is not None else ""
            return TransportError(f"{what}{told}: {detail}", status=status, retry_after=wait)
        hint: str | None = None
        if status in (401, 403):
            hint = (f"the server wants an API key: set {API_KEY_ENV} or pass api_key="
                    if not self._key_given else f"the API key was refused: check {API_KEY_ENV} or api_key=")
        elif status == 404:
            hint = (f"check base_url (OpenAI-compatible servers usually serve under /v1, e.g. "
                    f"http://127.0.0.1:8000/v1) and the model name {self.model!r}")
        elif _refuses_mode(status, response.text, mode):
            hint = f"the server may not support structured={mode!r}; try another mode ({', '.join(STRUCTURED_MODES)})"
        error = BackendError(f"{what}: {detail}", hint=hint)
        error.status = status  # type: ignore[attr-defined]  # read by guardrail.retry.status_of
        return error

    def _record(self, started: float, url: str, status: int | None, error: str | None, mode: str | None) -> None:
        self.log.append(RequestRecord(started, time.monotonic(), url, status, error, mode))

    # -- model discovery and the auto mode ---------------------------------------------------

    def _set_model(self, listing: Any) -> None:
        ids = [m.get("id") for m in (listing or {}).get("data", []) if isinstance(m, dict)] if isinstance(
            listing, dict) else []
        ids = [i for i in ids if isinstance(i, str)]
        if len(ids) != 1:
            served = ", ".join(map(repr, ids)) or "none"
            raise BackendError(f"no model name given and {self.base_url}/models lists {served}",
                               hint="pass model= (the CLI's --model) naming one")
        self.model = ids[0]

    def _step_down(self, refused: _ModeRefused) -> None:
        with self._mode_lock:
            if self._mode != refused.mode:  # another request already stepped down
                return
            position = AUTO_ORDER.index(refused.mode)
            if position + 1 >= len(AUTO_ORDER):
                raise refused.error
            self._mode = AUTO_ORDER[position + 1]
        warnings.warn(f"{self.base_url} refused structured output as {refused.mode!r} "
                      f"(HTTP {getattr(refused.error, 'status', '?')}: {refused.detail}); "
                      f"using {self._mode!r} from now on (pass structured= to choose)", RuntimeWarning, stacklevel=2)


async def _close_at_shutdown(client: httpx.AsyncClient) -> AsyncIterator[None]:
    """Yields once, then waits; ``loop.shutdown_asyncgens`` (run by ``asyncio.run``) closes the client."""
    try:
        yield
        yield  # never reached: the loop's shutdown closes the generator here
    finally:
        await client.aclose()
