"""An on-disk cache of compiled grammars, so a second process does not compile a schema again.

Only engines whose compile is slow enough to matter and whose compiled form serialises to plain
data use it: xgrammar (``CompiledGrammar.serialize_json``: up to 1.8 s per schema here) and
outlines_core (``Index`` as bincode bytes: up to 28 s). llguidance compiles in milliseconds and
builds its lexer lazily while decoding; its ``LLMatcher`` has no serialised form, so it is not
cached (``BENCHMARKS.md`` has the figures).

Layout, under ``cache_root()/grammars/`` (``$GUARDRAIL_CACHE_DIR`` moves it)::

    <key>.bin    the serialised grammar
    <key>.json   its manifest, written last: engine and version, tokenizer fingerprint,
                 digest of the decoding schema, size and blake2b digest of the .bin

``key`` is a digest of everything the compiled grammar depends on (engine, engine version,
tokenizer fingerprint, decoding schema), so a new engine version or another tokenizer simply
misses. An entry is used only if its manifest matches all of that and the payload's digest
matches the manifest; anything else in the directory, or an entry that fails those checks, is
ignored (and overwritten by the next compile). Payloads are parsed by the engines' own
deserialisers (JSON, bincode), never unpickled.

>>> cache = GrammarCache(Path("/tmp/guardrail-doctest-grammars"))
>>> key = cache.key("xgrammar", "0.2.8", "tok", '{"type": "object"}')
>>> cache.store(key, b"payload", engine="xgrammar", version="0.2.8", tokenizer="tok")
>>> cache.load(key, engine="xgrammar", version="0.2.8", tokenizer="tok")
b'payload'
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from guardrail.atomic import write_atomic

__all__ = ["FORMAT", "GrammarCache"]

#: Bump when the manifest layout changes.
FORMAT = 1


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


class GrammarCache:
    """Compiled grammars on disk, keyed by engine, engine version, tokenizer and schema."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(engine: str, version: str, tokenizer: str, schema_json: str) -> str:
        """The entry name for a grammar compiled by ``engine`` ``version`` for ``tokenizer``."""
        return _digest(json.dumps([FORMAT, engine, version, tokenizer, schema_json]).encode())

    def load(self, key: str, *, engine: str, version: str, tokenizer: str) -> bytes | None:
        """The payload stored under ``key``, or None if absent, stale or not intact."""
        try:
            manifest = json.loads((self.root / f"{key}.json").read_text(encoding="utf-8"))
            payload = (self.root / f"{key}.bin").read_bytes()
        except (OSError, ValueError):
            return None
        expected = {"format": FORMAT, "engine": engine, "version": version, "tokenizer": tokenizer}
        if not isinstance(manifest, dict) or any(manifest.get(k) != v for k, v in expected.items()):
            return None
        if manifest.get("size") != len(payload) or manifest.get("blake2b") != _digest(payload):
            return None
        return payload

    def store(self, key: str, payload: bytes, *, engine: str, version: str, tokenizer: str) -> None:
        """Write an entry atomically: payload first, manifest last (a reader never sees half)."""
        self.root.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "engine": engine, "version": version, "tokenizer": tokenizer,
                    "size": len(payload), "blake2b": _digest(payload)}
        write_atomic(self.root / f"{key}.bin", payload)
        write_atomic(self.root / f"{key}.json", json.dumps(manifest, indent=2))

    def entries(self) -> list[str]:
        """Keys with a manifest (intact or not)."""
        return sorted(p.stem for p in self.root.glob("*.json")) if self.root.is_dir() else []
