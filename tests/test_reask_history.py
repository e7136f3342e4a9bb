"""Re-asks that do not grow (``feedback.next_request``) and validation context (``validate(..., context=)``)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationInfo, field_validator

from guardrail import validate
from guardrail.backends.base import Prompt
from guardrail.feedback import next_request, reask
from guardrail.schema import Schema

NAME = Schema.load({"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}})
# Failed outputs of growing length with the same issue (the name is missing), as a looping model writes them.
FAILURES = ['{"nom": "A"}', '{"nom": "Ada Lovelace"}', '{"nom": "Ada Lovelace, Countess of Lovelace"}']
CHAT: list[dict[str, Any]] = [{"role": "system", "content": "Extract the name as JSON."},
                              {"role": "user", "content": "Ada Lovelace wrote the first program."}]


def text(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


def size(prompt: Prompt) -> int:
    return len(text(prompt))


def attempts(original: Prompt, history: str) -> list[Prompt]:
    """The prompts of attempts 1 to 4 when each of the first three outputs fails validation."""
    prompts = [original]
    for output in FAILURES:
        checked = validate(NAME, output)
        assert not checked.ok
        prompts.append(next_request(original, prompts[-1], output, checked.issues, history=history))
    return prompts


@pytest.mark.parametrize("original", ["Extract the name: Ada Lovelace wrote the first program.", CHAT],
                         ids=["str", "chat"])
def test_with_last_the_fourth_prompt_grows_only_by_the_longer_output(original: Prompt) -> None:
    first, second, _, fourth = attempts(original, "last")
    assert first == original
    assert size(fourth) <= size(second) + len(FAILURES[2]) - len(FAILURES[0])
    assert fourth == reask(original, FAILURES[2], validate(NAME, FAILURES[2]).issues)
    assert FAILURES[0] not in text(fourth) and FAILURES[1] not in text(fourth)
    if isinstance(original, list):  # the original turns, then one answer and one re-ask
        assert isinstance(fourth, list) and fourth[:2] == original and len(fourth) == 4
        assert fourth[2] == {"role": "assistant", "content": FAILURES[2]}
        assert "required property is missing" in fourth[3]["content"]
    everything = attempts(original, "all")
    assert size(everything[3]) > size(everything[2]) + len(FAILURES[2]), "'all' carries every failure"
    assert all(failure in text(everything[3]) for failure in FAILURES)


def test_a_failed_call_resends_the_previous_request() -> None:
    second = next_request("Q", "Q", "{", validate(NAME, "{").issues)
    assert next_request("Q", second, None, [], error="TransportError: HTTP 503") == second
    assert next_request("Q", "Q", None, [], error="TransportError: HTTP 503", history="all") == "Q"


def test_an_unknown_history_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="reask_history must be one of 'last', 'all', got 'none'"):
        next_request("Q", "Q", "{", [], history="none")


class Booking(BaseModel):
    guest: str
    nights: int

    @field_validator("guest")
    @classmethod
    def guest_is_in_the_input(cls, value: str, info: ValidationInfo) -> str:
        source = (info.context or {}).get("input")
        if source is not None and value not in source:
            raise ValueError(f"{value!r} does not occur in the input: copy the name exactly")
        return value


def test_context_reaches_pydantic_validators_and_json_schema_ignores_it() -> None:
    schema = Schema.load(Booking)
    text = '{"guest": "Ada Lovlace", "nights": 2}'
    assert validate(schema, text).ok, "without context the validator has nothing to compare with"
    checked = validate(schema, text, context={"input": "Book 2 nights for Ada Lovelace."})
    assert [(i.path, i.keyword) for i in checked.issues] == [("/guest", "value_error")]
    assert "'Ada Lovlace' does not occur in the input" in checked.issues[0].message
    good = validate(schema, '{"guest": "Ada Lovelace", "nights": 2}', context={"input": "Book 2 nights for Ada Lovelace."})
    assert good.ok and good.value == Booking(guest="Ada Lovelace", nights=2)
    raw = Schema.load(Booking.model_json_schema())
    assert validate(raw, text, context={"input": "nothing alike"}).ok
