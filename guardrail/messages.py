"""Prompts: plain text, or chat messages whose content may hold images.

A prompt is a ``str`` or a non-empty list of chat messages. A message is ``{"role": str,
"content": ...}`` where the content is a ``str`` or a non-empty list of OpenAI-style parts:

``{"type": "text", "text": "Extract the invoice."}``
    text;
``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..." | "https://..."}}``
    an image, inline as a base64 ``data:`` URL or by ``http(s)`` address (an optional
    ``"detail"``: ``"auto"``, ``"low"`` or ``"high"``). Images go in ``user`` messages.

>>> prompt = [{"role": "user", "content": [
...     {"type": "text", "text": "Extract the receipt."},
...     {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]
>>> check_prompt(prompt)
>>> user_input(prompt)
'Extract the receipt.'
>>> map_text(prompt, str.upper)[0]["content"][0]
{'type': 'text', 'text': 'EXTRACT THE RECEIPT.'}

``check_prompt`` says exactly which message and part is wrong; ``user_input`` is the caller's
input (what a validator's context and the robustness suite see); ``text_only`` flattens a
prompt for a runtime that reads text only, refusing images with one clear error; ``map_text``
changes text parts and leaves images alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any

from guardrail.backends.base import Prompt
from guardrail.errors import BackendError

__all__ = ["PART_TYPES", "check_prompt", "has_images", "map_text", "text_only", "user_input"]

#: The content part types a message may hold.
PART_TYPES = ("text", "image_url")
_DETAILS = ("auto", "low", "high")
_DATA_URL = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,[A-Za-z0-9+/=\s]+\Z")
_SHAPE = ("a prompt must be a str or a non-empty list of chat messages {'role': str, 'content': str | list of parts}")


def check_prompt(prompt: Any) -> None:
    """Raise ``TypeError`` (wrong shape) or ``ValueError`` (bad value) naming the message and part at fault.

    >>> check_prompt([{"role": "user", "content": [{"type": "audio"}]}])
    Traceback (most recent call last):
    ...
    ValueError: prompt message 0, content part 0: unknown part type 'audio'; use 'text' or 'image_url'
    """
    if isinstance(prompt, str):
        return
    if not isinstance(prompt, list) or not prompt:
        raise TypeError(f"{_SHAPE}, got {_describe(prompt)}")
    for index, message in enumerate(prompt):
        where = f"prompt message {index}"
        if not isinstance(message, dict):
            raise TypeError(f"{where}: a chat message must be a dict {{'role': str, 'content': ...}}, "
                            f"got {type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str):
            raise TypeError(f"{where}: 'role' must be a str such as 'user', got {_describe(role)}")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise TypeError(f"{where} ({role}): 'content' must be a str or a list of parts, got {_describe(content)}")
        if not content:
            raise ValueError(f"{where} ({role}): 'content' is an empty list of parts")
        for number, part in enumerate(content):
            _check_part(part, role, f"{where}, content part {number}")


def _check_part(part: Any, role: str, where: str) -> None:
    if not isinstance(part, dict):
        raise TypeError(f"{where}: a part must be a dict with a 'type', got {type(part).__name__}")
    kind = part.get("type")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise TypeError(f"{where}: a text part needs 'text': str, got {_describe(part.get('text'))}")
        return
    if kind != "image_url":
        listed = " or ".join(repr(t) for t in PART_TYPES)
        raise ValueError(f"{where}: unknown part type {kind!r}; use {listed}")
    if role != "user":
        raise ValueError(f"{where}: an image_url part may only be in a 'user' message, this one's role is {role!r}")
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else None
    if not isinstance(url, str):
        raise TypeError(f"{where}: an image_url part needs 'image_url': {{'url': str}}, got {_describe(image)}")
    if url.startswith("data:"):
        if not _DATA_URL.match(url):
            raise ValueError(f"{where}: a data URL must look like 'data:image/png;base64,<base64 data>', "
                             f"got {url[:40]!r}")
    elif not url.startswith(("http://", "https://")):
        raise ValueError(f"{where}: an image URL must be a data: URL or an http(s):// address, got {url[:40]!r}")
    detail = image.get("detail") if isinstance(image, dict) else None
    if detail is not None and detail not in _DETAILS:
        raise ValueError(f"{where}: 'detail' must be one of {', '.join(map(repr, _DETAILS))}, got {detail!r}")


def user_input(prompt: Prompt) -> str:
    """The caller's input: the prompt itself when it is a str, else the text of the last user message.

    A message's text parts are joined with newlines; ``""`` when no message is from the user.

    >>> user_input([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Ada, 36"}])
    'Ada, 36'
    """
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def has_images(prompt: Prompt) -> bool:
    """Whether any message holds an image part."""
    return not isinstance(prompt, str) and any(
        isinstance(m.get("content"), list) and any(p.get("type") != "text" for p in m["content"]) for m in prompt)


def text_only(prompt: Prompt, runtime: str) -> Prompt:
    """The prompt with every message's content as one str, for a runtime that reads text only.

    An image part is a ``BackendError`` naming the runtime, the message and the part.

    >>> text_only([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
    ...           "llamacpp")
    [{'role': 'user', 'content': 'a\\nb'}]
    """
    if isinstance(prompt, str) or all(isinstance(m.get("content"), str) for m in prompt):
        return prompt
    flat: list[dict[str, Any]] = []
    for index, message in enumerate(prompt):
        content = message.get("content")
        if isinstance(content, list):
            for number, part in enumerate(content):
                if part.get("type") != "text":
                    raise BackendError(
                        f"the {runtime} runtime reads text only: prompt message {index}, content part {number} "
                        f"is an {part.get('type')!r} part",
                        hint="send images to a vision model on an OpenAI-compatible server (base_url=...), "
                             "or leave the image parts out")
            message = {**message, "content": _text_of(content)}
        flat.append(message)
    return flat


def map_text(prompt: Prompt, change: Callable[[str], str], *, roles: Collection[str] | None = ("user",)) -> Prompt:
    """A copy of the prompt with ``change`` applied to its text: the str prompt, or the str content
    and text parts of the messages whose role is in ``roles`` (``None``: every message). Image
    parts and other messages are kept as they are; the prompt given is not modified."""
    if isinstance(prompt, str):
        return change(prompt)
    changed: list[dict[str, Any]] = []
    for message in prompt:
        content = message.get("content")
        if roles is None or message.get("role") in roles:
            if isinstance(content, str):
                message = {**message, "content": change(content)}
            elif isinstance(content, list):
                message = {**message, "content": [
                    {**part, "text": change(part["text"])} if part.get("type") == "text" else part for part in content]}
        changed.append(message)
    return changed


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _describe(value: Any) -> str:
    if isinstance(value, list) and not value:
        return "an empty list"
    return "None" if value is None else type(value).__name__
