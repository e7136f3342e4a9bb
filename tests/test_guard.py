"""The guard loop with plain Python functions as the LLM: the decorator's real contract."""

from __future__ import annotations

import asyncio
import inspect
import json
import time

import pytest
import tenacity
from pydantic import BaseModel, field_validator, model_validator

from guardrail import Generation, Guard, GuardError, Result, SchemaError, guard
from guardrail.feedback import DEFAULT_REASK_TEMPLATE


class Contact(BaseModel):
    name: str
    email: str
    phone: str | None = None

    @field_validator("email")
    @classmethod
    def has_at(cls, value: str) -> str:
        if "@" not in value:
            raise ValueError("email must contain @")
        return value


class Meeting(BaseModel):
    start: int
    end: int

    @model_validator(mode="after")
    def ordered(self) -> Meeting:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


INVOICE_ITEM = {
    "type": "object",
    "required": ["items"],
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["price"],
                "properties": {"price": {"type": "number", "minimum": 0}},
            },
        }
    },
}


class Scripted:
    """An 'LLM' that answers from a script and records every prompt it was sent."""

    def __init__(self, *answers: str | BaseException) -> None:
        self.answers = list(answers)
        self.prompts: list[object] = []
        self.times: list[float] = []

    def __call__(self, prompt: object) -> str:
        self.prompts.append(prompt)
        self.times.append(time.monotonic())
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def test_prose_wrapped_invalid_then_valid_succeeds_on_attempt_two() -> None:
    llm = Scripted(
        'Here is the invoice: {"items": [{"price": -3}]} hope it helps',
        '{"items": [{"price": 3}]}',
    )
    result = Guard(INVOICE_ITEM, llm=llm, retries=2).run("Extract the invoice: one item at 3 USD")

    assert result.value == {"items": [{"price": 3}]}
    assert [a.ended for a in result.attempts] == ["invalid", "valid"]
    first = result.attempts[0]
    assert first.extracted is True
    assert first.issues[0].path == "/items/0/price"
    assert first.issues[0].value == -3
    second_prompt = llm.prompts[1]
    assert isinstance(second_prompt, str)
    assert "/items/0/price" in second_prompt
    assert '{"items": [{"price": -3}]}' in second_prompt
    assert second_prompt.startswith("Extract the invoice")


def test_exhausted_retries_raise_guard_error_with_every_attempt() -> None:
    llm = Scripted("no json here", '{"items": "x"}', '{"items": [{}]}')
    with pytest.raises(GuardError) as caught:
        Guard(INVOICE_ITEM, llm=llm, retries=2).run("Extract")
    error = caught.value
    assert len(error.attempts) == 3
    assert [a.output for a in error.attempts] == ["no json here", '{"items": "x"}', '{"items": [{}]}']
    assert all(a.ended == "invalid" for a in error.attempts)
    assert error.attempts[2].issues[0].path == "/items/0/price"
    assert error.attempts[2].issues[0].message == "required property is missing"
    assert error.attempts[2].issues[0].keyword == "required"
    assert error.last_output == '{"items": [{}]}'
    assert "3 attempts" in str(error)


def test_retries_zero_is_one_attempt() -> None:
    llm = Scripted("{}")
    with pytest.raises(GuardError) as caught:
        Guard(INVOICE_ITEM, llm=llm, retries=0).run("x")
    assert len(caught.value.attempts) == 1


def test_decorated_async_function_works_and_keeps_metadata() -> None:
    calls: list[tuple[object, str]] = []

    @guard(Contact, retries=2)
    async def ask(prompt: str, tone: str = "plain") -> str:
        """Ask the model."""
        calls.append((prompt, tone))
        await asyncio.sleep(0)
        if len(calls) == 1:
            return '{"name": "Dana", "email": "dana"}'
        return '{"name": "Dana", "email": "dana@whitfield.io"}'

    contact = asyncio.run(ask("Extract: Dana, dana@whitfield.io", tone="formal"))
    assert contact == Contact(name="Dana", email="dana@whitfield.io")
    assert ask.__name__ == "ask" and ask.__doc__ == "Ask the model."
    assert inspect.iscoroutinefunction(ask)
    assert list(inspect.signature(ask).parameters) == ["prompt", "tone"]
    assert [tone for _, tone in calls] == ["formal", "formal"]
    assert "/email" in str(calls[1][0])


