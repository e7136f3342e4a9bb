"""Prompts with image parts (``guardrail.messages``)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from guardrail import BackendError
from guardrail.messages import check_prompt, has_images, map_text, text_only, user_input

PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5E"
       "rkJggg==")
RECEIPT: list[dict[str, Any]] = [
    {"role": "system", "content": "Extract the receipt as JSON."},
    {"role": "user", "content": "Earlier receipt"},
    {"role": "assistant", "content": '{"total": 3}'},
    {"role": "user", "content": [
        {"type": "text", "text": "Total and shop, please."},
        {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
        {"type": "text", "text": "The shop is on the header."},
        {"type": "image_url", "image_url": {"url": "https://example.org/receipt.jpg"}},
    ]},
]


def test_valid_prompts_pass() -> None:
    for prompt in ["text", "", [{"role": "user", "content": "hi"}], RECEIPT,
                   [{"role": "user", "content": [{"type": "text", "text": "only text"}]}]]:
        check_prompt(prompt)


@pytest.mark.parametrize(("prompt", "error", "message"), [
    (None, TypeError, "a prompt must be a str or a non-empty list of chat messages .* got None"),
    ([], TypeError, "got an empty list"),
    ({"role": "user"}, TypeError, "got dict"),
    (["hi"], TypeError, "prompt message 0: a chat message must be a dict"),
    ([{"content": "hi"}], TypeError, "prompt message 0: 'role' must be a str"),
    ([{"role": "user", "content": None}], TypeError, r"prompt message 0 \(user\): 'content' must be a str or a list"),
    ([{"role": "user", "content": []}], ValueError, "'content' is an empty list of parts"),
    ([{"role": "user", "content": ["hi"]}], TypeError, "prompt message 0, content part 0: a part must be a dict"),
    ([{"role": "user", "content": [{"type": "text"}]}], TypeError, "a text part needs 'text': str, got None"),
    ([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "input_audio"}]}], ValueError,
     "prompt message 0, content part 1: unknown part type 'input_audio'; use 'text' or 'image_url'"),
    ([{"role": "system", "content": "x"}, {"role": "user", "content": [{"type": "image_url", "image_url": PNG}]}],
     TypeError, r"prompt message 1, content part 0: an image_url part needs 'image_url': \{'url': str\}, got str"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:text/plain,hi"}}]}], ValueError,
     "a data URL must look like 'data:image/png;base64,<base64 data>'"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/tmp/receipt.png"}}]}], ValueError,
     "must be a data: URL or an http"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": PNG, "detail": "max"}}]}], ValueError,
     "'detail' must be one of 'auto', 'low', 'high'"),
    ([{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": PNG}}]}], ValueError,
     "may only be in a 'user' message, this one's role is 'assistant'"),
])
def test_bad_prompts_name_the_message_and_part(prompt: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        check_prompt(prompt)


def test_user_input_is_the_last_user_messages_text() -> None:
    assert user_input("Reach Ada at ada@x.org") == "Reach Ada at ada@x.org"
    assert user_input(RECEIPT) == "Total and shop, please.\nThe shop is on the header."
    assert user_input(RECEIPT[:3]) == "Earlier receipt"
    assert user_input([{"role": "system", "content": "Only instructions"}]) == ""


def test_text_only_flattens_text_parts_and_refuses_images_clearly() -> None:
    text_parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert text_only(text_parts, "transformers") == [{"role": "user", "content": "a\nb"}]
    assert text_only("plain", "transformers") == "plain"
    assert text_only(RECEIPT[:3], "llamacpp") == RECEIPT[:3]
    with pytest.raises(BackendError) as caught:
        text_only(RECEIPT, "llamacpp")
    assert str(caught.value).startswith(
        "the llamacpp runtime reads text only: prompt message 3, content part 1 is an 'image_url' part")
    assert "base_url" in str(caught.value) and not caught.value.retryable


def test_map_text_changes_only_text_and_copies() -> None:
    before = copy.deepcopy(RECEIPT)
    shouted = map_text(RECEIPT, str.upper)
    assert isinstance(shouted, list)
    assert before == RECEIPT, "the prompt given is not modified"
    assert shouted[0] == RECEIPT[0] and shouted[2] == RECEIPT[2], "only user messages by default"
    assert shouted[1]["content"] == "EARLIER RECEIPT"
    assert [p.get("text") for p in shouted[3]["content"]] == ["TOTAL AND SHOP, PLEASE.", None,
                                                              "THE SHOP IS ON THE HEADER.", None]
    assert shouted[3]["content"][1] is RECEIPT[3]["content"][1], "image parts are kept as they are"
    assert map_text(RECEIPT, str.upper, roles=None)[0]["content"] == "EXTRACT THE RECEIPT AS JSON."
    assert map_text("abc", str.upper) == "ABC"
    assert has_images(RECEIPT) and not has_images(RECEIPT[:3]) and not has_images("text")


def test_servers_and_callables_take_image_parts_as_given_other_backends_get_text_only() -> None:
    from fault_proxy import FaultProxy, completion

    from guardrail.backends.base import Backend, Sampling
    from guardrail.backends.callable import CallableBackend
    from guardrail.backends.remote import RemoteBackend
    from guardrail.schema import Schema

    assert RemoteBackend.reads_images and CallableBackend.reads_images and not Backend.reads_images
    with FaultProxy(None, [completion('{"total": 3}')]) as proxy:
        backend = RemoteBackend(proxy.url + "/v1", "vision-model", structured="prompt")
        backend.generate([RECEIPT], Schema.load({"type": "object"}), Sampling())
        sent = proxy.exchanges()[0].body["messages"]
    assert sent == RECEIPT, "image parts reach the server untouched"
    seen: list[Any] = []
    CallableBackend(lambda prompt: seen.append(prompt) or "{}").generate([RECEIPT], Schema.load({"type": "object"}),
                                                                         Sampling())
    assert seen == [RECEIPT]
