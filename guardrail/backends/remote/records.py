"""``RequestRecord``: one entry of ``RemoteBackend.log``."""

from __future__ import annotations

from dataclasses import dataclass


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