def test_decorated_sync_function_returns_the_model_instance() -> None:
    @guard(Contact)
    def ask(prompt: str) -> str:
        return '{"name": "Ann", "email": "ann@example.org"}'

    assert ask("hi") == Contact(name="Ann", email="ann@example.org")
    assert isinstance(ask.guard, Guard)  # type: ignore[attr-defined]


def test_connection_error_twice_is_retried_with_backoff() -> None:
    llm = Scripted(ConnectionError("reset"), ConnectionError("reset"), '{"items": []}')
    policy = tenacity.Retrying(stop=tenacity.stop_after_attempt(4), wait=tenacity.wait_fixed(0.2))
    result = Guard(INVOICE_ITEM, llm=llm, retries=policy).run("x")
    assert result.value == {"items": []}
    assert [a.ended for a in result.attempts] == ["error", "error", "valid"]
    assert result.attempts[0].error == "ConnectionError: reset"
    gaps = [b - a for a, b in zip(llm.times, llm.times[1:], strict=False)]
    assert all(gap >= 0.19 for gap in gaps), gaps
    # A failed call is sent again unchanged: there is no output to give feedback on.
    assert llm.prompts[0] == llm.prompts[1] == llm.prompts[2]


def test_default_backoff_waits_between_transport_failures_but_not_before_reasks() -> None:
    llm = Scripted(ConnectionError("down"), "not json", '{"items": []}')
    Guard(INVOICE_ITEM, llm=llm, retries=3).run("x")
    assert llm.times[1] - llm.times[0] >= 0.3  # exponential backoff starts at 0.5 s minus jitter
    assert llm.times[2] - llm.times[1] < 0.3  # a re-ask goes at once


def test_exhausted_transport_failures_chain_the_original_exception() -> None:
    boom = TimeoutError("slow")
    llm = Scripted(boom, boom)
    policy = tenacity.Retrying(stop=tenacity.stop_after_attempt(2), wait=tenacity.wait_none())
    with pytest.raises(GuardError) as caught:
        Guard(INVOICE_ITEM, llm=llm, retries=policy).run("x")
    assert caught.value.__cause__ is boom
    assert [a.ended for a in caught.value.attempts] == ["timeout", "timeout"]


def test_a_bug_in_the_callable_is_not_retried() -> None:
    llm = Scripted(KeyError("oops"), "{}")
    with pytest.raises(GuardError) as caught:
        Guard(INVOICE_ITEM, llm=llm, retries=3).run("x")
    assert len(caught.value.attempts) == 1
    assert isinstance(caught.value.__cause__, KeyError)


def test_invalid_schema_fails_at_construction_naming_the_keyword() -> None:
    with pytest.raises(SchemaError) as caught:
        Guard({"type": "object", "properties": {"age": {"type": "integr"}}}, llm=lambda p: "{}")
    assert caught.value.location == "/properties/age/type"
    assert "/properties/age/type" in str(caught.value)


def test_field_validator_failure_is_fed_back_and_fixed() -> None:
    llm = Scripted('{"name": "Dana", "email": "dana at whitfield.io"}', '{"name": "Dana", "email": "dana@whitfield.io"}')
    result = Guard(Contact, llm=llm).run("Extract: Dana, dana@whitfield.io")
    assert result.value.email == "dana@whitfield.io"
    issue = result.attempts[0].issues[0]
    assert issue.path == "/email"
    assert "email must contain @" in issue.message
    assert "email must contain @" in str(llm.prompts[1])


def test_model_validator_failure_is_located_at_the_root() -> None:
    llm = Scripted('{"start": 10, "end": 9}', '{"start": 10, "end": 11}')
    result = Guard(Meeting, llm=llm).run("when?")
    assert result.attempts[0].issues[0].path == ""
    assert "end must be after start" in result.attempts[0].issues[0].message
    assert result.value == Meeting(start=10, end=11)


def test_chat_messages_reask_appends_assistant_and_user_turns() -> None:
    llm = Scripted('{"items": [{"price": "3"}]}', '{"items": [{"price": 3}]}')
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Extract"}]
    Guard(INVOICE_ITEM, llm=llm).run(messages)
    reask = llm.prompts[1]
    assert isinstance(reask, list)
    assert reask[:2] == messages
    assert reask[2] == {"role": "assistant", "content": '{"items": [{"price": "3"}]}'}
    assert reask[3]["role"] == "user" and "/items/0/price" in reask[3]["content"]
    assert messages == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Extract"}]


