"""The on-disk grammar cache: used by a second process, ignored when stale or not intact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from guardrail.backends.grammar_cache import GrammarCache

ROOT = Path(__file__).resolve().parents[1]
FACTS = {"engine": "xgrammar", "version": "0.2.8", "tokenizer": "t0"}


def test_round_trip_and_every_stale_or_broken_entry_is_ignored(tmp_path: Path) -> None:
    cache = GrammarCache(tmp_path)
    key = cache.key("xgrammar", "0.2.8", "t0", '{"type": "object"}')
    assert cache.load(key, **FACTS) is None  # absent
    cache.store(key, b"compiled", **FACTS)
    assert cache.load(key, **FACTS) == b"compiled"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # Another engine version or tokenizer: stale, ignored (and a different key in practice).
    assert cache.load(key, **{**FACTS, "version": "0.2.9"}) is None
    assert cache.load(key, **{**FACTS, "tokenizer": "t1"}) is None
    # The payload edited after it was written (same size): the digest no longer matches.
    (tmp_path / f"{key}.bin").write_bytes(b"COMPILED")
    assert cache.load(key, **FACTS) is None
    # A manifest that is not ours, or not JSON.
    (tmp_path / f"{key}.json").write_text("[1, 2]")
    assert cache.load(key, **FACTS) is None
    (tmp_path / f"{key}.json").write_text("{not json")
    assert cache.load(key, **FACTS) is None
    # Rewritten by the next compile.
    cache.store(key, b"compiled again", **FACTS)
    assert cache.load(key, **FACTS) == b"compiled again"


def test_keys_separate_everything_a_grammar_depends_on() -> None:
    base = ("xgrammar", "0.2.8", "t0", '{"type": "object"}')
    keys = {GrammarCache.key(*base)}
    for position, other in enumerate(("outlines_core", "0.2.9", "t1", '{"type": "array"}')):
        changed = list(base)
        changed[position] = other
        keys.add(GrammarCache.key(*changed))
    assert len(keys) == 5


# ---------------------------------------------------------------------------------------------
# With the real embedded model and engines

try:
    from guardrail.backends.embedded import find_embedded_gguf

    find_embedded_gguf()
    import outlines  # noqa: F401
    import torch  # noqa: F401
    import xgrammar  # noqa: F401

    HAVE_MODEL = True
except Exception:  # any missing piece means: skip
    HAVE_MODEL = False

needs_model = pytest.mark.skipif(not HAVE_MODEL, reason="needs the embedded model, torch, outlines and xgrammar")

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "integer"}},
          "required": ["city"]}
# A second process: prepare the schema with one engine, say how the grammar was obtained, generate.
CHILD = """
import json, sys
from guardrail.backends.local import LocalBackend
from guardrail.backends import Sampling
from guardrail.schema import Schema
engine, cache, schema = sys.argv[1], sys.argv[2], Schema.load(json.loads(sys.argv[3]), name="city")
backend = LocalBackend(engine=engine, grammar_cache=cache, threads=1)
chosen = backend.engine_for(schema)
[out] = backend.generate([[{"role": "user", "content": "I live in Oslo."}]], schema, Sampling(max_new_tokens=24))
print(json.dumps({"engine": chosen, "compiles": backend.compile_count, "disk": backend.disk_load_count,
                  "text": out.text}))
"""


def child(engine: str, cache: Path) -> dict[str, object]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, engine, str(cache), json.dumps(SCHEMA)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.slow
@needs_model
@pytest.mark.parametrize("engine", ["xgrammar", "outlines_core"])
def test_a_second_process_reads_the_grammar_instead_of_compiling(engine: str, tmp_path: Path) -> None:
    from guardrail.schema import Schema
    from guardrail.validation import validate

    first = child(engine, tmp_path)
    assert (first["engine"], first["compiles"], first["disk"]) == (engine, 1, 0)
    assert len(GrammarCache(tmp_path).entries()) == 1
    second = child(engine, tmp_path)
    assert (second["engine"], second["compiles"], second["disk"]) == (engine, 0, 1)
    assert second["text"] == first["text"]  # the same grammar, greedy: the same output
    assert validate(Schema.load(SCHEMA), str(second["text"])).ok


@pytest.mark.slow
@needs_model
def test_a_stale_or_altered_grammar_is_compiled_again(tmp_path: Path) -> None:
    engine = "xgrammar"
    assert child(engine, tmp_path)["compiles"] == 1

    # Stale: written by another version of the engine. Ignored, compiled, rewritten.
    [manifest] = tmp_path.glob("*.json")
    facts = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**facts, "version": "0.0.1"}))
    third = child(engine, tmp_path)
    assert (third["compiles"], third["disk"]) == (1, 0)
    assert json.loads(manifest.read_text())["version"] == facts["version"]

    # Not intact: the payload changed after it was written. Ignored, compiled, rewritten.
    [payload] = tmp_path.glob("*.bin")
    payload.write_bytes(payload.read_bytes()[:-1] + b"#")
    fourth = child(engine, tmp_path)
    assert (fourth["compiles"], fourth["disk"]) == (1, 0)
    assert (child(engine, tmp_path)["disk"]) == 1


@pytest.mark.slow
@needs_model
def test_llguidance_grammars_stay_in_memory(tmp_path: Path) -> None:
    first = child("llguidance", tmp_path)
    assert (first["engine"], first["compiles"], first["disk"]) == ("llguidance", 1, 0)
    assert GrammarCache(tmp_path).entries() == []  # milliseconds to compile, and no serialised form
