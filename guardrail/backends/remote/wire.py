"""The OpenAI chat-completions wire format: the fields that carry the schema, a response read
into a ``Generation``, and what the server's error answers say (message, mode refusal, ``Retry-After``)."""

from __future__ import annotations

import email.utils
import json
import re
import time
from typing import Any

import httpx

from guardrail.backends.base import Generation
from guardrail.errors import BackendError
from guardrail.reasoning import server_reasoning

_TRANSIENT_STATUS = frozenset({408, 409, 425, 429})
_MODE_FIELDS = re.compile(r"response_format|json_schema|json_object|structured_outputs|guided_json", re.IGNORECASE)
# llama-cpp-python answers an unknown response_format type with a 500 holding pydantic's validation error.
_VALIDATION_FAILED = re.compile(r"validation error|literal_error|not supported|unsupported|invalid", re.IGNORECASE)


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


def _is_success(response: httpx.Response) -> bool:
    return 200 <= response.status_code < 300


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


def _refuses_mode(status: int, text: str, mode: str | None) -> bool:
    """Whether an error answer refuses the structured-output fields (not worth a retry in that mode).

    A 400 or 422 naming the field, or a 500 naming it beside a validation failure (llama-cpp-python
    0.3 answers ``response_format: {"type": "json_schema"}`` so).
    """
    if mode in (None, "prompt") or not _MODE_FIELDS.search(text):
        return False
    return status in (400, 422) or (status == 500 and bool(_VALIDATION_FAILED.search(text)))


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