def test_custom_reask_template() -> None:
    llm = Scripted("{}", '{"items": []}')
    Guard(INVOICE_ITEM, llm=llm, reask_template="FIX {issues} IN {output}").run("x")
    assert "FIX - at /items: required property is missing IN {}" in str(llm.prompts[1])
    with pytest.raises(ValueError, match="reask_template"):
        Guard(INVOICE_ITEM, llm=llm, reask_template="{oops}")
    assert "{issues}" in DEFAULT_REASK_TEMPLATE


def test_truncated_output_is_recorded_as_truncated() -> None:
    llm = Scripted('{"items": [{"price": 3', '{"items": []}')
    result = Guard(INVOICE_ITEM, llm=llm).run("x")
    assert result.attempts[0].ended == "truncated"
    assert result.attempts[0].issues[0].keyword == "truncated"


def test_token_accounting_and_token_budget() -> None:
    def llm(prompt: object) -> Generation:
        return Generation(text="not json", prompt_tokens=40, completion_tokens=10)

    with pytest.raises(GuardError) as caught:
        Guard(INVOICE_ITEM, llm=llm, retries=5, token_budget=120).run("x")
    attempts = caught.value.attempts
    assert len(attempts) == 3  # 50 + 50 + 50 >= 120 stops after the third
    assert attempts[0].tokens == 50
    assert "token budget" in str(caught.value)


def test_time_budget_stops_before_a_long_backoff() -> None:
    llm = Scripted(ConnectionError("x"), ConnectionError("x"), "{}")
    policy = tenacity.Retrying(stop=tenacity.stop_after_attempt(5), wait=tenacity.wait_fixed(5))
    start = time.monotonic()
    with pytest.raises(GuardError, match="time budget"):
        Guard(INVOICE_ITEM, llm=llm, retries=policy, time_budget_s=1).run("x")
    assert time.monotonic() - start < 2


def test_hanging_call_is_cut_off_by_timeout_and_recorded() -> None:
    def hangs(prompt: object) -> str:
        time.sleep(3)
        return "{}"

    start = time.monotonic()
    policy = tenacity.Retrying(stop=tenacity.stop_after_attempt(2), wait=tenacity.wait_none())
    with pytest.raises(GuardError) as caught:
        Guard(INVOICE_ITEM, llm=hangs, retries=policy, timeout_s=0.2).run("x")
    assert time.monotonic() - start < 1.5
    assert [a.ended for a in caught.value.attempts] == ["timeout", "timeout"]


def test_run_many_bounds_concurrency_and_keeps_failures() -> None:
    running = 0
    peak = 0

    async def llm(prompt: str) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return "bad" if prompt == "p3" else json.dumps({"items": [{"price": int(prompt[1:])}]})

    results = Guard(INVOICE_ITEM, llm=llm, retries=1).run_many([f"p{i}" for i in range(8)], concurrency=3)
    assert peak == 3
    assert [r.ok for r in results] == [True, True, True, False, True, True, True, True]
    assert results[5].value == {"items": [{"price": 5}]}
    assert isinstance(results[3], Result) and isinstance(results[3].error, GuardError)
    assert len(results[3].attempts) == 2


def test_arun_with_sync_callable() -> None:
    result = asyncio.run(Guard(INVOICE_ITEM, llm=Scripted('{"items": []}')).arun("x"))
    assert result.value == {"items": []}


def test_openai_style_response_objects_are_read() -> None:
    class Usage:
        prompt_tokens = 12
        completion_tokens = 5

    class Message:
        content = '{"items": []}'

    class Choice:
        message = Message()
        finish_reason = "stop"

    class Completion:
        choices = [Choice()]
        usage = Usage()

    result = Guard(INVOICE_ITEM, llm=lambda p: Completion()).run("x")
    assert result.attempts[0].prompt_tokens == 12 and result.attempts[0].completion_tokens == 5


def test_bad_prompt_and_bad_options_are_clear() -> None:
    g = Guard(INVOICE_ITEM, llm=lambda p: "{}")
    with pytest.raises(TypeError, match="prompt must be a str"):
        g.run(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown sampling options"):
        g.run("x", temprature=0.3)
    with pytest.raises(ValueError, match="retries"):
        Guard(INVOICE_ITEM, llm=lambda p: "{}", retries=-1)
