"""What a guarded call returns: the value, the final text and every attempt on the way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from guardrail.attempt import Attempt, Ending, Issue
from guardrail.errors import GuardError

__all__ = ["Attempt", "Ending", "Issue", "Result"]  # Attempt, Ending and Issue live in guardrail.attempt

T = TypeVar("T")


@dataclass
class Result(Generic[T]):
    """The outcome of ``Guard.run``: a validated ``value`` plus the history that led to it.

    ``value`` is the pydantic instance for a model schema, or the parsed JSON for a raw schema.
    From ``run_many`` a failed item comes back with ``ok`` false, ``value`` ``None`` and ``error``
    set, instead of raising, so one bad item does not lose a batch.

    ``confidence`` maps each leaf field of the value (JSON Pointer: scalars, and arrays whole) to
    the probability the model gave its tokens (``guardrail.confidence``), when the backend reports
    log-probabilities; with ``strategy="vote"`` it is the mean over the samples that agree with
    the answer. ``agreement`` (vote only) maps every leaf field of the schema to the share of
    valid samples whose value there agrees with the answer (``guardrail.voting``).

    >>> result = Result({"n": 1}, '{"n": 1}', [Attempt("How many?", '{"n": 1}', ended="valid")])
    >>> result.ok, result.unwrap(), len(result.attempts)
    (True, {'n': 1}, 1)
    """

    value: T | None
    raw: str | None
    attempts: list[Attempt]
    error: GuardError | None = None
    agreement: dict[str, float] | None = None
    confidence: dict[str, float] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def data(self) -> Any:
        """The value as plain JSON data (a pydantic instance is dumped in JSON mode)."""
        dump = getattr(self.value, "model_dump", None)
        return dump(mode="json") if callable(dump) else self.value

    @property
    def duration_s(self) -> float:
        return sum(a.duration_s for a in self.attempts)

    @property
    def tokens(self) -> int | None:
        counts = [a.tokens for a in self.attempts if a.tokens is not None]
        return sum(counts) if counts else None

    def unwrap(self) -> T:
        """The value, or raise the ``GuardError`` that ended the loop."""
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]
