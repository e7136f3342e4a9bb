"""One try at a guarded call: what was sent, what came back, and each issue found, by JSON Pointer.

``Attempt`` and ``Issue`` are the history ``Result.attempts`` and ``GuardError.attempts`` carry.
They live apart from ``guardrail.result`` so that ``guardrail.errors`` can name them without
importing the result it is raised instead of (``result`` imports ``errors``, not the reverse).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Attempt", "Ending", "Issue"]

#: Why an attempt ended.
Ending = Literal["valid", "invalid", "truncated", "error", "timeout", "budget"]


@dataclass(frozen=True)
class Issue:
    """One thing wrong with an output, located by JSON Pointer.

    >>> Issue(path="/items/0/price", message="-3 is less than the minimum of 0", value=-3)
    Issue(path='/items/0/price', message='-3 is less than the minimum of 0', value=-3, keyword=None)

    ``keyword`` names what failed: a JSON Schema keyword (``"required"``, ``"type"`` ...),
    ``"json"`` (not parseable), ``"truncated"`` (cut off), or a pydantic error type.
    """

    path: str
    message: str
    value: Any = None
    keyword: str | None = None

    def __str__(self) -> str:
        return f"{self.path or '/'}: {self.message}"


@dataclass
class Attempt:
    """One call to the model and what came of it.

    ``prompt`` is exactly what was sent (a string or chat messages); ``output`` the raw text, or
    ``None`` when the call raised (``error`` then holds ``"ExceptionType: message"``).
    ``extracted`` is true when the JSON had to be dug out of prose or a fenced block.
    ``reasoning`` is a reasoning model's thinking (its ``<think>`` block, or what the server sent
    apart as ``reasoning_content``), kept beside the answer: ``output`` is the answer only, the
    text that was validated and that a re-ask quotes, never the thinking. Its tokens are counted
    in ``completion_tokens``.

    With ``strategy="vote"`` one attempt is one *round*: ``samples`` holds an ``Attempt`` per
    sample of the round (its ``sample`` index set, in the order they were drawn); the round's own
    ``output`` is the voted answer's text (or, when no sample was valid, the text of the sample
    whose issues the re-ask quotes), its token counts are the samples' sums, and it is ``valid``
    when any sample was. ``confidence`` maps the leaf fields of a valid output to a number in
    [0, 1] computed from token log-probabilities (``guardrail.confidence``), when the backend
    reported them.
    """

    prompt: Any
    output: str | None
    issues: list[Issue] = field(default_factory=list)
    duration_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    ended: Ending = "invalid"
    extracted: bool = False
    finish_reason: str | None = None
    max_new_tokens: int | None = None
    sample: int | None = None
    samples: list[Attempt] = field(default_factory=list)
    confidence: dict[str, float] | None = None
    reasoning: str | None = None

    @property
    def tokens(self) -> int | None:
        """Prompt plus completion tokens, where the backend reported them."""
        if self.prompt_tokens is None and self.completion_tokens is None:
            return None
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)

    @property
    def ok(self) -> bool:
        return self.ended == "valid"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy, for logs and reports (``sample``, ``samples``, ``confidence`` and ``reasoning``
        only when set)."""
        extra: dict[str, Any] = {}
        if self.sample is not None:
            extra["sample"] = self.sample
        if self.samples:
            extra["samples"] = [s.to_dict() for s in self.samples]
        if self.confidence is not None:
            extra["confidence"] = dict(self.confidence)
        if self.reasoning is not None:
            extra["reasoning"] = self.reasoning
        return {
            "prompt": self.prompt,
            "output": self.output,
            "issues": [
                {"path": i.path, "message": i.message, "keyword": i.keyword, "value": _jsonable(i.value)}
                for i in self.issues
            ],
            "duration_s": self.duration_s,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "error": self.error,
            "ended": self.ended,
            "extracted": self.extracted,
            "finish_reason": self.finish_reason,
            "max_new_tokens": self.max_new_tokens,
            **extra,
        }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)
