"""A backend for OpenAI-compatible chat-completions servers: vLLM, SGLang, TGI, llama.cpp, hosted APIs.

A ``base_url`` selects it; ``model`` is then the server's model name (the openai SDK's convention)::

    Guard(Contact, base_url="http://127.0.0.1:8000/v1", model="smollm2")
    guardrail report SUITE --base-url http://127.0.0.1:8000/v1 --model smollm2 --concurrency 8

Without ``model`` the server's only model (``GET /models``) is used. The API key is ``api_key=``,
else the ``OPENAI_API_KEY`` environment variable, else none (local servers need none). It goes
in an ``Authorization: Bearer`` header and is never recorded.

Structured output (``structured=``), i.e. how the schema reaches the server:

``"json_schema"``
    ``response_format: {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``:
    OpenAI, vLLM, SGLang, llama.cpp's C++ ``llama-server``.
``"json_object"``
    ``response_format: {"type": "json_object", "schema": ...}``: llama.cpp (``llama-server`` and
    llama-cpp-python's server, which refuses ``json_schema`` with a 422), Anyscale-style servers.
``"vllm"``
    vLLM's own field, ``structured_outputs: {"json": ...}`` (vLLM >= 0.10.2).
``"guided_json"``
    the older vLLM/TGI-era field ``guided_json`` (vLLM < 0.12).
``"prompt"``
    nothing: the schema is only described in the system prompt.
``"auto"`` (the default)
    ``json_schema`` first; when the server refuses it (a 400/422 naming ``response_format`` or
    ``json_schema``, or llama-cpp-python's 500 holding such a validation error), ``json_object``
    is tried, then ``prompt``. The first mode the server accepts
    is kept for every later call (``describe()["structured"]`` shows it) and a warning names the
    step down. A server that accepts a mode but ignores it is not detected: that is what the
    validation is for.

Whatever the server did, the guard validates the text and re-asks on invalid output, exactly as
with a local model. ``Sampling(constrained=False)`` (the report's unconstrained mode) sends no
schema. The schema sent is the user's schema tightened the way the local backend tightens it
(``decoding_schema``: free strings get ``maxLength`` ``string_cap``, listed-property objects get
``additionalProperties: false``), so a small model cannot run away inside a string; validation
uses the user's schema. ``string_cap=None`` sends the schema as it is (OpenAI's ``strict``
mode rejects some keywords: pass ``strict=True, string_cap=None`` there).

Sampling maps to ``temperature``, ``top_p``, ``seed`` and ``max_tokens``; ``top_k`` and
``repetition_penalty`` (sent as both ``repetition_penalty`` and llama.cpp's ``repeat_penalty``)
only when set, since OpenAI rejects them. ``extra_body`` is merged into every request for
anything server-specific. ``logprobs=True`` asks for token log-probabilities (``logprobs: true, top_logprobs: 0``);
they are read whenever a response carries them.

Errors are mapped where they happen, so the guard's retry policy can judge them:

* 429, 408, 409, 425 and 5xx → ``TransportError`` (``status``, and ``retry_after`` from a
  ``Retry-After`` header in seconds or as an HTTP date): retried with backoff, waiting at least
  ``Retry-After``; a 500 that refuses the structured-output field is a ``BackendError`` instead;
* no answer within ``timeout_s`` → ``TransportTimeout`` (a ``TransportError`` and a
  ``TimeoutError``, so the attempt is recorded as ``ended="timeout"``): retried;
* connection refused, reset or cut → ``TransportError`` naming the URL: retried;
* 401/403 → ``BackendError`` with a hint about ``OPENAI_API_KEY``; 404 → ``BackendError`` with a
  hint about ``base_url`` and ``model``; other 4xx → ``BackendError`` quoting the server's
  message. None of these is retried.

Every failure is an attempt in the result's history (``"TransportError: HTTP 503 ..."``).

Streaming (``stream``/``astream``): the same request with ``"stream": true`` (and
``stream_options: {"include_usage": true}``, for the token counts servers then send last),
read as server-sent events. Each chunk's ``delta.content`` becomes a ``StreamDelta``'s text,
its ``reasoning_content`` (or ``reasoning``) the delta's reasoning; the final delta carries the
finish reason and, when the server sent them, the token counts. The errors above apply to the
response's status; after it, a connection cut before ``[DONE]`` or a finish reason, a read
timeout, a line that is not server-sent events and an event whose data is not JSON are
``TransportError``s (retried by the guard; what the stream yielded before is no answer), and an
error event is mapped by its code as above. A server that answers a stream request with one
JSON completion streams it as one delta.

Concurrency: the backend does not batch (``batches`` false), so ``Guard.run_many(prompts,
concurrency=N)`` and ``guardrail report --concurrency N`` keep up to N requests in flight at once,
through one ``httpx.AsyncClient`` per event loop (closed when that loop shuts down). Whether the
server computes them at once is up to the server: vLLM and SGLang batch them; llama-cpp-python's
server takes one at a time. ``log`` keeps the last ``LOG_SIZE`` requests' start and end times
(``time.monotonic``), status and error, which is how overlap can be seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import os
import re
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from guardrail.backends.base import Backend, Generation, Prompt, Sampling, StreamDelta, whole
from guardrail.backends.decoding_schema import DEFAULT_STRING_CAP, decoding_schema
from guardrail.errors import BackendError, TransportError
from guardrail.reasoning import server_reasoning

if TYPE_CHECKING:
    from guardrail.schema import Schema

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_STRUCTURED",
    "DEFAULT_TIMEOUT_S",
    "STRUCTURED_MODES",
    "RemoteBackend",
    "RequestRecord",
    "TransportTimeout",
]

#: How the schema can reach the server; see the module docstring.
STRUCTURED_MODES: tuple[str, ...] = ("auto", "json_schema", "json_object", "vllm", "guided_json", "prompt")
DEFAULT_STRUCTURED = "auto"
#: What ``auto`` tries, in order, stepping down when the server refuses one.
AUTO_ORDER: tuple[str, ...] = ("json_schema", "json_object", "prompt")
#: The environment variable the API key is read from when ``api_key`` is not given.
API_KEY_ENV = "OPENAI_API_KEY"
#: Seconds to wait for a response when ``timeout_s`` is not given (a small model on a busy CPU
#: can take tens of seconds per answer); connecting gets at most ``CONNECT_TIMEOUT_S``.
DEFAULT_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 10.0
#: Requests kept in ``RemoteBackend.log``.
LOG_SIZE = 1000
_TRANSIENT_STATUS = frozenset({408, 409, 425, 429})
_MODE_FIELDS = re.compile(r"response_format|json_schema|json_object|structured_outputs|guided_json", re.IGNORECASE)
# llama-cpp-python answers an unknown response_format type with a 500 holding pydantic's validation error.
_VALIDATION_FAILED = re.compile(r"validation error|literal_error|not supported|unsupported|invalid", re.IGNORECASE)


class TransportTimeout(TransportError, TimeoutError):
    """The server did not answer within the timeout: retried, and recorded as ``ended="timeout"``."""


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP request: when it started and ended (``time.monotonic``), its status, its error."""

    started: float
    ended: float
    url: str
    status: int | None
    error: str | None = None
    structured: str | None = None

    @property
    def duration_s(self) -> float:
        return self.ended - self.started


