"""The resumable results file of a report run: ``OUT/run.json`` and ``OUT/results.jsonl``.

A run is identified by the hash of its configuration (suite content, model, families,
severities, seeds, retries, modes, limit). ``run.json`` holds that configuration and its hash;
``results.jsonl`` holds one outcome row per line, each tagged with the run hash and a ``key``
naming the work item. Opening a store:

* with the same configuration: the finished keys are read back, so the job skips them;
* with a different configuration: the old files are moved aside to ``results.<oldhash>.jsonl``
  and ``run.<oldhash>.json`` and a new run starts. Nothing is deleted and nothing is mixed,
  and the caller is told what moved (``Store.moved_aside``);
* after a crash: a torn last line (the process died mid-write, so the line has no newline or
  is not JSON) is cut off the file, counted in ``Store.torn`` and reported; a bad line in the
  middle (someone edited the file) is skipped and reported the same way.

Rows are flushed one by one and fsynced at the end of each batch, so a kill loses at most the
row being written.

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp())
>>> store = Store.open(out, {"model": "m", "seeds": [0]})
>>> store.append([{"key": "a", "valid": True}]); store.sync()
>>> sorted(Store.open(out, {"model": "m", "seeds": [0]}).done)
['a']
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from guardrail.atomic import write_atomic

RESULTS = "results.jsonl"
RUN = "run.json"


def config_hash(config: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-ready configuration (key order does not matter).

    >>> config_hash({"a": 1, "b": [2]}) == config_hash({"b": [2], "a": 1})
    True
    """
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass
class BadLine:
    """A line of ``results.jsonl`` that could not be read: where, why, and its first characters."""

    line: int
    reason: str
    excerpt: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason} ({self.excerpt!r})"


@dataclass
class Store:
    """An open results file; see the module docstring for the resume rules."""

    out_dir: Path
    config: dict[str, Any]
    hash: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    torn: list[BadLine] = field(default_factory=list)
    moved_aside: list[Path] = field(default_factory=list)
    _handle: IO[str] | None = None

    @property
    def results_path(self) -> Path:
        return self.out_dir / RESULTS

    @property
    def done(self) -> set[str]:
        """Keys of the items already finished in this run."""
        return {str(r["key"]) for r in self.rows if "key" in r}

    @classmethod
    def open(cls, out_dir: str | os.PathLike[str], config: Mapping[str, Any]) -> Store:
        """Open (or start) the run for ``config`` in ``out_dir``, reading back finished rows."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        ready: dict[str, Any] = json.loads(json.dumps(dict(config), default=str))  # JSON-ready, a private copy
        store = cls(out, ready, config_hash(ready))
        run_file = out / RUN
        previous = _read_run(run_file)
        results = out / RESULTS
        if previous is not None and previous.get("hash") != store.hash:
            old = str(previous.get("hash") or "unknown")
            store.moved_aside = _move_aside(out, old)
        elif previous is None and results.exists() and results.stat().st_size > 0:
            # Rows without a run.json cannot be trusted to match this configuration.
            store.moved_aside = _move_aside(out, "unknown")
        if not (out / RUN).exists():
            write_atomic(run_file, json.dumps({"hash": store.hash, "config": ready}, indent=2, sort_keys=True) + "\n")
        store.rows, store.torn = _read_rows(results, store.hash)
        return store

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append rows, one JSON line each, flushed at once (``sync`` makes them durable)."""
        if self._handle is None:
            self._handle = self.results_path.open("a", encoding="utf-8")
        for row in rows:
            record = {**row, "run": self.hash}
            # One write per line keeps a torn write to the last line only.
            self._handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True, default=str) + "\n")
            self._handle.flush()
            self.rows.append(record)

    def sync(self) -> None:
        """fsync the results file: called at batch ends, so a power cut loses at most one batch."""
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Sync and close the file (safe to call twice)."""
        if self._handle is not None:
            self.sync()
            self._handle.close()
            self._handle = None


def _read_run(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"hash": "unreadable"}
    return data if isinstance(data, dict) else {"hash": "unreadable"}


def _move_aside(out: Path, old_hash: str) -> list[Path]:
    moved = []
    for name, target in ((RESULTS, f"results.{old_hash}.jsonl"), (RUN, f"run.{old_hash}.json")):
        source = out / name
        if not source.exists():
            continue
        dest = out / target
        n = 1
        while dest.exists():  # never overwrite an earlier set-aside run
            dest = out / f"{Path(target).stem}.{n}{Path(target).suffix}"
            n += 1
        source.rename(dest)
        moved.append(dest)
    return moved


def _read_rows(path: Path, run_hash: str) -> tuple[list[dict[str, Any]], list[BadLine]]:
    """Read finished rows; cut a torn tail off the file so later appends start on a fresh line."""
    if not path.exists():
        return [], []
    data = path.read_bytes()
    rows: list[dict[str, Any]] = []
    bad: list[BadLine] = []
    offset = 0
    keep_until = 0  # bytes up to the end of the last complete, readable line
    for number, raw in enumerate(data.splitlines(keepends=True), 1):
        offset += len(raw)
        complete = raw.endswith(b"\n")
        text = raw.decode("utf-8", errors="replace").strip()
        try:
            row = json.loads(text) if text else None
        except ValueError:
            row = None
            reason = "not valid JSON"
        else:
            reason = "not a JSON object" if text and not isinstance(row, dict) else ""
        if not complete:
            bad.append(BadLine(number, "torn last line (no newline: the run was killed mid-write)", text[:60]))
            break
        keep_until = offset
        if not text:
            continue
        if reason:
            bad.append(BadLine(number, reason, text[:60]))
            continue
        assert isinstance(row, dict)
        if row.get("run") != run_hash:
            bad.append(BadLine(number, f"belongs to run {row.get('run')!r}, not {run_hash!r}", text[:60]))
            continue
        rows.append(row)
    if keep_until < len(data):
        with path.open("r+b") as handle:
            handle.truncate(keep_until)
    return rows, bad
