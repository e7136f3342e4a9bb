"""What the guard reads and sends: validation context, re-ask history, image parts and reasoning.

Scripted callables stand in for the model, and the loopback fault proxy for a server; the local
runtimes' refusal of images runs the embedded model (``slow``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fault_proxy import FaultProxy, completion
from pydantic import BaseModel, ValidationInfo, field_validator

from guardrail import BackendError, Guard, GuardError
from guardrail.backends.base import Prompt

NAME = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAE=",
                                            "detail": "low"}}
RECEIPT: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": "Who signed this receipt?"},
                                                               IMAGE]}]


def scripted(*outputs: str) -> Callable[[Prompt], str]:
    queue = list(outputs)
    return lambda prompt: queue.pop(0)


def text(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(str(m["content"]) for m in prompt)


# -- validation context ----------------------------------------------------------------------------


class Booking(BaseModel):
    guest: str
    nights: int

    @field_validator("guest")
    @classmethod
    def guest_is_in_the_input(cls, value: str, info: ValidationInfo) -> str:
        source = (info.context or {}).get("input", "")
        if value not in source:
            raise ValueError(f"{value!r} does not occur in the input: copy the name exactly")
        return value


def test_a_validator_reading_the_input_re_asks_when_a_value_is_not_in_it() -> None:
    g: Guard[Booking] = Guard(Booking, llm=scripted('{"guest": "Ada Lovlace", "nights": 2}',
                                                    '{"guest": "Ada Lovelace", "nights": 2}'))
    result = g.run("Book 2 nights for Ada Lovelace.")
    assert isinstance(result.value, Booking) and result.data == {"guest": "Ada Lovelace", "nights": 2}
    first = result.attempts[0]
    assert first.ended == "invalid" and [(i.path, i.keyword) for i in first.issues] == [("/guest", "value_error")]
    assert "'Ada Lovlace' does not occur in the input: copy the name exactly" in first.issues[0].message
    assert "'Ada Lovlace' does not occur in the input" in text(result.attempts[1].prompt), "the re-ask says why"


def test_the_input_is_the_last_user_message_and_context_adds_to_it_or_replaces_it() -> None:
    chat = [{"role": "system", "content": "Extract bookings."},
            {"role": "user", "content": [{"type": "text", "text": "2 nights for Ada Lovelace"}]}]
    answer = '{"guest": "Ada Lovelace", "nights": 2}'
    assert Guard(Booking, llm=scripted(answer)).run(chat).ok
    with pytest.raises(GuardError, match="does not occur in the input"):
        Guard(Booking, llm=scripted(answer), retries=0).run(chat, context={"input": "Grace Hopper"})
    results = Guard(Booking, llm=scripted(answer, answer), retries=0).run_many(
        ["for Ada Lovelace", "for Ada Lovelace"], context=[None, {"input": "someone else"}])
    assert [r.ok for r in results] == [True, False]


def test_the_decorator_takes_context_in_run_and_stream() -> None:
    from guardrail import guard

    @guard(Booking, retries=0)
    def book(prompt: Prompt) -> str:
        return '{"guest": "Ada Lovelace", "nights": 2}'

    assert book("for Ada Lovelace").guest == "Ada Lovelace"
    assert book.run("for Ada Lovelace").ok  # type: ignore[attr-defined]
    with pytest.raises(GuardError, match="does not occur in the input"):
        book.run("for Ada Lovelace", context={"input": "nobody"})  # type: ignore[attr-defined]
    with pytest.raises(GuardError):
        list(book.stream("x", context={"input": "nobody"}))  # type: ignore[attr-defined]


# -- re-ask history --------------------------------------------------------------------------------

FAILURES = ['{"nom": "A"}', '{"nom": "Ada Lovelace"}', '{"nom": "Ada Lovelace, Countess of Lovelace"}']


@pytest.mark.parametrize("prompt", ["Extract the name: Ada Lovelace wrote the first program.",
                                    [{"role": "system", "content": "Extract the name."},
                                     {"role": "user", "content": "Ada Lovelace wrote the first program."}]],
                         ids=["str", "chat"])
def test_prompts_stay_bounded_over_four_attempts(prompt: Prompt) -> None:
    result = Guard(NAME, llm=scripted(*FAILURES, '{"name": "Ada Lovelace"}'), retries=3).run(prompt)
    prompts = [text(a.prompt) for a in result.attempts]
    assert result.ok and len(prompts) == 4
    assert len(prompts[3]) <= len(prompts[1]) + len(FAILURES[2]) - len(FAILURES[0])
    assert FAILURES[0] not in prompts[3] and FAILURES[2] in prompts[3]
    everything = Guard(NAME, llm=scripted(*FAILURES, '{"name": "Ada"}'), retries=3, reask_history="all").run(prompt)
    assert all(failure in text(everything.attempts[3].prompt) for failure in FAILURES)


def test_an_unknown_reask_history_is_refused_when_the_guard_is_built() -> None:
    with pytest.raises(ValueError, match="reask_history must be one of 'last', 'all', got 'some'"):
        Guard(NAME, llm=scripted(), reask_history="some")


# -- images ------------------------------------------------------------------------------------------


def test_an_image_part_reaches_the_server_unchanged() -> None:
    with FaultProxy(faults=[completion('{"name": "Ada Lovelace"}')]) as proxy:
        g = Guard(NAME, base_url=proxy.url + "/v1", model="vision", structured="json_object")
        assert g.run(RECEIPT).value == {"name": "Ada Lovelace"}
        [sent] = [e.body for e in proxy.exchanges("/chat/completions")]
    assert sent["messages"][-1] == RECEIPT[0], "the user's message, image part and all, as given"
    assert sent["messages"][0]["role"] == "system"


def test_an_image_part_reaches_a_function_unchanged() -> None:
    received: list[Prompt] = []

    def model(prompt: Prompt) -> str:
        received.append(prompt)
        return '{"name": "Ada"}'

    Guard(NAME, llm=model).run(RECEIPT)
    assert received == [RECEIPT]


def test_a_malformed_image_part_is_refused_before_any_call() -> None:
    bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]
    with pytest.raises(ValueError, match="prompt message 0, content part 0: an image URL must be a data: URL"):
        Guard(NAME, llm=scripted()).run(bad)


@pytest.mark.slow
def test_the_local_runtimes_refuse_an_image_with_one_clear_error() -> None:
    pytest.importorskip("transformers")
    from guardrail.backends.base import Sampling
    from guardrail.backends.local import LocalBackend
    from guardrail.schema import Schema

    g = Guard(NAME, max_new_tokens=8, threads=1)
    with pytest.raises(BackendError) as refused:
        g.run([{"role": "system", "content": "Extract."}, *RECEIPT])
    assert str(refused.value) == ("the LocalBackend runtime reads text only: prompt message 1, content part 1 is an "
                                  "'image_url' part (send images to a vision model on an OpenAI-compatible server "
                                  "(base_url=...), or leave the image parts out)")
    with pytest.raises(BackendError, match="the LocalBackend runtime reads text only: prompt message 0, content part 1"):
        LocalBackend(threads=1).generate([RECEIPT], Schema.load(NAME), Sampling(max_new_tokens=4))
    pytest.importorskip("llama_cpp")
    from guardrail.backends.llamacpp import LlamaCppBackend

    with pytest.raises(BackendError, match="the LlamaCppBackend runtime reads text only: prompt message 0, content "
                                           "part 1 is an 'image_url' part"):
        LlamaCppBackend(n_threads=1).generate([RECEIPT], Schema.load(NAME), Sampling(max_new_tokens=4))


# -- reasoning ---------------------------------------------------------------------------------------


def test_a_think_block_is_set_apart_and_the_answer_validates() -> None:
    result = Guard(NAME, llm=scripted('<think>The name is the first two words.</think>\n\n{"name": "Ada Lovelace"}')
                   ).run("Ada Lovelace wrote the first program.")
    attempt = result.attempts[0]
    assert result.value == {"name": "Ada Lovelace"} and result.raw == '{"name": "Ada Lovelace"}'
    assert attempt.reasoning == "The name is the first two words." and attempt.output == '{"name": "Ada Lovelace"}'
    assert attempt.to_dict()["reasoning"] == "The name is the first two words."


def test_a_re_ask_quotes_the_answer_never_the_thinking() -> None:
    result = Guard(NAME, llm=scripted("<think>secret plan</think>{\"nom\": 1}", '{"name": "Ada"}')).run("Ada")
    assert result.attempts[0].output == '{"nom": 1}' and result.attempts[0].reasoning == "secret plan"
    second = text(result.attempts[1].prompt)
    assert '{"nom": 1}' in second and "secret plan" not in second and "think" not in second


def test_reasoning_a_server_sends_apart_is_kept_and_the_answer_validated() -> None:
    from guardrail.backends.base import Generation

    def model(prompt: Prompt) -> Generation:
        return Generation('<think></think>{"name": "Ada"}', completion_tokens=30, reasoning="Plan: copy the name.")

    attempt = Guard(NAME, llm=model).run("Ada").attempts[0]
    assert (attempt.output, attempt.reasoning, attempt.completion_tokens) == ('{"name": "Ada"}', "Plan: copy the name.",
                                                                              30)


def test_a_thinking_model_s_log_probabilities_give_the_answer_s_confidence() -> None:
    from guardrail.backends.base import Generation

    thinking = [("<think>", -0.1), ("hm", -2.0), ("</think>\n{", -0.3)]  # the last token straddles the answer
    answer = [('"name": "', -0.01), ("Ada", -0.2), ('"}', 0.0)]

    def model(tokens: list[tuple[str, float]]) -> Callable[[Prompt], Generation]:
        return lambda prompt: Generation("".join(t for t, _ in tokens), logprobs=tokens)

    thought = Guard(NAME, llm=model([*thinking, *answer])).run("Ada")
    plain = Guard(NAME, llm=model([("{", -0.3), *answer])).run("Ada")
    assert thought.confidence is not None and thought.confidence == plain.confidence
    assert thought.confidence["/name"] == pytest.approx(2.718281828 ** -0.21)