class _ModeRefused(Exception):
    """The server refused a structured-output mode (400/422 naming it); ``auto`` steps down."""

    def __init__(self, mode: str, error: BackendError, detail: str) -> None:
        self.mode = mode
        self.error = error
        self.detail = detail
        super().__init__(str(error))


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
        """Stream one chat completion as server-sent events; see the module docstring."""
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


def _refuses_mode(status: int, text: str, mode: str | None) -> bool:
    """Whether an error answer refuses the structured-output fields (not worth a retry in that mode).

    A 400 or 422 naming the field, or a 500 naming it beside a validation failure (llama-cpp-python
    0.3 answers ``response_format: {"type": "json_schema"}`` so).
    """
    if mode in (None, "prompt") or not _MODE_FIELDS.search(text):
        return False
    return status in (400, 422) or (status == 500 and bool(_VALIDATION_FAILED.search(text)))


def _structured_fields(mode: str, schema: Any, name: str, strict: bool) -> dict[str, Any]:
    """The request fields that carry the schema in ``mode`` (none for ``prompt`` or no schema)."""
    if mode == "prompt" or schema is None:
        return {}
    if mode == "json_schema":
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "output"
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": safe, "schema": schema, "strict": strict}}}
    if mode == "json_object":
        return {"response_format": {"type": "json_object", "schema": schema}}
    if mode == "vllm":
        return {"structured_outputs": {"json": schema}}
    if mode == "guided_json":
        return {"guided_json": schema}
    raise ValueError(f"unknown structured mode {mode!r}")


def _generation(body: Any, duration_s: float) -> Generation:
    """A chat-completion response body as a ``Generation``."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not choices or not isinstance(choices[0], dict):
        message = body.get("error") if isinstance(body, dict) else None
        raise BackendError(f"the server's response has no choices: {_snippet(json.dumps(message or body))}")
    first = choices[0]
    message = first.get("message") or {}
    text = message.get("content")
    if text is None:  # a refusal (OpenAI structured outputs) or a tool call: recorded, then re-asked
        text = message.get("refusal") or ""
    usage = body.get("usage") or {}
    return Generation(
        text=str(text),
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        finish_reason=_finish_reason(first.get("finish_reason")),
        duration_s=duration_s,
        logprobs=_logprobs(first.get("logprobs")),
        reasoning=server_reasoning(message),
    )


def _finish_reason(reason: Any) -> str | None:
    """The server's finish reason in guardrail's words (``"stop"``, ``"length"`` ...)."""
    if reason in ("stop", "eos", "eos_token"):
        return "stop"
    return reason if isinstance(reason, str) else None


def _is_success(response: httpx.Response) -> bool:
    return 200 <= response.status_code < 300


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


def _logprobs(block: Any) -> list[tuple[str, float]] | None:
    """``choices[0].logprobs.content[*].{token, logprob}`` (the chat format), if the server sent it."""
    content = block.get("content") if isinstance(block, dict) else None
    if not isinstance(content, list):
        return None
    pairs: list[tuple[str, float]] = []
    for item in content:
        token, logprob = (item.get("token"), item.get("logprob")) if isinstance(item, dict) else (None, None)
        if not isinstance(token, str) or not isinstance(logprob, (int, float)):
            return None
        pairs.append((token, float(logprob)))
    return pairs or None


def _server_message(response: httpx.Response) -> str:
    """The server's own error message: ``{"error": {"message": ...}}``, ``{"detail": ...}`` or the text."""
    try:
        body = response.json()
    except ValueError:
        return _snippet(response.text) or "(empty body)"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return _snippet(str(error["message"]))
        for key in ("error", "detail", "message"):
            if body.get(key):
                return _snippet(json.dumps(body[key]) if not isinstance(body[key], str) else body[key])
    return _snippet(json.dumps(body))


def _snippet(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number of seconds or an HTTP date (never negative).

    >>> parse_retry_after("2"), parse_retry_after("0.5"), parse_retry_after(None), parse_retry_after("soon")
    (2.0, 0.5, None, None)
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT")  # in the past
    0.0
    """
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
