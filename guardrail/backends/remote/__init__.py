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

The package's modules each hold one concern: ``backend`` (``RemoteBackend``: requests, sync and
async, streamed or not, and the ``auto`` step down), ``wire`` (the OpenAI format: the fields that
carry the schema, a response read into a ``Generation``, the server's error answers), ``sse``
(server-sent events, for streaming), ``settings`` (modes and defaults), ``errors`` and ``records``.
"""

from guardrail.backends.remote.backend import RemoteBackend
from guardrail.backends.remote.errors import TransportTimeout
from guardrail.backends.remote.records import RequestRecord
from guardrail.backends.remote.settings import API_KEY_ENV, DEFAULT_STRUCTURED, DEFAULT_TIMEOUT_S, STRUCTURED_MODES
from guardrail.backends.remote.settings import AUTO_ORDER as AUTO_ORDER
from guardrail.backends.remote.settings import CONNECT_TIMEOUT_S as CONNECT_TIMEOUT_S
from guardrail.backends.remote.settings import LOG_SIZE as LOG_SIZE
from guardrail.backends.remote.wire import _structured_fields as _structured_fields
from guardrail.backends.remote.wire import parse_retry_after as parse_retry_after

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_STRUCTURED",
    "DEFAULT_TIMEOUT_S",
    "STRUCTURED_MODES",
    "RemoteBackend",
    "RequestRecord",
    "TransportTimeout",
]
